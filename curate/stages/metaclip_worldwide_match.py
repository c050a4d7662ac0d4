"""MetaCLIP 2's language routing and matching (Chuang et al. 2025, "MetaCLIP 2: A Worldwide
Scaling Recipe", section 3), DESIGN.md 4.7: each caption's language, then its entries in THAT
language's list only (curate.kernels.worldwide_match has the matching rule, spaceless scripts
included).

Language: the fastText lid.176 top-1 label of ``text.replace("\\n", " ")`` and its probability
(curate.models.langid), as the reference takes its LID's top-1 with no threshold. Decision: a
caption with no letter at all (empty, digits only, emoji or punctuation only) has no language
(null): lid.176 still names one for it ("en" for "12345"), a guess no list should count.

Entry ids are global over the languages: languages in sorted order, each list in its own order,
so id = offset[language] + position. The balancing stage (``metaclip_worldwide``) maps them back.

Columns added: ``metaclip_worldwide_lang`` (string; null: no text or no letter),
``metaclip_worldwide_lang_p`` (float32), ``metaclip_worldwide_entries`` (list<int32>, ascending;
empty when the caption has no language, its language has no list, or nothing matched; null for a
null caption).

Metadata: a directory of per-language lists ``<lang>.json[.gz]`` / ``<lang>.txt[.gz]`` (MetaCLIP 2's
one file per language; lid.176 codes: ``en``, ``de``, ``zh``, ``no``, ``tl`` ...) or one JSON object
{lang: [entries]}; the default is the built-in ``metadata/worldwide`` (metadata/README.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate.contract import Stage, file_field
from curate.errors import RecipeError
from curate.kernels.worldwide_match import Languages
from curate.models.langid import fasttext_top1_probability
from curate.resources import (
    language_metadata_digest,
    load_language_metadata,
    metadata_path,
    missing_metadata,
    resolve_metadata,
)

DEFAULT_METADATA = metadata_path("worldwide")
ADDS = pa.schema([("metaclip_worldwide_lang", pa.string()), ("metaclip_worldwide_lang_p", pa.float32()),
                  ("metaclip_worldwide_entries", pa.list_(pa.int32()))])
HAS_LETTER = r"\pL"


@dataclass(frozen=True, kw_only=True)
class MetaclipWorldwideMatchConfig:
    # a directory of per-language lists (or one JSON object of them); a bare name is looked up
    # among the shipped metadata (curate.resources)
    metadata: str = file_field(DEFAULT_METADATA)

    def __post_init__(self):
        if not Path(resolve_metadata(self.metadata)).exists():
            raise RecipeError(missing_metadata(resolve_metadata(self.metadata)))


@functools.lru_cache(maxsize=2)
def _languages(path: str, digest: str) -> Languages:
    return Languages(load_language_metadata(path))


def languages(path: str) -> Languages:
    """The metadata of ``path``, loaded once per process (again when a file changes)."""
    resolved = str(Path(resolve_metadata(path)).resolve())
    return _languages(resolved, language_metadata_digest(resolved))


def identify(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Language and probability per caption; null for a null caption or one with no letter."""
    labels, probabilities = fasttext_top1_probability(text.to_pylist())
    lettered = pc.fill_null(pc.match_substring_regex(text, HAS_LETTER), False)
    language = pc.if_else(lettered, pa.array(labels, pa.string()), pa.scalar(None, pa.string()))
    probability = pc.if_else(lettered, pa.array(probabilities, pa.float32()), pa.scalar(None, pa.float32()))
    return language, probability


def apply(table: pa.Table, cfg: MetaclipWorldwideMatchConfig, artifact: None) -> pa.Table:
    text = table.column("text").combine_chunks() if table.num_rows else pa.array([], pa.string())
    if not pa.types.is_string(text.type):
        text = text.cast(pa.string())
    language, probability = identify(text)
    matches = languages(cfg.metadata).route(text, language)
    if text.null_count:
        matches = pc.if_else(pc.is_null(text), pa.scalar(None, matches.type), matches)
    return pa.table({"metaclip_worldwide_lang": language, "metaclip_worldwide_lang_p": probability,
                     "metaclip_worldwide_entries": matches}, schema=ADDS)


def describe(cfg: MetaclipWorldwideMatchConfig) -> dict:
    """The metadata's digest and per-language sizes (reading it here stops a malformed list early)."""
    lists = languages(cfg.metadata)
    return {"metadata_sha256": language_metadata_digest(resolve_metadata(cfg.metadata)),
            "metadata_entries": {language: len(entries) for language, entries in lists.entries.items()}}


def reads(cfg: MetaclipWorldwideMatchConfig) -> tuple[str, ...]:
    return ("text",)


STAGE = Stage(
    name="metaclip_worldwide_match",
    config=MetaclipWorldwideMatchConfig,
    reads=reads,
    adds=ADDS,
    apply=apply,
    summary="MetaCLIP 2 matching: each caption's language (lid.176), then its entries in that language's list",
    describe=describe,
)
