"""DataComp's text-based baseline (Gadre et al. 2023, "DataComp: In search of the next generation
of multimodal datasets"; mlfoundations/datacomp ``baselines/apply_filter.py``,
``load_uids_with_text_entity``), DESIGN.md 4.1.

Keep a sample iff the fastText lid.176 top-1 label of ``text.replace("\\n", " ")`` is "en"
(curate.models.langid) AND some token of ``text.split()`` (punctuation kept) has a first WordNet synset
whose offset is an ImageNet-21k synset offset. "First synset" is nltk 3.8.1's
``wordnet.synsets(token)[0]`` on WordNet 3.0, as DataComp runs it:

- the token is lower-cased (``str.lower``);
- parts of speech are tried in the order noun, verb, adjective, adverb; for each, WordNet's
  ``morphy``: if the word is in that part of speech's exception list, the first of
  ``[word, *bases]`` that is a lemma of that part of speech (and nothing else is tried);
  otherwise the word or, failing that, the first result of the detachment rules applied once,
  then again and again to all forms of the previous round until some form is a lemma;
- the first part of speech with a result gives the synset: the first offset listed for that
  lemma in the index file.

DataComp compares bare offsets (``synset.offset() in entity_set``, the ids' "n" dropped), so a
verb or adjective synset whose offset equals an ImageNet-21k noun offset matches too; we do the
same. The WordNet tables and the 21,843 wnids (byte-identical to DataComp's asset, checked by
sha256 on load) come from metadata/text_based.json.gz, built by metadata/build_text_based.py,
which verifies this module against nltk itself; nothing is downloaded.

Columns added: ``text_based_keep``; ``text_based_reason`` (null when kept, else no_text (null
caption: DataComp's code would stop), not_english, no_in21k_synset); ``text_based_lang`` (the
fastText label); ``text_based_synset``, the first matching token's synset as pos + 8-digit offset
(e.g. "n02084071" for "dogs"), null if none, for English and other captions alike.

Decision where nltk would not finish: a token longer than 200 characters is not looked up (no
WordNet lemma is longer than 71 characters; nltk strips suffixes from such a token one rule at a
time, with a number of candidate forms that can grow exponentially).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.contract import Stage, file_field
from curate.errors import RecipeError
from curate.kernels.rules import decide, is_null
from curate.models.langid import fasttext_top1
from curate.resources import metadata_path, missing_metadata

DEFAULT_TABLE = metadata_path("text_based.json.gz")
PARTS_OF_SPEECH = ("n", "v", "a", "r")  # nltk's POS_LIST order
MAX_TOKEN = 200
# WordNet's morphy detachment rules, in nltk 3.8.1's order (MORPHOLOGICAL_SUBSTITUTIONS)
DETACHMENTS = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}


@dataclass(frozen=True, kw_only=True)
class TextBasedConfig:
    # Defaults: DataComp's text-based baseline (Gadre et al. 2023).
    language: str = "en"           # fastText top-1 label required
    table: str = file_field(DEFAULT_TABLE)  # WordNet 3.0 + ImageNet-21k lookup (metadata/build_text_based.py)


class WordNetLookup:
    """``wordnet.synsets(token)[0]`` as (pos, offset), from the built table; memoised per token."""

    def __init__(self, table: dict):
        self.lemmas = table["first_synsets"]
        self.exceptions = table["exceptions"]
        self.cache: dict[str, tuple[str, int] | None] = {}

    def first_synset(self, token: str) -> tuple[str, int] | None:
        found = self.cache.get(token, False)
        if found is False:
            if len(self.cache) > 1_000_000:
                self.cache.clear()
            found = self.cache[token] = self._first_synset(token.lower())
        return found

    def _first_synset(self, word: str) -> tuple[str, int] | None:
        if len(word) > MAX_TOKEN:
            return None
        for pos in PARTS_OF_SPEECH:
            form = self._morphy(word, pos)
            if form is not None:
                return pos, self.lemmas[pos][form]
        return None

    def _morphy(self, word: str, pos: str) -> str | None:
        """The first base form of ``word`` that is a lemma of ``pos`` (nltk's ``_morphy(...)[0]``)."""
        lemmas = self.lemmas[pos]
        if word in self.exceptions[pos]:
            return next((form for form in (word, *self.exceptions[pos][word]) if form in lemmas), None)
        forms = self._detach([word], pos)
        candidates = [word, *forms]
        while candidates:
            found = next((form for form in candidates if form in lemmas), None)
            if found is not None:
                return found
            forms = candidates = self._detach(forms, pos)
        return None

    @staticmethod
    def _detach(forms: list[str], pos: str) -> list[str]:
        # repeated forms are dropped (first kept): the first lemma found is the same, and it
        # keeps the rounds from growing exponentially
        return list(dict.fromkeys(form[:-len(old)] + new for form in forms for old, new in DETACHMENTS[pos]
                                  if form.endswith(old)))


@functools.cache
def load_table(path: str) -> tuple[WordNetLookup, frozenset[int]]:
    """The lookup and the ImageNet-21k offsets; the wnid list must be DataComp's, byte for byte."""
    if not Path(path).is_file():
        raise RecipeError(missing_metadata(path))
    with gzip.open(path, "rt", encoding="ascii") as handle:
        table = json.load(handle)
    wnids = table["imagenet21k"]
    digest = hashlib.sha256("".join(f"{wnid}\n" for wnid in wnids).encode()).hexdigest()
    if digest != table["sources"]["imagenet21k_sha256"]:
        raise RecipeError(f"{path}: the ImageNet-21k wnid list does not match its recorded sha256")
    return WordNetLookup(table), frozenset(int(wnid[1:]) for wnid in wnids)


def matching_synset(text: str | None, lookup: WordNetLookup, entities: frozenset[int]) -> str | None:
    """The first synset (pos + offset) of the first token of ``text.split()`` that is an entity."""
    if text is None:
        return None
    for token in text.split():
        found = lookup.first_synset(token)
        if found is not None and found[1] in entities:
            return f"{found[0]}{found[1]:08d}"
    return None


def apply(table: pa.Table, cfg: TextBasedConfig, artifact: pa.Table | None) -> pa.Table:
    text = table.column("text")
    texts = text.to_pylist()
    languages = fasttext_top1(texts)
    lookup, entities = load_table(cfg.table)
    synsets = [matching_synset(t, lookup, entities) for t in texts]
    checks = [
        ("no_text", is_null(text)),
        ("not_english", np.array(languages, dtype=object) != cfg.language),
        ("no_in21k_synset", np.array([s is None for s in synsets], dtype=bool)),
    ]
    keep, reason = decide(checks, table.num_rows)
    return pa.table({"text_based_keep": keep, "text_based_reason": reason,
                     "text_based_lang": pa.array(languages, pa.string()),
                     "text_based_synset": pa.array(synsets, pa.string())})


def reads(cfg: TextBasedConfig) -> tuple[str, ...]:
    return ("text",)


STAGE = Stage(
    name="text_based",
    config=TextBasedConfig,
    reads=reads,
    adds=pa.schema([("text_based_keep", pa.bool_()), ("text_based_reason", pa.string()),
                    ("text_based_lang", pa.string()), ("text_based_synset", pa.string())]),
    apply=apply,
    summary="DataComp text-based: fastText English and a caption word whose first WordNet synset is in ImageNet-21k",
)
