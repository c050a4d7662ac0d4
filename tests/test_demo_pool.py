"""The demo pool generator (curate.demo.pool) and its loopback server (curate.demo.server)."""

from __future__ import annotations

import hashlib
import http.client
import io
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.demo.captions import BOILERPLATE, LANGUAGES
from curate.demo.pool import DEFECTS, defect_counts, make_demo_pool, materialize_urls
from curate.demo.server import serve

N = 300


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "pool"
    make_demo_pool(out, n=N, seed=0)
    return out


@pytest.fixture(scope="module")
def rows(pool) -> list[dict]:
    urls = pq.read_table(pool / "urls.parquet").to_pylist()
    truth = pq.read_table(pool / "ground_truth.parquet").to_pylist()
    assert [u["uid"] for u in urls] == [t["uid"] for t in truth]
    return [{**u, **t} for u, t in zip(urls, truth)]


def _local_file(pool: Path, url: str) -> Path | None:
    prefix = "{base}/images/"
    return pool / "images" / url[len(prefix):] if url.startswith(prefix) else None


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(pool, tmp_path):
    again = tmp_path / "again"
    make_demo_pool(again, n=N, seed=0)
    assert _tree_bytes(again) == _tree_bytes(pool)


def test_other_seed_gives_disjoint_uids(rows, tmp_path):
    make_demo_pool(tmp_path / "seed1", n=N, seed=1)
    other = set(pq.read_table(tmp_path / "seed1" / "urls.parquet")["uid"].to_pylist())
    uids = [r["uid"] for r in rows]
    assert all(re.fullmatch("[0-9a-f]{32}", uid) for uid in uids)
    assert len(set(uids)) == N and len(other) == N
    assert not other & set(uids)


def test_every_defect_is_planted_in_its_share(rows):
    counts = Counter(r["defect"] for r in rows)
    assert counts == Counter(defect_counts(N))
    assert set(counts) == {"clean", *DEFECTS}
    assert counts["hash_mismatch"] == 5 and counts["timeout_url"] >= 3
    assert 0.55 < counts["clean"] / N < 0.7


def test_clean_only_pool_has_no_defects(tmp_path):
    summary = make_demo_pool(tmp_path / "clean", n=40, seed=3, clean_only=True)
    truth = pq.read_table(tmp_path / "clean" / "ground_truth.parquet").to_pylist()
    assert summary["defects"] == {"clean": 40}
    assert {t["defect"] for t in truth} == {"clean"} and {t["language"] for t in truth} == {"en"}
    with pytest.raises(ValueError, match="clean_only"):
        make_demo_pool(tmp_path / "tiny", n=40, seed=3)


def test_images_break_only_their_own_rule(pool, rows):
    for row in rows:
        path = _local_file(pool, row["url"])
        if row["defect"] in ("unreachable_url", "timeout_url"):
            assert path is None
            continue
        data = path.read_bytes()
        if row["defect"] == "corrupt_image":
            with pytest.raises(OSError):
                _decode(data)
            continue
        width, height = _decode(data).size
        short, aspect = min(width, height), max(width, height) / min(width, height)
        if row["defect"] == "small_image":
            assert short < 200 and aspect <= 2
        elif row["defect"] == "extreme_aspect":
            assert short >= 200 and aspect > 3
        elif row["defect"] == "near_duplicate":
            assert short >= 200 and aspect <= 2
        else:
            assert 224 <= short and max(width, height) <= 400 and aspect <= 2, row


def test_duplicates_copy_an_earlier_clean_image(pool, rows):
    index = {r["uid"]: i for i, r in enumerate(rows)}
    dups = [r for r in rows if r["defect"] in ("exact_duplicate", "near_duplicate")]
    assert dups and all(r["duplicate_of"] is None for r in rows if r not in dups)
    for row in dups:
        original = rows[index[row["duplicate_of"]]]
        assert original["defect"] == "clean" and index[original["uid"]] < index[row["uid"]]
        assert row["caption"] != original["caption"] and row["concept"] == original["concept"]
        same = _local_file(pool, row["url"]).read_bytes() == _local_file(pool, original["url"]).read_bytes()
        assert same == (row["defect"] == "exact_duplicate")


def test_captions(rows):
    uses = Counter(r["caption"] for r in rows)
    by_defect: dict[str, list[dict]] = {}
    for row in rows:
        by_defect.setdefault(row["defect"], []).append(row)
    for row in by_defect["clean"]:
        words = row["caption"].replace(",", " ").split()
        assert uses[row["caption"]] <= 3 and len(words) >= 3 and len(row["caption"]) > 5
        assert row["concept"] in words and row["colour"] in [w.lower() for w in words]
        assert row["language"] == "en"
    boilerplate = Counter(r["caption"] for r in by_defect["boilerplate_caption"])
    assert boilerplate and all(uses[c] > 10 and c in BOILERPLATE for c in boilerplate)
    assert all(len(r["caption"].split()) <= 2 for r in by_defect["short_caption"])
    assert all(r["concept"] not in r["caption"].replace(",", " ").split() for r in by_defect["mismatched_caption"])
    foreign = by_defect["non_english"]
    assert {r["language"] for r in foreign} <= set(LANGUAGES) and len({r["language"] for r in foreign}) >= 3
    assert all(len(r["caption"].split()) >= 5 for r in foreign)


def test_concepts_are_zipf_head_heavy(rows):
    counts = [c for _, c in Counter(r["concept"] for r in rows).most_common()]
    assert 0.25 < counts[0] / N < 0.35
    assert counts[0] > counts[1] > counts[2] > counts[3] > counts[6]
    assert counts[-1] / N < 0.015


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def test_server_serves_the_pool_bytes(pool, rows):
    with serve(pool, slow_seconds=0.5) as base:
        table = materialize_urls(pool / "urls.parquet", base)
        urls = table["url"].to_pylist()
        assert not any("{base}" in url for url in urls)
        checked = 0
        for row, url in zip(rows, urls):
            path = _local_file(pool, row["url"])
            if path is None:
                continue
            status, body, headers = _get(url)
            assert status == 200 and body == path.read_bytes()
            assert headers["Content-Type"] == ("image/png" if url.endswith(".png") else "image/jpeg")
            assert int(headers["Content-Length"]) == len(body)
            if row["sha256"] is not None:
                matches = hashlib.sha256(body).hexdigest() == row["sha256"]
                assert matches == (row["defect"] != "hash_mismatch")
                checked += 1
        assert checked > N // 3
        assert all(r["sha256"] is not None for r in rows if r["defect"] == "hash_mismatch")


def test_server_failures(pool, rows):
    with serve(pool, slow_seconds=0.5) as base:
        urls = materialize_urls(pool / "urls.parquet", base)["url"].to_pylist()
        by_defect = {}
        for row, url in zip(rows, urls):
            by_defect.setdefault(row["defect"], []).append(url)
        missing = [u for u in by_defect["unreachable_url"] if u.startswith(base)]
        refused = [u for u in by_defect["unreachable_url"] if not u.startswith(base)]
        assert missing and refused and abs(len(missing) - len(refused)) <= 1
        assert _get(missing[0])[0] == 404
        with pytest.raises(urllib.error.URLError):
            _get(refused[0])
        started = time.perf_counter()
        assert _get(by_defect["timeout_url"][0])[0] == 404
        assert time.perf_counter() - started >= 0.45
        with pytest.raises(TimeoutError):
            _get(by_defect["timeout_url"][1], timeout=0.1)


def test_server_never_leaves_its_root(pool):
    (pool.parent / "secret.txt").write_text("secret")
    with serve(pool) as base:
        connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=5)
        for path in ("/../secret.txt", "/images/../../secret.txt", "/images/%2e%2e/%2e%2e/secret.txt"):
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 403 and b"secret" not in response.read()
        connection.request("GET", "/urls.parquet")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == (pool / "urls.parquet").read_bytes()
        connection.close()
        assert _get(f"{base}/images/no-such-file.jpg")[0] == 404


def test_server_shutdown_does_not_wait_for_slow_requests(pool):
    started = time.perf_counter()
    with serve(pool, slow_seconds=60) as base:
        waiter = threading.Thread(target=_get, args=(f"{base}/slow/x.jpg", 30), daemon=True)
        waiter.start()
        time.sleep(0.2)
    waiter.join(timeout=5)
    assert not waiter.is_alive() and time.perf_counter() - started < 5
