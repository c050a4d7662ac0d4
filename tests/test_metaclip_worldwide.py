"""MetaCLIP 2 worldwide curation (Chuang et al. 2025), DESIGN.md 4.7: a pure-Python reference of the
per-language rule (matching with the spaceless boundary rule, routing, t -> p -> t) against the
stages, selection rates per language, reasons, bad metadata, both engines and the shipped lists."""

from __future__ import annotations

import gzip
import json
import math
import string
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import pipeline
from curate.errors import RecipeError
from curate.kernels.worldwide_match import LanguageMatcher, Languages
from curate.recipe import parse_recipe
from curate.reports.html import write_html_report
from curate.resources import load_language_metadata, load_metadata
from curate.stages.metaclip_worldwide import STAGE, MetaclipWorldwideConfig, language_thresholds
from curate.stages.metaclip_worldwide_match import STAGE as MATCH
from curate.stages.metaclip_worldwide_match import MetaclipWorldwideMatchConfig
from curate.uid import derive_uid
from tests.helpers import fit_in_memory

# --- the reference, written from the paper's code description, independent of curate's kernels ---

REFERENCE_PUNCTUATION = set(string.punctuation) | set("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")


def reference_spaceless(char: str) -> bool:
    code = ord(char)
    cjk = any(low <= code <= high for low, high in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF),
        (0x2FF0, 0x2FFF)))
    other = any(low <= code <= high for low, high in (
        (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x0F00, 0x0FFF)))
    return cjk or other or char in REFERENCE_PUNCTUATION


def reference_match(entries: list[str], text: str | None) -> list[int]:
    """Entry ids whose padded form is a substring of the spaced, stripped caption (first id of a repeat)."""
    if text is None:
        return []
    spaced = f" {text.strip()} "
    for mark in ",.;:?!`":
        spaced = spaced.replace(mark, f" {mark} ")
    for char in "\t\n\r":
        spaced = spaced.replace(char, " ")
    found, seen = [], set()
    for entry_id, entry in enumerate(entries):
        if not entry.strip() or entry in seen:
            continue
        seen.add(entry)
        padded = ("" if reference_spaceless(entry[0]) else " ") + entry + ("" if reference_spaceless(entry[-1]) else " ")
        if padded in spaced:
            found.append(entry_id)
    return found


def reference_thresholds(counts: dict[str, list[int]], t_en: int) -> dict[str, int]:
    """MetaCLIP 2's t_to_p for English, then p_to_t per language, with loops; t at least 1."""
    english = counts["en"]
    p = sum(c for c in english if c < t_en) / sum(english)
    out = {}
    for language, values in counts.items():
        if language == "en":
            out[language] = t_en
            continue
        ordered, total, running, best, best_gap = sorted(values), sum(values), 0, None, math.inf
        for value in ordered:
            running += value
            if abs(running / total - p) < best_gap:
                best, best_gap = value, abs(running / total - p)
        out[language] = max(1, best)
    return out


# --- random multilingual cases ---

LATIN = ["cat", "red", "Cat", "photo", "of", "a", "iPhone", "C", "++", "la", "maison", "Katze"]
CJK = list("猫桌子手机的我一只在上")
THAI = list("แมวบนโต๊ะ")
MARKS = [",", ".", "!", "，", "。", "(", ")", "-", "'"]


def random_entry(rng: np.random.Generator) -> str:
    kind = rng.integers(6)
    if kind == 0:
        return " ".join(rng.choice(LATIN, rng.integers(1, 3)))
    if kind == 1:
        return "".join(rng.choice(CJK, rng.integers(1, 4)))
    if kind == 2:
        return "".join(rng.choice(THAI, rng.integers(1, 4)))
    if kind == 3:
        return str(rng.choice(LATIN)) + "".join(rng.choice(CJK, rng.integers(1, 3)))  # mixed script
    if kind == 4:
        return str(rng.choice(LATIN)) + str(rng.choice(MARKS))  # a punctuation boundary
    return str(rng.choice(["", " ", "  "]))  # blank: never matches


def random_text(rng: np.random.Generator) -> str:
    pieces = []
    for _ in range(rng.integers(0, 9)):
        kind = rng.integers(5)
        pool = LATIN if kind < 2 else CJK if kind == 2 else THAI if kind == 3 else MARKS
        pieces.append(str(rng.choice(pool)))
        pieces.append(str(rng.choice([" ", "", " ", "\t", "  "])))
    return "".join(pieces)


@pytest.mark.parametrize("seed", range(4))
def test_matching_equals_the_reference_on_random_multilingual_captions(seed):
    rng = np.random.default_rng(seed)
    entries = [random_entry(rng) for _ in range(60)] + ["猫", "猫", "cat", "cat"]  # repeats: first id only
    texts = [random_text(rng) for _ in range(400)] + [None, "", "  猫  ", "cat", "a cat.", "猫。"]
    got = LanguageMatcher(entries).match(pa.array(texts, pa.string())).to_pylist()
    expected = [reference_match(entries, text) for text in texts]
    assert got == expected
    assert sum(map(bool, expected)) > 100  # the cases do match


def test_spaceless_rule_by_hand():
    entries = ["猫", "iPhone手机", "cat", "C++", "桌子"]
    texts = ["一只猫在桌子上", "我的iPhone手机", "买 iPhone手机", "a cat, here", "concatenate", "I like C++"]
    got = LanguageMatcher(entries).match(pa.array(texts)).to_pylist()
    # CJK: plain substring; " iPhone手机" needs the space before the Latin head; "cat" needs both
    # spaces; "C++" ends in punctuation, so only its head needs one
    assert got == [[0, 4], [], [1], [2], [], [3]]


def test_routing_matches_each_caption_against_its_language_only():
    rng = np.random.default_rng(7)
    lists = {"en": [random_entry(rng) for _ in range(30)], "zh": [random_entry(rng) for _ in range(30)],
             "th": [random_entry(rng) for _ in range(30)]}
    languages = Languages(lists)
    texts = [random_text(rng) for _ in range(300)]
    codes = [str(rng.choice(["en", "zh", "th", "fr"])) if rng.random() > 0.1 else None for _ in texts]
    got = languages.route(pa.array(texts), pa.array(codes, pa.string())).to_pylist()
    offsets = {"en": 0, "th": 30, "zh": 60}  # languages in sorted order
    expected = [[] if code not in lists else [offsets[code] + i for i in reference_match(lists[code], text)]
                for text, code in zip(texts, codes)]
    assert got == expected


@pytest.mark.parametrize("seed", range(5))
def test_t_to_p_to_t_equals_the_reference(seed):
    rng = np.random.default_rng(seed)
    counts = {language: (rng.zipf(1.6, size) % 5000).tolist()
              for language, size in (("en", 300), ("de", 120), ("ja", 40), ("xx", 5))}
    counts["sparse"] = [0] * 50 + [1, 1, 2]  # the nearest share can fall on zero counts: t clamps to 1
    cfg = MetaclipWorldwideConfig(metadata=str(Path(__file__)), t_en=30)
    got = language_thresholds({k: np.array(v, dtype=np.int64) for k, v in counts.items()}, cfg)
    assert got == reference_thresholds(counts, 30)


def test_t_below_one_is_clamped_with_a_warning(caplog):
    cfg = MetaclipWorldwideConfig(metadata=str(Path(__file__)), t_en=None, tail_proportion=0.001)
    thresholds = language_thresholds({"xx": np.array([0] * 40 + [5, 9], dtype=np.int64)}, cfg)
    assert thresholds == {"xx": 1}
    assert "t would be 0 (< 1)" in caplog.text


# --- the stages on captions fastText names confidently ---

SENTENCES = {
    "en": "a photo of a {} sitting on the table in the garden",
    "de": "ein schönes Foto von dem {} auf dem Tisch im Garten",
    "fr": "une très belle photo du {} sur la table dans le jardin",
}
WORDS = {"en": ["dog", "cat", "bird", "horse", "fish", "cow"], "de": ["Hund", "Katze", "Vogel", "Pferd", "Fisch", "Kuh"]}


def write_lists(directory: Path, lists: dict[str, list[str]]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for language, entries in lists.items():
        (directory / f"{language}.txt").write_text("\n".join(entries) + "\n")
    return str(directory)


def zipf_captions(language: str, counts: list[int]) -> list[str]:
    return [SENTENCES[language].format(word) + f" {i}" for word, n in zip(WORDS[language], counts) for i in range(n)]


def pool_table(texts: list[str | None]) -> pa.Table:
    return pa.table({"uid": [derive_uid(f"http://x/{i}", str(t)) for i, t in enumerate(texts)],
                     "text": pa.array(texts, pa.string())})


def run_in_memory(table: pa.Table, cfg: MetaclipWorldwideConfig, batch_rows: int = 700):
    batches = []
    for start in range(0, table.num_rows, batch_rows):
        batch = table.slice(start, batch_rows)
        matched = MATCH.checked_apply(batch, MetaclipWorldwideMatchConfig(metadata=cfg.metadata), None)
        batches.append(batch.append_column("metaclip_worldwide_lang", matched.column("metaclip_worldwide_lang"))
                       .append_column("metaclip_worldwide_entries", matched.column("metaclip_worldwide_entries")))
    artifact = fit_in_memory(STAGE, cfg, batches)
    out = pa.concat_tables([STAGE.checked_apply(b, cfg, artifact) for b in batches])
    matches = pa.concat_tables(batches)
    return artifact, matches, out


def test_selection_rate_per_language_entry_is_min_1_t_lang_over_count(tmp_path):
    metadata = write_lists(tmp_path / "lists", WORDS)
    en_counts, de_counts = [1200, 600, 300, 150, 60, 20], [400, 200, 100, 40, 20, 5]
    texts = zipf_captions("en", en_counts) + zipf_captions("de", de_counts)
    cfg = MetaclipWorldwideConfig(metadata=metadata, t_en=150)
    artifact, matches, out = run_in_memory(pool_table(texts), cfg)
    languages = matches.column("metaclip_worldwide_lang").to_pylist()
    assert languages == ["en"] * sum(en_counts) + ["de"] * sum(de_counts)  # routing by lid.176
    assert artifact.column("count").to_pylist() == de_counts + en_counts  # de's ids first (sorted languages)
    p = sum(c for c in en_counts if c < 150) / sum(en_counts)
    t_de = reference_thresholds({"en": en_counts, "de": de_counts}, 150)["de"]
    assert set(artifact.column("t").to_pylist()) == {150, t_de} and t_de < 150
    keep = np.array(out.column("metaclip_worldwide_keep").to_pylist())
    start = 0
    for language, counts, t in (("en", en_counts, 150), ("de", de_counts, t_de)):
        for n in counts:
            rate = min(1.0, t / n)
            kept = keep[start:start + n].mean()
            assert abs(kept - rate) <= 4 * math.sqrt(rate * (1 - rate) / n) + 1e-9, (language, n, kept, rate)
            start += n
    # both languages end with English's tail proportion (up to the nearest-count step)
    de = np.array(de_counts)
    assert abs(de[de < t_de].sum() / de.sum() - p) < 0.2


def test_reasons_for_captions_that_cannot_be_routed(tmp_path):
    metadata = write_lists(tmp_path / "lists", WORDS)
    texts = [None, "", "12345 678", "😀😀😀", "!!! ...", SENTENCES["fr"].format("chien"),
             SENTENCES["en"].format("zebra"), SENTENCES["en"].format("dog"), SENTENCES["de"].format("Hund")]
    _, matches, out = run_in_memory(pool_table(texts), MetaclipWorldwideConfig(metadata=metadata, t_en=5))
    assert matches.column("metaclip_worldwide_lang").to_pylist()[:6] == [None] * 5 + ["fr"]
    assert out.column("metaclip_worldwide_reason").to_pylist() == [
        "no_text", "no_language", "no_language", "no_language", "no_language", "no_metadata", "no_match", None, None]


def test_mixed_script_caption_uses_its_detected_languages_list(tmp_path):
    metadata = write_lists(tmp_path / "lists", {"zh": ["iPhone", "手机", "猫"], "en": ["phone", "iPhone"]})
    table = pool_table(["我昨天在商店里买了一个新的 iPhone 手机壳，非常好看"])
    out = MATCH.checked_apply(table, MetaclipWorldwideMatchConfig(metadata=metadata), None)
    assert out.column("metaclip_worldwide_lang").to_pylist() == ["zh"]
    assert out.column("metaclip_worldwide_entries").to_pylist() == [[2, 3]]  # en has ids 0-1, zh 2-4


def test_metadata_forms_duplicates_blanks_and_errors(tmp_path):
    as_object = tmp_path / "lists.json"
    as_object.write_text(json.dumps({"zh": ["猫", "", "猫", "桌子"], "en": ["cat", " ", "cat"]}))
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "zh.json.gz").write_bytes(gzip.compress(json.dumps(["猫", "", "猫", "桌子"]).encode()))
    (directory / "en.txt").write_text("cat\n \ncat\n")
    (directory / "README.md").write_text("ignored")
    assert load_language_metadata(as_object) == load_language_metadata(directory)
    languages = Languages(load_language_metadata(directory))
    got = languages.route(pa.array(["一只猫在桌子上", "a cat here"]), pa.array(["zh", "en"])).to_pylist()
    assert got == [[3, 6], [0]]  # the repeats match under their first id, blanks never
    (directory / "zh.txt").write_text("猫\n")
    with pytest.raises(RecipeError, match="two metadata files for language 'zh'"):
        load_language_metadata(directory)
    with pytest.raises(RecipeError, match="expected a list of strings"):
        (tmp_path / "bad.json").write_text(json.dumps({"en": "cat"}))
        load_language_metadata(tmp_path / "bad.json")
    with pytest.raises(RecipeError, match="no such metadata"):
        MetaclipWorldwideMatchConfig(metadata=str(tmp_path / "missing"))


def test_no_english_match_is_a_clear_error(tmp_path):
    metadata = write_lists(tmp_path / "lists", WORDS)
    texts = zipf_captions("de", [30, 10])
    with pytest.raises(RecipeError, match="no caption matched the 'en' list"):
        run_in_memory(pool_table(texts), MetaclipWorldwideConfig(metadata=metadata, t_en=5))
    _, _, out = run_in_memory(pool_table(texts), MetaclipWorldwideConfig(metadata=metadata, t_en=None,
                                                                          tail_proportion=0.5))
    assert 0 < sum(out.column("metaclip_worldwide_keep").to_pylist()) < len(texts)


def test_config_checks():
    with pytest.raises(RecipeError, match="exactly one of t_en and tail_proportion"):
        MetaclipWorldwideConfig(t_en=None)
    with pytest.raises(RecipeError, match="t_en must be >= 1"):
        MetaclipWorldwideConfig(t_en=0)
    recipe = parse_recipe({"stages": {"metaclip_worldwide": {}}, "select": "metaclip_worldwide_keep"}, "r")
    assert [stage.name for stage, _ in recipe.stages] == ["metaclip_worldwide_match", "metaclip_worldwide"]


# --- whole runs, both engines, the report ---

def write_multilingual_pool(directory: Path) -> Path:
    directory.mkdir(parents=True)
    texts = zipf_captions("en", [90, 40, 20, 10, 5, 2]) + zipf_captions("de", [45, 20, 10, 4, 2, 1])
    texts += [SENTENCES["fr"].format("chien") + f" {i}" for i in range(7)] + ["12345", None]
    order = np.random.default_rng(0).permutation(len(texts))
    texts = [texts[i] for i in order]
    for shard, part in enumerate(np.array_split(np.arange(len(texts)), 3)):
        rows = [texts[i] for i in part]
        table = pa.table({"uid": [derive_uid(f"http://x/{i}", str(texts[i])) for i in part],
                          "url": [f"http://x/{i}" for i in part], "text": pa.array(rows, pa.string()),
                          "status": ["success"] * len(rows)})
        pq.write_table(table, directory / f"{shard:05d}.parquet")
    return directory


def decisions(out: Path) -> pa.Table:
    return pq.read_table(sorted((out / "metaclip_worldwide").glob("part-*.parquet"))).sort_by("uid")


@pytest.mark.spark
def test_local_and_spark_give_identical_subsets_and_the_report_has_languages(tmp_path, spark):
    pool_dir = write_multilingual_pool(tmp_path / "pool")
    metadata = write_lists(tmp_path / "lists", WORDS)
    recipe = parse_recipe({"stages": {"metaclip_worldwide": {"metadata": metadata, "t_en": 20}},
                           "select": "status = 'success' AND metaclip_worldwide_keep"}, "worldwide")
    pipeline.run_recipe(recipe, pool_dir, tmp_path / "local", engine="local", workers=2)
    pipeline.run_recipe(recipe, pool_dir, tmp_path / "spark", engine="spark", spark=spark)
    assert decisions(tmp_path / "spark").equals(decisions(tmp_path / "local"))
    assert (tmp_path / "spark" / "subset.npy").read_bytes() == (tmp_path / "local" / "subset.npy").read_bytes()
    report = json.loads((tmp_path / "local" / "report.json").read_text())["metaclip_worldwide"]
    by_language = {row["language"]: row for row in report["languages"]}
    assert by_language["en"]["captions"] == 167 and by_language["de"]["captions"] == 82
    assert by_language["en"]["t"] == 20 and by_language["de"]["t"] < 20
    for language in ("en", "de"):  # the head is capped near t, the tail kept whole
        head = by_language[language]["head"][0]
        assert head["count_balanced"] < head["count_pool"] / 2
        assert by_language[language]["tail_mass_balanced"] > by_language[language]["tail_mass_pool"]
    assert report["reasons"]["no_metadata"] == 7 and report["languages_without_metadata"] == {"fr": 7}
    html = write_html_report(tmp_path / "local", pool_dir).read_text()
    assert "MetaCLIP 2: languages" in html


# --- the shipped lists ---

def test_shipped_lists_load_and_english_is_the_metaclip_list():
    lists = load_language_metadata("metadata/worldwide")
    assert len(lists) >= 40 and {"en", "de", "zh", "ja", "ru", "ar", "no", "tl"} <= set(lists)
    assert lists["en"] == load_metadata("metadata/entries.json.gz")
    assert "katze" in lists["de"] and "Katze" in lists["de"]  # German: also each word capitalised (README)
    assert "猫" in lists["zh"] and all(entry.strip() for entry in lists["zh"])


def test_demo_lists_name_the_demo_objects_in_each_language():
    from curate.demo.captions import FOREIGN_OBJECTS, LANGUAGES
    from curate.demo.draw import OBJECTS

    lists = load_language_metadata("metadata/demo_concepts_worldwide")
    assert lists["en"] == list(OBJECTS)
    for column, language in enumerate(LANGUAGES):
        assert lists[language] == [FOREIGN_OBJECTS[name][column].split(" ", 1)[1] for name in OBJECTS]
