"""Captions for the demo pool: templated English, five other languages, and bad captions.

English captions describe what the image shows (object, colour, size, position,
background) through enough templates that, with `CaptionBook` capping repeats, no clean
caption is shared by more than 3 images. Foreign captions are whole sentences (>= 5 words,
full of function words) so fastText lid.176 and CLD3 both name the language confidently.
Boilerplate captions are plausible English sentences shared by many images: they pass the
per-caption rules and only a global count (ALIGN: shared by > 10 images) catches them.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

ENGLISH_TEMPLATES = (
    "a photo of {a_col} {obj} that is sitting on {bg}",
    "{a_size_col} {obj} is shown {pos} on {bg}",
    "an illustration of {a_col} {obj} against {bg}",
    "a simple drawing of {a_size_col} {obj} {pos}",
    "clip art showing {a_col} {obj} {pos}, with {bg}",
    "{a_col} {obj} that has been drawn on top of {bg}",
    "a picture with {a_size_col} {obj} {pos}",
    "an icon of {a_col} {obj} which is placed on {bg}",
    "a cartoon {obj} painted {col}, placed {pos}",
    "this graphic shows {a_col} {obj} over {bg}",
    "the picture shows {a_col} {obj} on {bg}",
    "here we see {a_size_col} {obj} {pos} of the picture",
    "flat vector art: {a_size_col} {obj} {pos} of the frame",
    "there is {a_size_col} {obj} {pos} of this image",
    "digital artwork of {a_col} {obj} with {bg} behind it",
)
BACKGROUND_PHRASES = {
    "plain": ("a plain {c} background", "a solid {c} background"),
    "stripes": ("a striped {c} background", "a pattern of {c} stripes"),
    "gradient": ("a {c} gradient", "a softly fading {c} background"),
    "checkerboard": ("a {c} checkerboard", "a checkered {c} background"),
    "noise": ("a noisy {c} background", "a blotchy {c} background"),
    "dots": ("a dotted {c} background", "a background with {c} spots"),
}
BOILERPLATE = (
    "Click here to enlarge this photo",
    "product image for sale online",
    "Image not available at this time",
    "Photo courtesy of the manufacturer",
)
SHORT_FORMS = ("{obj}", "{Obj}", "{col} {obj}", "{Col} {obj}", "{obj} icon", "{obj} drawing",
               "{Obj} clipart", "{size} {obj}", "{obj}!", "{col}")

LANGUAGES = ("de", "fr", "es", "it", "pt")
FOREIGN_TEMPLATES = {
    "de": ("Das Bild zeigt {obj} in der Farbe {col} auf einem schlichten Hintergrund.",
           "Auf diesem Bild sieht man {obj} in der Farbe {col}, gezeichnet vor einem einfachen Hintergrund."),
    "fr": ("Cette image montre {obj} de couleur {col} sur un fond très simple.",
           "Sur cette illustration, on peut voir {obj} de couleur {col} au milieu d'un fond uni."),
    "es": ("En esta imagen se puede ver {obj} de color {col} sobre un fondo muy sencillo.",
           "La ilustración muestra {obj} de color {col} sobre un fondo liso y sencillo."),
    "it": ("In questa immagine si vede {obj} di colore {col} su uno sfondo molto semplice.",
           "L'illustrazione mostra {obj} di colore {col} sopra uno sfondo semplice e pulito."),
    "pt": ("Nesta imagem podemos ver {obj} na cor {col} sobre um fundo muito simples.",
           "A ilustração mostra {obj} na cor {col} em cima de um fundo liso e limpo."),
}
# object -> (de accusative, fr, es, it, pt), each with its indefinite article
FOREIGN_OBJECTS = {
    "circle": ("einen Kreis", "un cercle", "un círculo", "un cerchio", "um círculo"),
    "square": ("ein Quadrat", "un carré", "un cuadrado", "un quadrato", "um quadrado"),
    "triangle": ("ein Dreieck", "un triangle", "un triángulo", "un triangolo", "um triângulo"),
    "star": ("einen Stern", "une étoile", "una estrella", "una stella", "uma estrela"),
    "heart": ("ein Herz", "un cœur", "un corazón", "un cuore", "um coração"),
    "ring": ("einen Ring", "un anneau", "un anillo", "un anello", "um anel"),
    "cross": ("ein Kreuz", "une croix", "una cruz", "una croce", "uma cruz"),
    "arrow": ("einen Pfeil", "une flèche", "una flecha", "una freccia", "uma seta"),
    "house": ("ein Haus", "une maison", "una casa", "una casa", "uma casa"),
    "tree": ("einen Baum", "un arbre", "un árbol", "un albero", "uma árvore"),
    "car": ("ein Auto", "une voiture", "un coche", "una macchina", "um carro"),
    "fish": ("einen Fisch", "un poisson", "un pez", "un pesce", "um peixe"),
    "moon": ("einen Mond", "une lune", "una luna", "una luna", "uma lua"),
    "diamond": ("eine Raute", "un losange", "un rombo", "un rombo", "um losango"),
    "hexagon": ("ein Sechseck", "un hexagone", "un hexágono", "un esagono", "um hexágono"),
    "flower": ("eine Blume", "une fleur", "una flor", "un fiore", "uma flor"),
    "sun": ("eine Sonne", "un soleil", "un sol", "un sole", "um sol"),
    "umbrella": ("einen Regenschirm", "un parapluie", "un paraguas", "un ombrello", "um guarda-chuva"),
    "boat": ("ein Boot", "un bateau", "un barco", "una barca", "um barco"),
    "cup": ("eine Tasse", "une tasse", "una taza", "una tazza", "uma xícara"),
    "mushroom": ("einen Pilz", "un champignon", "una seta", "un fungo", "um cogumelo"),
    "kite": ("einen Drachen", "un cerf-volant", "una cometa", "un aquilone", "uma pipa"),
    "balloon": ("einen Luftballon", "un ballon", "un globo", "un palloncino", "um balão"),
    "leaf": ("ein Blatt", "une feuille", "una hoja", "una foglia", "uma folha"),
}
FOREIGN_COLOURS = {
    "red": ("Rot", "rouge", "rojo", "rosso", "vermelha"),
    "orange": ("Orange", "orange", "naranja", "arancione", "laranja"),
    "yellow": ("Gelb", "jaune", "amarillo", "giallo", "amarela"),
    "green": ("Grün", "vert", "verde", "verde", "verde"),
    "blue": ("Blau", "bleu", "azul", "blu", "azul"),
    "purple": ("Lila", "violet", "morado", "viola", "roxa"),
    "pink": ("Rosa", "rose", "rosa", "rosa", "rosa"),
    "brown": ("Braun", "marron", "marrón", "marrone", "marrom"),
    "black": ("Schwarz", "noir", "negro", "nero", "preta"),
    "white": ("Weiß", "blanc", "blanco", "bianco", "branca"),
}


def _with_article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


class CaptionBook:
    """Hands out captions, preferring unused ones and never giving one more than `limit` times."""

    def __init__(self, limit: int = 3):
        self.limit = limit
        self.uses: Counter[str] = Counter()

    def pick(self, rng: np.random.Generator, candidates: list[str], exclude: tuple[str, ...] = ()) -> str:
        order = [candidates[i] for i in rng.permutation(len(candidates))]
        order = [c for c in order if c not in exclude] or order
        fresh = next((c for c in order if self.uses[c] == 0), None)
        chosen = fresh or next((c for c in order if self.uses[c] < self.limit), None)
        # every candidate at the limit: take the least used (only with huge pools)
        chosen = chosen or min(order, key=lambda c: self.uses[c])
        self.uses[chosen] += 1
        return chosen


def english_candidates(concept: str, colour: str, bg_kind: str, bg_colour: str, size: str, position: str) -> list[str]:
    """Every English caption the templates give for one image description."""
    size_col = f"{size} {colour}" if size else colour
    out = []
    for bg_phrase in BACKGROUND_PHRASES[bg_kind]:
        slots = {"obj": concept, "col": colour, "Col": colour.capitalize(), "pos": position,
                 "a_col": _with_article(colour), "a_size_col": _with_article(size_col),
                 "bg": _with_article(bg_phrase[2:].format(c=bg_colour)) if bg_phrase.startswith("a ")
                 else bg_phrase.format(c=bg_colour)}
        out.extend(template.format(**slots) for template in ENGLISH_TEMPLATES)
    return list(dict.fromkeys(out))


def foreign_candidates(language: str, concept: str, colour: str) -> list[str]:
    column = LANGUAGES.index(language)
    obj, col = FOREIGN_OBJECTS[concept][column], FOREIGN_COLOURS[colour][column]
    return [template.format(obj=obj, col=col) for template in FOREIGN_TEMPLATES[language]]


def short_candidates(concept: str, colour: str, size: str) -> list[str]:
    """One- and two-word captions (fail DataComp's > 2 words and ALIGN's >= 3 unigrams)."""
    slots = {"obj": concept, "Obj": concept.capitalize(), "col": colour, "Col": colour.capitalize(),
             "size": size or "tiny"}
    return list(dict.fromkeys(form.format(**slots) for form in SHORT_FORMS))


def boilerplate_captions(count: int) -> list[str]:
    """`count` captions from as many boilerplate strings as keep each shared by > 10 images."""
    kinds = max(1, min(len(BOILERPLATE), count // 11))
    return [BOILERPLATE[i % kinds] for i in range(count)]
