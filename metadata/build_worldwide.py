"""Build MetaCLIP 2-style per-language metadata (Chuang et al. 2025, "MetaCLIP 2: A Worldwide
Scaling Recipe", section 3.1) from sources that come through package registries, so it rebuilds
offline.

    python metadata/build_worldwide.py --wordfreq WHEEL --english entries.json.gz [--out DIR]
                                       [--min-frequency 1e-7] [--table]

WHEEL: the wordfreq 3.1.1 wheel (Apache-2.0 code; word frequencies from Wikipedia, subtitles,
news, books, web text and social media, CC BY-SA 4.0). Per language it ships a "large" list
(24 languages, words down to frequency 1e-8) or a "small" one (down to 1e-6).

Per language, one part, MetaCLIP 2's "unigrams above a frequency cut": wordfreq's words with
frequency >= --min-frequency (1e-7: about the English list's cut, count >= 100 in 2.5B Wikipedia
tokens is 4e-8), most frequent first; for a small-list language, its whole list. Left out, and
counted: words with a digit (wordfreq stores every digit as "0", so "2000" is "0000"), words with
no letter (emoji, symbols), and words MetaCLIP's rule can never match (containing , . ; : ? ! `).
wordfreq lower-cases its words and matching is case-sensitive, so a capitalised word matches only
mid-sentence in lower case, as with the English list's Wikipedia part; German, which capitalises
every noun, also gets each word's capitalised form. English is the 384k MetaCLIP list (metadata/entries.json.gz: WordNet 3.0 + Wikipedia unigrams),
copied as en.json.gz. No multilingual WordNet, bigram (PMI) or Wikipedia-title part: no package
registry ships those data (metadata/README.md).

File names are lid.176 language codes, which the matching stage routes by: wordfreq's "nb" is
written as "no", "fil" as "tl". Output: DIR/<lang>.json.gz, gzip'd JSON lists written with
mtime 0, so a rebuild is byte-identical.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import re
import zipfile
from pathlib import Path

LID_CODES = {"nb": "no", "fil": "tl"}  # wordfreq code -> fastText lid.176 label
# wordfreq lower-cases every word and matching is case-sensitive: German writes every noun
# capitalised, so its list also gets each word's capitalised form (after all lower-case ones)
CAPITALISED_NOUNS = ("de",)
UNMATCHABLE = re.compile(r"[,.;:?!`\t\n\r ]")
DIGIT = re.compile(r"\d")
CENTIBELS_PER_DECADE = 100  # wordfreq's cBpack: bucket i holds the words of frequency 10 ** (-i / 100)


def wordfreq_lists(wheel: Path) -> dict[str, tuple[str, list[list[str]]]]:
    """Per wordfreq language: (which list, its frequency buckets), the large list where there is one."""
    import msgpack

    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if re.search(r"/(large|small)_[a-z]+\.msgpack\.gz$", n)]
        chosen: dict[str, str] = {}
        for name in sorted(names):
            kind, language = Path(name).name.split(".")[0].split("_", 1)
            if kind == "large" or language not in chosen:
                chosen[language] = name
        out = {}
        for language, name in chosen.items():
            header, *buckets = msgpack.unpackb(gzip.decompress(archive.read(name)), raw=False)
            if header != {"format": "cB", "version": 1}:
                raise SystemExit(f"{name}: unknown wordfreq format {header}")
            out[language] = (Path(name).name.split("_")[0], buckets)
        return out


def unigrams(buckets: list[list[str]], min_frequency: float) -> tuple[list[str], dict[str, int]]:
    """Words at or above the frequency cut, most frequent first, and what was left out."""
    last_bucket = int(round(-CENTIBELS_PER_DECADE * math.log10(min_frequency)))
    kept, dropped = [], {"digit": 0, "no_letter": 0, "unmatchable": 0}
    for words in buckets[:last_bucket + 1]:
        for word in words:
            if DIGIT.search(word):
                dropped["digit"] += 1
            elif not any(char.isalpha() for char in word):
                dropped["no_letter"] += 1
            elif UNMATCHABLE.search(word):
                dropped["unmatchable"] += 1
            else:
                kept.append(word)
    return list(dict.fromkeys(kept)), dropped


def write_list(entries: list[str], path: Path) -> None:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=9) as handle:
        handle.write(json.dumps(entries, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordfreq", type=Path, required=True, help="the wordfreq-3.1.1 wheel")
    parser.add_argument("--english", type=Path, required=True, help="the English list (metadata/entries.json.gz)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "worldwide")
    parser.add_argument("--min-frequency", type=float, default=1e-7)
    parser.add_argument("--table", action="store_true", help="print the README's per-language table")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    english = json.loads(gzip.decompress(args.english.read_bytes()))
    write_list(english, args.out / "en.json.gz")
    rows.append(("en", "MetaCLIP list (metadata/entries.json.gz)", len(english), {}))
    for language, (kind, buckets) in sorted(wordfreq_lists(args.wordfreq).items()):
        code = LID_CODES.get(language, language)
        if code == "en":
            continue
        entries, dropped = unigrams(buckets, args.min_frequency)
        if language in CAPITALISED_NOUNS:
            entries = list(dict.fromkeys(entries + [word[:1].upper() + word[1:] for word in entries]))
        write_list(entries, args.out / f"{code}.json.gz")
        rows.append((code, f"wordfreq {kind}", len(entries), dropped))
    if args.table:
        print("| language | source | entries | left out: digit / no letter / unmatchable |\n|---|---|---|---|")
        for code, source, size, dropped in sorted(rows):
            left = " / ".join(f"{dropped[k]:,}" for k in ("digit", "no_letter", "unmatchable")) if dropped else "-"
            print(f"| `{code}` | {source} | {size:,} | {left} |")
    print(f"wrote {len(rows)} languages, {sum(r[2] for r in rows):,} entries, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
