"""Drawing for the demo pool: simple objects on simple backgrounds, with PIL and numpy.

An object is a list of polygon parts in unit coordinates ([-1, 1], y pointing down); each
part is painted with a shade of the object's colour, a fixed colour, or cut out as a hole
(so a ring or a crescent shows the background through it). A `Scene` says which object,
where, how big and on what; `render` turns it into an image. Nothing here is random: the
caller draws the scene parameters from its own generator, so images are reproducible.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40), "orange": (245, 140, 20), "yellow": (240, 215, 35),
    "green": (45, 160, 60), "blue": (35, 85, 215), "purple": (125, 55, 170),
    "pink": (240, 125, 180), "brown": (120, 72, 32), "black": (22, 22, 22),
    "white": (246, 246, 246),
}
BACKGROUNDS = ("plain", "stripes", "gradient", "checkerboard", "noise", "dots")
HOLE = None  # a part painted with HOLE erases what the object drew before it
_DARK = (30, 30, 30)
_LIGHT = (250, 250, 240)


def _circle(cx: float = 0.0, cy: float = 0.0, rx: float = 1.0, ry: float | None = None,
            start: float = 0.0, stop: float = 2 * np.pi, steps: int = 40) -> np.ndarray:
    angles = np.linspace(start, stop, steps, endpoint=stop - start < 2 * np.pi - 1e-9)
    return np.stack([cx + rx * np.cos(angles), cy + (rx if ry is None else ry) * np.sin(angles)], 1)


def _regular(sides: int, phase: float = -np.pi / 2) -> np.ndarray:
    return _circle(steps=sides + 1, start=phase, stop=phase + 2 * np.pi)[:sides]


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _poly(*points: float) -> np.ndarray:
    return np.array(points, dtype=float).reshape(-1, 2)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], 1) / 17.0


def _flower() -> list:
    petals = [(_circle(0.55 * np.cos(a), 0.55 * np.sin(a), 0.42), 1.0)
              for a in np.arange(6) * np.pi / 3]
    return petals + [(_circle(rx=0.35), (245, 205, 40))]


def _sun() -> list:
    rays = [(_poly(0.62 * np.cos(a - 0.18), 0.62 * np.sin(a - 0.18), np.cos(a), np.sin(a),
                   0.62 * np.cos(a + 0.18), 0.62 * np.sin(a + 0.18)), 1.0)
            for a in np.arange(10) * np.pi / 5]
    return rays + [(_circle(rx=0.58), 1.0)]


# name -> (parts, upright): upright objects only tilt a little, so a house stays a house
OBJECTS: dict[str, tuple[list, bool]] = {
    "circle": ([(_circle(), 1.0)], False),
    "square": ([(_rect(-0.8, -0.8, 0.8, 0.8), 1.0)], False),
    "triangle": ([(_regular(3), 1.0)], False),
    "star": ([(_star(), 1.0)], False),
    "heart": ([(_heart(), 1.0)], True),
    "ring": ([(_circle(), 1.0), (_circle(rx=0.6), HOLE)], False),
    "cross": ([(_poly(-.3, -1, .3, -1, .3, -.3, 1, -.3, 1, .3, .3, .3, .3, 1, -.3, 1,
                      -.3, .3, -1, .3, -1, -.3, -.3, -.3), 1.0)], False),
    "arrow": ([(_poly(-1, -.25, .2, -.25, .2, -.6, 1, 0, .2, .6, .2, .25, -1, .25), 1.0)], False),
    "house": ([(_rect(-.7, -.1, .7, .9), 1.0), (_poly(-.9, -.1, 0, -.9, .9, -.1), 0.6),
               (_rect(-.15, .35, .15, .9), 0.4), (_rect(.3, .1, .55, .35), _LIGHT)], True),
    "tree": ([(_rect(-.12, .4, .12, 1), (110, 70, 35)), (_poly(-.75, .5, 0, -1, .75, .5), 1.0)], True),
    "car": ([(_poly(-.5, -.1, -.3, -.5, .35, -.5, .55, -.1), 0.7), (_rect(-1, -.1, 1, .4), 1.0),
             (_circle(-.55, .42, .22), _DARK), (_circle(.55, .42, .22), _DARK)], True),
    "fish": ([(_poly(.45, 0, 1, -.5, 1, .5), 0.7), (_circle(-.15, 0, .7, .45), 1.0),
              (_circle(-.5, -.1, .08), _DARK)], False),
    "moon": ([(_circle(), 1.0), (_circle(.45, -.2, .85), HOLE)], False),
    "diamond": ([(_poly(0, -1, .6, 0, 0, 1, -.6, 0), 1.0)], False),
    "hexagon": ([(_regular(6, 0.0), 1.0)], False),
    "flower": (_flower(), False),
    "sun": (_sun(), False),
    "umbrella": ([(_rect(-.05, 0, .05, .9), _DARK), (_circle(rx=.95, ry=.8, start=np.pi, stop=2 * np.pi), 1.0)], True),
    "boat": ([(_rect(-.04, -1, .04, .3), _DARK), (_poly(.08, -.9, .08, .2, .7, .2), 0.8),
              (_poly(-1, .35, 1, .35, .7, .85, -.7, .85), 1.0)], True),
    "cup": ([(_circle(.62, 0, .32), 1.0), (_circle(.62, 0, .17), HOLE),
             (_poly(-.7, -.6, .7, -.6, .5, .8, -.5, .8), 1.0)], True),
    "mushroom": ([(_rect(-.22, 0, .22, .9), (235, 225, 200)),
                  (_circle(rx=.95, ry=.75, start=np.pi, stop=2 * np.pi), 1.0),
                  (_circle(-.4, -.3, .12), _LIGHT), (_circle(.3, -.45, .1), _LIGHT)], True),
    "kite": ([(_poly(0, -1, .55, -.3, 0, .6, -.55, -.3), 1.0), (_rect(-.02, .6, .02, 1), _DARK)], False),
    "balloon": ([(_rect(-.015, .55, .015, 1), _DARK), (_poly(0, .45, .1, .6, -.1, .6), 0.7),
                 (_circle(0, -.2, .6, .7), 1.0)], True),
    "leaf": ([(_rect(-.03, .6, .03, 1), 0.6),
              (np.concatenate([_circle(-.55, 0, 1.0, None, -.6, .6, 16),
                               _circle(.55, 0, 1.0, None, np.pi - .6, np.pi + .6, 16)]), 1.0)], False),
}


@dataclass(frozen=True)
class Scene:
    concept: str
    colour: str
    background: str
    bg_colour: str
    width: int
    height: int
    cx: float
    cy: float
    radius: float
    angle: float
    detail: int  # stripe width, cell size or noise scale, and the pattern's orientation bit


def random_scene(rng: np.random.Generator, concept: str, colour: str, width: int, height: int) -> Scene:
    """Place `concept` at a random position, size and rotation on a random background."""
    short = min(width, height)
    radius = float(rng.uniform(0.16, 0.42)) * short
    cx = float(rng.uniform(radius, width - radius))
    cy = float(rng.uniform(radius, height - radius))
    upright = OBJECTS[concept][1]
    angle = float(rng.uniform(-20, 20) if upright else rng.uniform(0, 360))
    bg_colour = str(rng.choice([c for c in COLOURS if c != colour]))
    background = str(rng.choice(BACKGROUNDS))
    return Scene(concept, colour, background, bg_colour, width, height, cx, cy, radius, angle,
                 int(rng.integers(8, 40)))


def size_word(scene: Scene) -> str:
    share = scene.radius / min(scene.width, scene.height)
    return "small" if share < 0.23 else "large" if share > 0.35 else ""


def position_phrase(scene: Scene) -> str:
    col = min(int(3 * scene.cx / scene.width), 2)
    row = min(int(3 * scene.cy / scene.height), 2)
    vertical = ("top", "", "bottom")[row]
    horizontal = ("left", "", "right")[col]
    if vertical and horizontal:
        return f"in the {vertical} {horizontal} corner"
    if vertical:
        return f"at the {vertical}"
    return f"on the {horizontal}" if horizontal else "in the middle"


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    target = 0 if sum(rgb) / 3 > 160 else 255
    return tuple(int(round(v + 0.45 * (target - v))) for v in rgb)


def _pattern(scene: Scene) -> np.ndarray | None:
    """H x W uint8 mix of the second background colour (255 = all of it); None for plain."""
    h, w, step = scene.height, scene.width, scene.detail
    y, x = np.ogrid[0:h, 0:w]
    if scene.background == "stripes":
        mix = ((x if step % 2 else y) + (x if step % 3 == 0 else 0)) // step % 2 * 255
    elif scene.background == "gradient":
        mix = x * 255 // max(w - 1, 1) if step % 2 else y * 255 // max(h - 1, 1)
    elif scene.background == "checkerboard":
        mix = (x // step + y // step) % 2 * 255
    elif scene.background == "dots":
        mix = (((x % (2 * step) - step) ** 2 + (y % (2 * step) - step) ** 2) < (step * 0.45) ** 2) * 255
    elif scene.background == "noise":  # smooth blotches, so JPEG files stay small
        cells = np.random.default_rng(step * 7919 + w * 31 + h).integers(0, 205, (h // 16 + 2, w // 16 + 2))
        return np.asarray(Image.fromarray(cells.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    else:
        return None
    return np.ascontiguousarray(np.broadcast_to(mix, (h, w)), dtype=np.uint8)


def render_background(scene: Scene) -> Image.Image:
    """The scene's background pattern as an RGB image."""
    size = (scene.width, scene.height)
    base = Image.new("RGB", size, COLOURS[scene.bg_colour])
    mix = _pattern(scene)
    if mix is None:
        return base
    other = Image.new("RGB", size, _contrast(COLOURS[scene.bg_colour]))
    return Image.composite(other, base, Image.fromarray(mix, "L"))


def _paint(part_paint, rgb: tuple[int, int, int]) -> tuple[int, int, int, int]:
    if part_paint is HOLE:
        return (0, 0, 0, 0)
    if isinstance(part_paint, tuple):
        return (*part_paint, 255)
    shade = np.clip(np.array(rgb, dtype=float) * part_paint + (40 if part_paint < 1 and max(rgb) < 60 else 0), 0, 255)
    return (*(int(v) for v in shade), 255)


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image: the object's parts painted in order over the background."""
    image = render_background(scene)
    layer = Image.new("RGBA", (scene.width, scene.height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    theta = np.deg2rad(scene.angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    rgb = COLOURS[scene.colour]
    for points, paint in OBJECTS[scene.concept][0]:
        placed = points @ rotation.T * scene.radius + (scene.cx, scene.cy)
        draw.polygon([tuple(p) for p in placed.round(1)], fill=_paint(paint, rgb))
    image.paste(layer, (0, 0), layer)
    return image


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, "PNG", compress_level=6)
    else:
        image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def near_duplicate_bytes(rng: np.random.Generator, data: bytes, min_side: int = 200) -> bytes:
    """A near copy of an encoded image: lower JPEG quality, resized 80-95%, or cropped 5-10% a side.

    Resizing and cropping never take the shorter side below `min_side`; where they would, the
    copy is a re-encode at lower quality instead.
    """
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    kind = int(rng.integers(3))
    if kind == 1:
        factor = float(rng.uniform(max(0.8, min_side / min(width, height)), 0.95))
        if min(width, height) * factor >= min_side:
            size = (max(min_side, round(width * factor)), max(min_side, round(height * factor)))
            return encode(image.resize(size, Image.BILINEAR), quality=85)
    if kind == 2:
        left, top, right, bottom = (float(v) for v in rng.uniform(0.05, 0.10, 4))
        box = (round(width * left), round(height * top), width - round(width * right), height - round(height * bottom))
        if min(box[2] - box[0], box[3] - box[1]) >= min_side:
            return encode(image.crop(box), quality=85)
    return encode(image, quality=int(rng.integers(25, 56)))


def corrupt_bytes(rng: np.random.Generator, data: bytes) -> bytes:
    """Undecodable bytes: the first 30-60% of an encoded image, or random bytes of a like size."""
    if rng.random() < 0.5:
        return data[: int(len(data) * rng.uniform(0.3, 0.6))]
    return rng.bytes(len(data))
