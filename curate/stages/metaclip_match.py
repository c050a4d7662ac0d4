"""MetaCLIP's matching step (Xu et al. 2023, "Demystifying CLIP Data", section 3.1), DESIGN.md 4.2:
every caption's set of metadata entries, by MetaCLIP's exact substring rule (curate.kernels.metaclip_match
has the rule and how it runs fast).

A per-row stage of its own, so each caption is matched once on every engine: the ``metaclip``
stage counts and balances over the column written here (a recipe's ``metaclip`` runs this stage
first by itself, see ``Stage.before``).

Column added: ``metaclip_entries`` (list<int32>: the ascending ids of the matched entries; empty
when none; null for a null caption, so the balancing needs no other column). The ``metaclip_`` prefix is the method's: the column belongs to
MetaCLIP's output whichever of its two stages writes it.

Metadata: a JSON list of strings (.json/.json.gz) or one entry per line; blank entries never
match, a repeated entry matches under its first id, outer spaces are matched literally
(curate.kernels.metaclip_match). The file's sha256 is in the manifest and the fingerprint, so
editing the list in place re-runs the matching.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate.contract import Stage, file_field
from curate.errors import RecipeError
from curate.fingerprint import file_sha256
from curate.kernels.metaclip_match import Matcher
from curate.resources import load_metadata, metadata_path, missing_metadata, resolve_metadata

DEFAULT_METADATA = metadata_path("entries.json.gz")
ADDS = pa.schema([("metaclip_entries", pa.list_(pa.int32()))])
_MATCHERS: dict[tuple, Matcher] = {}


@dataclass(frozen=True, kw_only=True)
class MetaclipMatchConfig:
    # JSON list of strings (.json/.json.gz) or one entry per line; a bare file name that is not
    # a file in the working directory is looked up among the shipped metadata (curate.resources)
    metadata: str = file_field(DEFAULT_METADATA)

    def __post_init__(self):
        if not Path(resolve_metadata(self.metadata)).is_file():
            raise RecipeError(missing_metadata(resolve_metadata(self.metadata)))


def matcher(path: str) -> Matcher:
    """The compiled entry list, built once per process (rebuilt if the file changes)."""
    resolved = Path(resolve_metadata(path)).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key not in _MATCHERS:
        _MATCHERS.clear()
        _MATCHERS[key] = Matcher(load_metadata(resolved))
    return _MATCHERS[key]


def apply(table: pa.Table, cfg: MetaclipMatchConfig, artifact: None) -> pa.Table:
    text = table.column("text")
    matches = matcher(cfg.metadata).match(text)
    if text.null_count:
        matches = pc.if_else(pc.is_null(text.combine_chunks()), pa.scalar(None, matches.type), matches)
    return pa.table({"metaclip_entries": matches})


def describe(cfg: MetaclipMatchConfig) -> dict:
    """The metadata's digest and size; reading the list here also stops a malformed one early
    (only parsed: the matcher is built in the workers that match)."""
    path = resolve_metadata(cfg.metadata)
    return {"metadata_sha256": file_sha256(path), "metadata_entries": entry_count(path)}


@functools.lru_cache(maxsize=8)
def _entry_count(path: str, size: int, mtime_ns: int) -> int:
    return len(load_metadata(path))


def entry_count(path: str) -> int:
    stat = Path(path).stat()
    return _entry_count(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def reads(cfg: MetaclipMatchConfig) -> tuple[str, ...]:
    return ("text",)


STAGE = Stage(
    name="metaclip_match",
    config=MetaclipMatchConfig,
    reads=reads,
    adds=ADDS,
    apply=apply,
    summary="MetaCLIP matching: the metadata entries each caption contains (exact spaced substring rule)",
    describe=describe,
)
