"""The HTML report (curate.reports.html) on a small finished run: self-contained, every figure and
a thumbnail card per stage and reason, captions only without image bytes, the CLI, and the page
rendered by headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from curate.cli import main
from curate.reports.html import write_html_report
from curate.reports.samples import THUMB_PX, thumbnail
from curate.runio import read_json
from tests.helpers import jpeg, make_small_run

FIGURES = ["funnel", "score score_clip histogram", "laion2b clip_b32_similarity_score histogram",
           "metaclip head/tail", "cluster sizes"]
NO_CHROMIUM = "chromium not installed: apt-get install chromium (the CI script installs it)"


class Page(HTMLParser):
    """The page's images (class, alt, src), headings, and every attribute that could load something."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.headings, self.references, self.tags = [], [], [], set()
        self._heading = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.images.append({"class": attrs.get("class"), "alt": attrs.get("alt"), "src": attrs["src"],
                                "group": self.headings[-1] if self.headings else None})
        self.references += [value for key, value in attrs.items() if key in ("src", "href", "srcset", "data")]
        self._heading = tag if tag in ("h2", "h3") else None

    def handle_data(self, data):
        if self._heading == "h3":
            self.headings.append(data)


def decode(src: str, kind: str) -> Image.Image:
    prefix = f"data:image/{kind};base64,"
    assert src.startswith(prefix), src[:40]
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix):])))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = make_small_run(tmp_path_factory.mktemp("html"))
    write_html_report(run)
    return run


@pytest.fixture(scope="module")
def page(run_dir) -> Page:
    return Page((run_dir / "report.html").read_text())


def test_page_is_self_contained(run_dir, page):
    text = (run_dir / "report.html").read_text()
    assert not {"script", "link", "iframe", "object"} & page.tags
    assert all(ref.startswith("data:image/") for ref in page.references)
    assert "url(" not in text and "@import" not in text


def test_every_figure_is_an_embedded_png(page):
    figures = [image for image in page.images if image["class"] == "figure"]
    assert [f["alt"] for f in figures] == FIGURES
    for figure in figures:
        picture = decode(figure["src"], "png")
        assert picture.width > 300 and len(picture.convert("L").getcolors(1 << 16)) > 2  # not blank


def test_a_thumbnail_card_per_stage_and_reason(run_dir, page):
    report = read_json(run_dir / "report.json")
    thumbs = [image for image in page.images if image["class"] == "thumb"]
    groups = {image["group"] for image in thumbs}
    for stage, info in report["stages"].items():
        expected = {f"{stage}: kept"} | {f"{stage}: {reason}" for reason in info["by_reason"]}
        assert expected <= groups, (stage, expected - groups)
    assert {"subset: selected", "subset: not selected"} <= groups
    for image in thumbs:
        assert max(decode(image["src"], "jpeg").size) == THUMB_PX  # 160 x 120 originals, downscaled
    counts = {group: sum(image["group"] == group for image in thumbs) for group in groups}
    assert max(counts.values()) <= 4


def test_the_page_is_deterministic(run_dir):
    first = (run_dir / "report.html").read_bytes()
    assert write_html_report(run_dir).read_bytes() == first


def test_thumbnail_of_bad_bytes():
    assert thumbnail(None) is None and thumbnail(b"") is None and thumbnail(b"not a jpeg") is None
    assert Image.open(io.BytesIO(base64.b64decode(thumbnail(jpeg(3))))).size == (THUMB_PX, THUMB_PX * 3 // 4)


def test_captions_only_without_image_bytes(tmp_path):
    run = make_small_run(tmp_path, images=False, rows_per_shard=60)
    text = write_html_report(run).read_text()
    parsed = Page(text)
    assert "captions only" in text
    assert not [image for image in parsed.images if image["class"] == "thumb"]
    assert [image["alt"] for image in parsed.images] == FIGURES
    assert text.count("class='card") >= 4 * len(read_json(run / "report.json")["stages"])


def test_cli_report_writes_the_page(run_dir, capsys):
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir), "--no-html"]) == 0
    assert "rows out:" in capsys.readouterr().out and not (run_dir / "report.html").exists()
    assert main(["report", str(run_dir)]) == 0
    assert f"wrote {run_dir / 'report.html'}" in capsys.readouterr().out
    assert (run_dir / "report.html").exists()


CHECK = """<img class='control' alt='broken on purpose' src='data:image/png;base64,AAAA'>
<script>window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({cls: i.className, done: i.complete, w: i.naturalWidth}));
  const out = document.createElement('pre'); out.id = 'render-check'; out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});</script></body>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(NO_CHROMIUM)


def test_chromium_renders_figures_and_thumbnails(run_dir, tmp_path):
    """A copy of the page plus a check script (the page itself has none) and a control image that
    cannot decode: after load, every figure and thumbnail has a natural size, the control none."""
    browser = chromium()
    check = tmp_path / "check.html"
    check.write_text((run_dir / "report.html").read_text().replace("</body>", CHECK))
    args = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run([*args, "--virtual-time-budget=10000", "--dump-dom", check.as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'<pre id="render-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    by_class = {kind: [i for i in images if i["cls"] == kind] for kind in ("figure", "thumb", "control")}
    assert len(by_class["figure"]) == len(FIGURES) and all(i["done"] and i["w"] > 300 for i in by_class["figure"])
    assert by_class["thumb"] and all(i["done"] and 0 < i["w"] <= THUMB_PX for i in by_class["thumb"])
    assert by_class["control"][0]["w"] == 0  # the check can fail
    shot = tmp_path / "shot.png"
    subprocess.run([*args, "--window-size=1200,2000", f"--screenshot={shot}", (run_dir / "report.html").as_uri()],
                   capture_output=True, timeout=180, cwd=tmp_path)
    colors = Image.open(shot).convert("RGB").getcolors(1 << 20)
    assert colors and len(colors) > 50  # plots and thumbnails, not a blank page
