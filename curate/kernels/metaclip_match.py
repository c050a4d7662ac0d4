"""MetaCLIP's substring matching (Xu et al. 2023, "Demystifying CLIP Data"), DESIGN.md 4.2, at scale.

The rule: spaced(text) = " " + text + " ", then each of , . ; : ? ! ` becomes itself with a
space on both sides, then tab, newline and CR become spaces (no whitespace collapsing).
Entry e matches iff " " + e + " " is a substring of spaced(text); case-sensitive.

Why a hash table and not an automaton: every space in spaced(text) separates two tokens of
``spaced(text).split(" ")`` (empty tokens from double spaces included), so " e " occurs iff
``e.split(" ")`` equals a run of consecutive tokens. Matching is therefore looking token
n-grams up in a table of the entries' tokens: exact for every entry, including ones with
outer or double spaces, and with no per-character automaton walk. Per batch, in vectors:

1. spacing and splitting are Arrow kernels over the whole batch;
2. the batch's distinct tokens are looked up once in a dict (token -> token index); numpy
   gathers give each token position its single-token entry, its trie node (when the token
   starts a longer entry) and its token id (when it continues one);
3. longer entries follow a trie over token ids level by level: the edges (node, next token
   id) -> child live in an open-addressing int64 hash table probed with numpy, and only the
   positions still inside some entry are extended;
4. (row, entry) pairs are sorted once into ascending, distinct ``list<int32>`` per row.

Entries that are blank (only whitespace) never match; a repeated entry matches under its
first position only (later copies keep their ids, with count 0). Both are logged.
"""

from __future__ import annotations

import logging
from itertools import repeat

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

PUNCTUATION_PATTERN = r"([,.;:?!`])"
CHUNK_ROWS = 65536  # rows matched per vectorised pass: big enough to dedupe tokens, small for cache
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def spaced(texts: pa.Array) -> pa.Array:
    """MetaCLIP's spaced(text) without the outer spaces (the token view adds them implicitly)."""
    # the two replacements commute (neither creates what the other replaces)
    texts = pc.replace_substring_regex(texts, r"[\t\n\r]", " ")
    return pc.replace_substring_regex(texts, PUNCTUATION_PATTERN, r" \1 ")


class IntTable:
    """A fixed open-addressing hash table int64 -> int32 (>= 0), built once, probed with numpy."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        self.bits = max(4, int(np.ceil(np.log2(max(len(keys), 1) * 2))) + 1)
        size = 1 << self.bits
        self.keys = np.zeros(size, dtype=np.int64)
        self.values = np.full(size, -1, dtype=np.int32)
        pending, slots = np.arange(len(keys)), self._slots(keys)
        while pending.size:
            free = self.values[slots] < 0
            winner_slots, first = np.unique(slots[free], return_index=True)
            winners = pending[free][first]
            self.keys[winner_slots], self.values[winner_slots] = keys[winners], values[winners]
            placed = np.zeros(len(keys), dtype=bool)
            placed[winners] = True
            left = ~placed[pending]
            pending, slots = pending[left], (slots[left] + 1) & (size - 1)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return ((keys.astype(np.uint64) * _GOLDEN) >> np.uint64(64 - self.bits)).astype(np.int64)

    def get(self, queries: np.ndarray) -> np.ndarray:
        out = np.full(len(queries), -1, dtype=np.int32)
        todo, slots = np.arange(len(queries)), self._slots(queries)
        mask = (1 << self.bits) - 1
        while todo.size:
            values = self.values[slots]
            hit = (values >= 0) & (self.keys[slots] == queries[todo])
            out[todo[hit]] = values[hit]
            again = (values >= 0) & ~hit
            todo, slots = todo[again], (slots[again] + 1) & mask
        return out


class Matcher:
    """The entry list compiled for matching: built once per worker process."""

    def __init__(self, entries: list[str]):
        self.size = len(entries)
        self.blank = [i for i, e in enumerate(entries) if not e.strip()]
        self.duplicates: list[int] = []
        token_index: dict[str, int] = {}
        single: dict[int, int] = {}      # token index -> id of the one-token entry
        starts: dict[int, int] = {}      # token index -> trie node of the entries it starts
        next_tid: dict[int, int] = {}    # token index -> token id where it continues an entry
        edges: dict[int, int] = {}       # node << 32 | token id -> child node
        node_entry = [-1]                # per trie node, the entry ending there; node 0 unused
        for entry_id, entry in enumerate(entries):
            if not entry.strip():
                continue
            if " " not in entry:
                if single.setdefault(token_index.setdefault(entry, len(token_index)), entry_id) != entry_id:
                    self.duplicates.append(entry_id)
                continue
            tokens = [token_index.setdefault(t, len(token_index)) for t in entry.split(" ")]
            node = starts.setdefault(tokens[0], len(node_entry))
            if node == len(node_entry):
                node_entry.append(-1)
            for token in tokens[1:]:
                node = edges.setdefault(node << 32 | next_tid.setdefault(token, len(next_tid)), len(node_entry))
                if node == len(node_entry):
                    node_entry.append(-1)
            if node_entry[node] >= 0:
                self.duplicates.append(entry_id)
            else:
                node_entry[node] = entry_id
        self.token_index = token_index
        # per token index, plus a last slot for "no entry has this token"
        self.single, self.start_node = _dense(single, len(token_index) + 1), _dense(starts, len(token_index) + 1)
        self.tid = _dense(next_tid, len(token_index) + 1).astype(np.int64)
        self.tids = max(len(next_tid), 1)
        self.node_entry = np.array(node_entry, dtype=np.int32)
        edge_keys = np.fromiter(edges.keys(), dtype=np.int64, count=len(edges))
        parents = edge_keys >> 32
        self.has_child = np.zeros(len(node_entry), dtype=bool)
        self.has_child[parents] = True
        self.edges = IntTable(parents * self.tids + (edge_keys & 0xFFFFFFFF),
                              np.fromiter(edges.values(), dtype=np.int32, count=len(edges)))
        if self.blank:
            log.warning("metadata: %d blank entries never match (ids %s...)", len(self.blank), self.blank[:5])
        if self.duplicates:
            log.warning("metadata: %d repeated entries match under their first position only (ids %s...)",
                        len(self.duplicates), self.duplicates[:5])

    def match(self, texts: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Per text, the ascending ids of the entries it matches (list<int32>; [] for null)."""
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.string())
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            texts = texts.cast(pa.large_string())
        texts = pc.fill_null(texts, "")
        parts = [self._match_chunk(texts.slice(start, CHUNK_ROWS)) for start in range(0, len(texts), CHUNK_ROWS)]
        return pa.concat_arrays(parts) if parts else pa.array([], pa.list_(pa.int32()))

    def _match_chunk(self, texts: pa.Array) -> pa.Array:
        lists = pc.split_pattern(spaced(texts), " ")
        offsets = lists.offsets.to_numpy().astype(np.int64)
        offsets -= offsets[0]
        tokens = lists.flatten()
        row = np.repeat(np.arange(len(texts), dtype=np.int64), np.diff(offsets))
        index = self._token_indices(tokens)
        single = self.single[index]
        found_rows, found_entries = [row[single >= 0]], [single[single >= 0]]
        starts = np.flatnonzero(self.start_node[index] >= 0)
        nodes, tids = self.start_node[index][starts], self.tid[index]
        row_end = offsets[1:][row[starts]]
        step = 1
        while starts.size:
            inside = starts + step < row_end
            starts, nodes, row_end = starts[inside], nodes[inside], row_end[inside]
            next_tid = tids[starts + step]
            known = next_tid >= 0
            starts, nodes, row_end = starts[known], nodes[known], row_end[known]
            children = self.edges.get(nodes.astype(np.int64) * self.tids + next_tid[known])
            hit = children >= 0
            starts, nodes, row_end = starts[hit], children[hit], row_end[hit]
            entries = self.node_entry[nodes]
            found_rows.append(row[starts[entries >= 0]])
            found_entries.append(entries[entries >= 0])
            more = self.has_child[nodes]
            starts, nodes, row_end = starts[more], nodes[more], row_end[more]
            step += 1
        return _as_lists(np.concatenate(found_rows), np.concatenate(found_entries), len(texts))

    def _token_indices(self, tokens: pa.Array) -> np.ndarray:
        """Token index per token position (len(token_index) when it is no entry's token)."""
        encoded = pc.dictionary_encode(tokens)
        distinct = encoded.dictionary.to_pylist()
        missing = len(self.token_index)
        lookup = np.fromiter(map(self.token_index.get, distinct, repeat(missing)), dtype=np.int64, count=len(distinct))
        return lookup[encoded.indices.to_numpy()]


def _dense(mapping: dict[int, int], size: int) -> np.ndarray:
    dense = np.full(size, -1, dtype=np.int32)
    dense[np.fromiter(mapping.keys(), np.int64, len(mapping))] = np.fromiter(mapping.values(), np.int32, len(mapping))
    return dense


def _as_lists(rows: np.ndarray, entries: np.ndarray, n_rows: int) -> pa.Array:
    keys = (rows << 32) | entries.astype(np.int64)
    keys.sort(kind="stable")  # a few runs already in row order: timsort merges them fast
    if keys.size:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(keys >> 32, minlength=n_rows), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array((keys & 0xFFFFFFFF).astype(np.int32)))
