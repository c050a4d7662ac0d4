"""MetaCLIP 2's per-language substring matching (Chuang et al. 2025, "MetaCLIP 2: A Worldwide
Scaling Recipe", section 3; facebookresearch/MetaCLIP metaclip/curation/substr_matching.py),
DESIGN.md 4.7.

The rule, for a caption of language L matched against L's entry list:

- the caption is stripped of outer whitespace, then spaced as in MetaCLIP 1: " " + text + " ",
  each of , . ; : ? ! ` padded with a space on both sides, tab / newline / CR -> space;
- an entry is padded with a space on each side EXCEPT where its first (last) character is
  "spaceless": a CJK ideograph or radical, a Thai, Lao, Burmese, Khmer or Tibetan letter, or
  punctuation (ASCII punctuation and the full-width marks listed below);
- entry e matches iff its padded form is a substring of the spaced caption; case-sensitive.

So "猫" matches inside "一只猫在桌子上" (plain substring: the rule for languages written without
spaces, zh ja th km lo my bo), "iPhone手机" is " iPhone手机" and needs a space (or the start)
before "iPhone", and an English word still needs spaces on both sides. MetaCLIP 2 segments
words with per-language tokenizers only to BUILD the metadata (counting Wikipedia unigrams);
matching is this character rule for every language, which we follow (no tokenizer at run time).

How it runs: entries padded on both sides are MetaCLIP 1's " e " rule, matched by the vectorised
token matcher (curate.kernels.metaclip_match: exact, no automaton walk); the others go into one
Aho-Corasick automaton (pyahocorasick, the C library the reference uses) run over the spaced
captions that could hold them. Blank entries never match; a repeated entry matches under its
first id; both are logged by the matchers.
"""

from __future__ import annotations

import logging
import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.kernels.metaclip_match import Matcher, spaced

log = logging.getLogger(__name__)

FULL_WIDTH_PUNCTUATION = frozenset("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")
PUNCTUATION = frozenset(string.punctuation) | FULL_WIDTH_PUNCTUATION
SPACELESS_RANGES = (  # CJK unified ideographs and extensions, compatibility ideographs, radicals,
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF),
    (0x2FF0, 0x2FFF),
    (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x0F00, 0x0FFF),
)  # ... then Thai, Lao, Burmese, Khmer, Tibetan (the reference's ranges)
# languages written without spaces between words (the reference's list; for the README and reports)
SPACELESS_LANGUAGES = ("bo", "dz", "ja", "km", "lo", "my", "th", "zh")
MAX_PREFILTER_CHARS = 256  # above this (a CJK list) nearly every caption of the language holds one


def is_spaceless(char: str) -> bool:
    """True where an entry boundary needs no space: a spaceless-script character or punctuation."""
    code = ord(char)
    return char in PUNCTUATION or any(low <= code <= high for low, high in SPACELESS_RANGES)


def padded_entry(entry: str) -> str:
    """The entry as it must appear in a spaced caption (MetaCLIP 2's spaced metadata)."""
    head = "" if is_spaceless(entry[0]) else " "
    tail = "" if is_spaceless(entry[-1]) else " "
    return f"{head}{entry}{tail}"


def spaced_caption(text: str) -> str:
    """MetaCLIP 2's spacing of one (stripped) caption, for the automaton and the tests' reference."""
    text = f" {text} "
    for mark in ",.;:?!`":
        text = text.replace(mark, f" {mark} ")
    for char in "\t\n\r":
        text = text.replace(char, " ")
    return text


class LanguageMatcher:
    """One language's entry list compiled for matching: built once per worker process."""

    def __init__(self, entries: list[str]):
        self.size = len(entries)
        spaced_ids, substring_ids = [], []
        for entry_id, entry in enumerate(entries):
            if not entry.strip():
                continue  # blank entries never match
            both_padded = not is_spaceless(entry[0]) and not is_spaceless(entry[-1])
            (spaced_ids if both_padded else substring_ids).append(entry_id)
        self.spaced_ids = np.array(spaced_ids, dtype=np.int32)
        self.tokens = Matcher([entries[i] for i in spaced_ids])
        self.automaton, self.candidates = None, None
        if substring_ids:
            import ahocorasick

            self.automaton = ahocorasick.Automaton()
            duplicates = 0
            for entry_id in substring_ids:
                key = padded_entry(entries[entry_id])
                if key in self.automaton:
                    duplicates += 1
                    continue
                self.automaton.add_word(key, entry_id)
            self.automaton.make_automaton()
            # every such entry has a spaceless character at an unpadded end, which the caption must
            # contain: captions with none of them skip the automaton (most English ones)
            boundary = sorted({c for i in substring_ids for c in (entries[i][0], entries[i][-1]) if is_spaceless(c)})
            self.candidates = "[" + "".join("\\" + c if c in "\\^-[]" else c for c in boundary) + "]" \
                if len(boundary) <= MAX_PREFILTER_CHARS else None
            if duplicates:
                log.warning("metadata: %d repeated entries match under their first position only", duplicates)

    def match(self, texts: pa.Array) -> pa.Array:
        """Per text, the ascending ids of the entries it matches (list<int32>; [] for null)."""
        texts = pc.utf8_trim_whitespace(pc.fill_null(texts, ""))
        lists = self.tokens.match(texts)
        offsets = lists.offsets.to_numpy().astype(np.int64)
        offsets -= offsets[0]
        rows = [np.repeat(np.arange(len(texts), dtype=np.int64), np.diff(offsets))]
        ids = [self.spaced_ids[lists.flatten().to_numpy()].astype(np.int64)]
        if self.automaton is not None:
            found_rows, found_ids = self._substrings(texts)
            rows.append(found_rows)
            ids.append(found_ids)
        return as_lists(np.concatenate(rows), np.concatenate(ids), len(texts))

    def _substrings(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        members = np.arange(len(texts))
        if self.candidates is not None:
            members = np.flatnonzero(pc.match_substring_regex(texts, self.candidates).to_numpy(zero_copy_only=False))
            texts = texts.take(pa.array(members))
        rows, ids = [], []
        iterate = self.automaton.iter
        for row, text in zip(members.tolist(), spaced(texts).to_pylist()):
            for _, entry_id in iterate(f" {text} "):
                rows.append(row)
                ids.append(entry_id)
        return np.array(rows, dtype=np.int64), np.array(ids, dtype=np.int64)


class Languages:
    """Per-language entry lists under global ids (languages in sorted order, each list in its own
    order: id = offset[language] + position); a language's matcher is built when first asked for."""

    def __init__(self, entries: dict[str, list[str]]):
        self.entries = {language: entries[language] for language in sorted(entries)}
        self.languages = list(self.entries)
        sizes = [len(self.entries[language]) for language in self.languages]
        self.offsets = dict(zip(self.languages, np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int).tolist()))
        self.size = int(sum(sizes))
        self._matchers: dict[str, LanguageMatcher] = {}

    def matcher(self, language: str) -> LanguageMatcher:
        if language not in self._matchers:
            self._matchers[language] = LanguageMatcher(self.entries[language])
        return self._matchers[language]

    def route(self, texts: pa.Array, language: pa.Array) -> pa.Array:
        """Each text's global entry ids, matched against its own language's list only; [] for a
        text whose language is null or has no list."""
        codes = language.dictionary_encode()
        indices = pc.fill_null(codes.indices, -1).to_numpy(zero_copy_only=False)
        rows, ids = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for code, name in enumerate(codes.dictionary.to_pylist()):
            if name not in self.offsets:
                continue
            members = np.flatnonzero(indices == code)
            matches = self.matcher(name).match(texts.take(pa.array(members)))
            offsets = matches.offsets.to_numpy().astype(np.int64)
            rows.append(np.repeat(members, np.diff(offsets)))
            ids.append(matches.flatten().to_numpy().astype(np.int64) + self.offsets[name])
        return as_lists(np.concatenate(rows), np.concatenate(ids), len(texts))


def as_lists(rows: np.ndarray, ids: np.ndarray, n_rows: int) -> pa.Array:
    """(row, id) pairs -> per row the ascending distinct ids, as list<int32>."""
    keys = np.sort((rows << 32) | ids)  # a sort, not np.unique: numpy 2's hash-based unique is 10x slower here
    if keys.size:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(keys >> 32, minlength=n_rows), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array((keys & 0xFFFFFFFF).astype(np.int32)))
