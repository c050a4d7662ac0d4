"""uid rules (DESIGN.md section 2) and uid-hashed randomness (section 3).

A uid is a 32-character lower-case hex string (128 bits), the only join key of a pool.
Pools without uids get one derived from url and caption, so re-ingesting gives the same
uids. A DataComp subset is a `.npy` of dtype exactly ``np.dtype("u8,u8")``: f0 = the first
16 hex digits, f1 = the last 16, sorted ascending.

Randomness never comes from a global RNG stream: a stage that samples draws one uniform per
sample from a hash of (uid, seed, stage name), so its decisions do not depend on the
partitioning or the number of workers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.runio import atomic_path

UID_PATTERN = "^[0-9a-f]{32}$"
SUBSET_DTYPE = np.dtype("u8,u8")  # DataComp's resharder accepts exactly this dtype

_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789", dtype=np.uint8)] = np.arange(10, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"abcdef", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def derive_uid(url: str, text: str | None) -> str:
    """The uid of a sample that came without one: blake2b-128 of url, NUL, caption (UTF-8).

    A missing caption hashes like the empty caption. Invalid surrogates in the caption are
    encoded with ``surrogatepass`` so every Python string gets a uid.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(url.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update((text or "").encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def malformed_uid_rows(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Row indices whose uid is null or not 32 lower-case hex characters."""
    ok = pc.fill_null(pc.match_substring_regex(uids, UID_PATTERN), False)
    return np.flatnonzero(~np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool))


def uid_pairs(uids: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """Valid uids -> structured array of dtype u8,u8 (f0 = high 64 bits, f1 = low 64 bits)."""
    array = pa.chunked_array([pa.array(uids, pa.string())]) if isinstance(uids, list) else uids
    if isinstance(array, pa.Array):
        array = pa.chunked_array([array])
    out = np.empty(len(array), dtype=SUBSET_DTYPE)
    start = 0
    for chunk in array.chunks:
        out[start:start + len(chunk)] = _chunk_pairs(chunk)
        start += len(chunk)
    return out


def _chunk_pairs(chunk: pa.Array) -> np.ndarray:
    chunk = chunk.cast(pa.large_string()) if chunk.type == pa.string_view() else chunk
    if len(malformed_uid_rows(chunk)):
        raise ValueError("uid_pairs needs valid uids; check them with malformed_uid_rows first")
    offsets_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(chunk.buffers()[1], dtype=offsets_type)[chunk.offset:chunk.offset + len(chunk) + 1]
    chars = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    nibbles = _HEX_VALUE[chars].reshape(len(chunk), 32).astype(np.uint64)
    weights = np.uint64(16) ** np.arange(15, -1, -1, dtype=np.uint64)
    out = np.empty(len(chunk), dtype=SUBSET_DTYPE)
    out["f0"] = nibbles[:, :16] @ weights
    out["f1"] = nibbles[:, 16:] @ weights
    return out


def pairs_to_uids(pairs: np.ndarray) -> list[str]:
    return [f"{int(a):016x}{int(b):016x}" for a, b in zip(pairs["f0"], pairs["f1"])]


def write_datacomp_subset(pairs: np.ndarray, path: str | Path) -> int:
    """Sort the selected uid pairs and save them as DataComp's subset `.npy`, atomically.

    Repeated uids are kept (DataComp reads a repeat as "use this sample twice").
    """
    pairs = np.sort(np.asarray(pairs, dtype=SUBSET_DTYPE), order=["f0", "f1"])
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, pairs)
    return len(pairs)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def uid_uniform(uids: pa.Array | pa.ChunkedArray | list[str], seed: int, stage: str) -> np.ndarray:
    """One uniform in [0, 1) per uid from a hash of (uid, seed, stage): float64, 53 random bits."""
    key = int.from_bytes(hashlib.blake2b(f"{seed}:{stage}".encode(), digest_size=8).digest(), "little")
    pairs = uid_pairs(uids)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(pairs["f0"] ^ np.uint64(key))
        mixed = _splitmix64(mixed ^ pairs["f1"])
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
