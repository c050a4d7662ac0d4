"""MetaCLIP's matching rule (curate.kernels.metaclip_match) against a pure-Python reference of DESIGN.md 4.2."""

from __future__ import annotations

import gzip
import json
import logging
import random

import pyarrow as pa
import pytest

from curate.kernels import metaclip_match
from curate.kernels.metaclip_match import Matcher
from curate.resources import load_metadata


def spaced_reference(text: str) -> str:
    """DESIGN.md 4.2, literally: pad the punctuation, then tab/newline/CR become spaces."""
    text = " " + text + " "
    for mark in ",.;:?!`":
        text = text.replace(mark, f" {mark} ")
    for control in "\t\n\r":
        text = text.replace(control, " ")
    return text


def reference_matches(text: str | None, entries: list[str]) -> list[int]:
    """Ids of the entries e with " e " in spaced(text); blank entries never match and a
    repeated entry matches under its first position only (the documented choices)."""
    if text is None:
        return []
    spaced, seen, found = spaced_reference(text), set(), []
    for entry_id, entry in enumerate(entries):
        if not entry.strip() or entry in seen:
            continue
        seen.add(entry)
        if f" {entry} " in spaced:
            found.append(entry_id)
    return found


def match(texts: list[str | None], entries: list[str]) -> list[list[int]]:
    return Matcher(entries).match(pa.array(texts, pa.string())).to_pylist()


def names(text: str, entries: list[str]) -> list[str]:
    return [entries[i] for i in match([text], entries)[0]]


ENTRIES = ["cat", "Cat", "cat.", ".", ",", "t-shirt", "shirt", "red car", "red  car", " car", "car ",
           "new york", "york city", "new york city", "york", "ice", "ice cream cone", "café au lait",
           "日本", "cat's", "?", "`", "(cat)", "cat/dog", "e.g", "a b c", "b c d", "sunny day"]


@pytest.mark.parametrize(("text", "expected"), [
    ("A cat.", ["cat", "."]),                          # case-sensitive; "." is split off "cat."
    ("Cat, cat", ["cat", "Cat", ","]),
    ("cat.cat", ["cat", "."]),                         # punctuation splits inside words too
    ("a t-shirt", ["t-shirt"]),                        # hyphens are not split
    ("red\tcar", ["red car"]),                         # a tab is a space
    ("red\r\ncar", ["red  car", " car"]),              # CR and LF are two spaces: no collapsing
    ("red  car", ["red  car", " car"]),                # double space: only entries that have it
    ("red car ", ["red car", "car "]),                 # trailing space: "  " at the end
    ("new york city", ["new york", "york city", "new york city", "york"]),  # overlaps
    ("ice cream", ["ice"]),                            # a longer entry needs all its tokens
    ("un café au lait", ["café au lait"]),
    ("日本 語", ["日本"]),
    ("日本語", []),                                      # no spaces in the text: no token boundary
    ("cat\u3000dog", []),                             # only space, tab, LF, CR separate
    ("cat's toy", ["cat's"]),
    ("is it?`", ["?", "`"]),
    ('"cat" (cat) cat/dog', ["(cat)", "cat/dog"]),    # quotes, brackets, slashes stay attached
    ("e.g. this", ["."]),                              # "e.g" can never match: "." is split off
    ("a b c d", ["a b c", "b c d"]),
    ("", []),
    ("   ", []),
])
def test_hand_made_cases(text, expected):
    assert names(text, ENTRIES) == sorted(expected, key=ENTRIES.index)
    assert names(text, ENTRIES) == [ENTRIES[i] for i in reference_matches(text, ENTRIES)]


def test_blank_and_repeated_entries_are_documented(caplog):
    entries = ["", "cat", " ", "cat", "\t", "dog", "cat"]
    with caplog.at_level(logging.WARNING):
        matcher = Matcher(entries)
    assert matcher.blank == [0, 2, 4] and matcher.duplicates == [3, 6]
    assert "blank" in caplog.text and "repeated" in caplog.text
    texts = ["cat and dog", "", "a  b", "x.", "\t"]
    assert matcher.match(pa.array(texts)).to_pylist() == [[1, 5], [], [], [], []]
    assert [reference_matches(t, entries) for t in texts] == [[1, 5], [], [], [], []]


def test_outer_spaces_are_matched_literally():
    entries = [" cat", "cat ", " cat "]
    assert match(["a cat", "a  cat", "a  cat  b", "cat  "], entries) == [[], [0], [0, 1, 2], [1]]


def test_null_empty_and_huge_captions():
    entries = ["needle", "needle in", "in a haystack", "hay"]
    huge = ("hay " * 250_000) + "needle in a haystack."
    assert len(huge) > 1_000_000
    texts = [None, "", huge, "needle"]
    assert match(texts, entries) == [reference_matches(t, entries) for t in texts] == [[], [], [0, 1, 2, 3], [0]]


def test_chunking_and_string_types_do_not_change_matches(monkeypatch):
    entries = ["a b", "b", "c d e"]
    texts = ["a b", None, "c d e", "x", "b a b", "c d", "e"] * 5
    expected = [reference_matches(t, entries) for t in texts]
    matcher = Matcher(entries)
    monkeypatch.setattr(metaclip_match, "CHUNK_ROWS", 3)
    assert matcher.match(pa.array(texts)).to_pylist() == expected
    assert matcher.match(pa.chunked_array([texts[:4], texts[4:]], pa.large_string())).to_pylist() == expected
    assert matcher.match(pa.array(texts).slice(2, 5)).to_pylist() == expected[2:7]
    assert matcher.match(pa.array([], pa.string())).to_pylist() == []
    assert Matcher([]).match(pa.array(["a b"])).to_pylist() == [[]]


PIECES = ["a", "b", "ab", "A", "cat", "Cat", "é", "日本", "-", "a-b", "'s", "(", ")", "/", '"',
          ",", ".", ";", ":", "?", "!", "`", " ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\u3000", "\xa0"]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14)))


def random_entries(rng: random.Random, texts: list[str]) -> list[str]:
    entries = []
    for _ in range(rng.randint(1, 25)):
        kind = rng.random()
        if kind < 0.45 and texts:  # a slice of a spaced text: likely to match, overlaps and prefixes
            spaced = spaced_reference(rng.choice([t for t in texts if t is not None] or [""]))
            start = rng.randrange(len(spaced))
            entries.append(spaced[start:start + rng.randint(1, 8)])
        elif kind < 0.55 and entries:  # a prefix, suffix or extension of an earlier entry
            base = rng.choice(entries)
            cut = rng.randint(0, len(base))
            entries.append(rng.choice([base[:cut], base[cut:], base + " " + rng.choice(PIECES)]))
        elif kind < 0.62 and entries:  # a repeat
            entries.append(rng.choice(entries))
        else:
            entries.append("".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4))))
    return entries


def test_randomised_cases_equal_the_reference_rule():
    rng = random.Random(4)
    cases = 0
    for _ in range(250):
        texts = [random_text(rng) for _ in range(rng.randint(1, 12))] + [None]
        entries = random_entries(rng, texts)
        got = match(texts, entries)
        for text, ids in zip(texts, got):
            assert ids == reference_matches(text, entries), (text, entries)
            cases += 1
    assert cases >= 1000


def test_load_metadata_formats(tmp_path):
    entries = ["dog", " padded ", "", "hot dog", "日本"]
    (tmp_path / "a.json").write_text(json.dumps(entries))
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(json.dumps(entries).encode()))
    (tmp_path / "c.txt").write_text("\n".join(entries) + "\n")
    (tmp_path / "d.txt").write_bytes("\r\n".join(entries).encode())
    for name in ("a.json", "b.json.gz", "c.txt", "d.txt"):
        assert load_metadata(tmp_path / name) == entries, name


@pytest.mark.parametrize(("content", "message"), [
    (b"\xff\xfedog", "not UTF-8"),
    (b'{"a": 1}', "JSON list"),
    (b'["a", 3]', "entry 1"),
    (b'["a", ', "not a JSON list"),
])
def test_bad_metadata_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        load_metadata(path)
    assert "bad.json" in str(error.value)


def test_builtin_list_loads_and_is_clean():
    from curate.stages.metaclip import DEFAULT_METADATA

    entries = load_metadata(DEFAULT_METADATA)
    assert 350_000 < len(entries) < 450_000 and len(set(entries)) == len(entries)
    assert all(e.strip() == e and e and "  " not in e for e in entries)
    positions = {e: i for i, e in enumerate(entries)}
    for entry in ("dog", "hot dog", "New York", "cat", "photograph", "ice cream"):
        assert entry in positions, entry
