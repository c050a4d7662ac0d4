"""Benchmark: MetaCLIP 2 worldwide matching (issue 16) against English-only matching, same run.

Data: N synthetic alt-texts in a web crawl's language mix (Common Crawl's: about half English,
then ru, de, zh, ja, es, fr ...; 3% in languages with no list), each 5-15 words drawn Zipfian from
the language's shipped list (metadata/worldwide; English from the 384k MetaCLIP list), joined
without spaces for zh and ja; some capitalised or followed by "," or ".".

Measured on one core, side by side:
- English-only: the metaclip_match stage's work (MetaCLIP's rule against the English list) on
  all N captions; and English-only curation as it is usually run, language ID + that matching;
- language ID alone (lid.176 top-1 with its probability);
- worldwide: the metaclip_worldwide_match stage's work (language ID, routing, per-language
  matching, the spaceless rule) on all N captions, matchers already built;
- the recipe's two stages (metaclip_worldwide_match, metaclip_worldwide) on the local engine and
  on Spark local[CORES]: captions/s per core, identical decisions;
- in a fresh process: seconds and peak RSS to load all lists and build every language's matcher.

    .venv/bin/python bench/bench_worldwide.py [--captions 1000000] [--cores 2] [--no-spark]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_metaclip import write_pool  # the same pool layout as the English bench (bench/ is on sys.path)

from curate import pipeline
from curate.kernels.metaclip_match import Matcher
from curate.kernels.worldwide_match import Languages
from curate.recipe import parse_recipe
from curate.resources import load_language_metadata, load_metadata, metadata_path
from curate.stages import metaclip_worldwide_match

# a web crawl's language mix (Common Crawl's published statistics, rounded); "xx": languages without a list
MIX = {"en": 46, "ru": 6, "de": 6, "zh": 5, "ja": 5, "es": 4.5, "fr": 4.5, "it": 2.5, "pt": 2.3, "pl": 2,
       "nl": 2, "tr": 1, "cs": 1, "vi": 1, "id": 1, "sv": 0.8, "fa": 0.7, "ar": 0.7, "uk": 0.6, "ko": 0.6,
       "hu": 0.6, "ro": 0.5, "el": 0.5, "da": 0.4, "fi": 0.4, "no": 0.4, "he": 0.2, "bg": 0.2, "sk": 0.2, "xx": 3}
SPACELESS = ("zh", "ja")


def make_captions(n: int, lists: dict[str, list[str]], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    names = list(MIX)
    weights = np.array([MIX[name] for name in names], dtype=np.float64)
    chosen = rng.choice(len(names), size=n, p=weights / weights.sum())
    texts = []
    vocabularies = {name: lists[name][:50_000] for name in names if name != "xx"}
    for index in chosen:
        name = names[index]
        if name == "xx":
            # Thai, Armenian, Georgian: no list among the shipped ones
            texts.append(" ".join(rng.choice(["หนึ่งแมว", "แมวสีดำ", "կատու", "ძაღლი", "ბავშვი"], 6)))
            continue
        words = vocabularies[name]
        ranks = np.minimum(rng.zipf(1.3, rng.integers(5, 16)), len(words)) - 1
        picked = [words[rank] for rank in ranks]
        if rng.random() < 0.3:
            picked[0] = picked[0][:1].upper() + picked[0][1:]
        if rng.random() < 0.3:
            picked[len(picked) // 2] += str(rng.choice([",", "."]))
        texts.append(("" if name in SPACELESS else " ").join(picked))
    return texts


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def english_only(texts: pa.Array, matcher: Matcher) -> pa.Array:
    return matcher.match(texts)


def lid_then_english(texts: pa.Array, matcher: Matcher) -> pa.Array:
    language, _ = metaclip_worldwide_match.identify(texts)
    return matcher.match(texts.filter(pa.compute.equal(language, "en")))


def worldwide(texts: pa.Array, languages: Languages) -> pa.Array:
    language, _ = metaclip_worldwide_match.identify(texts)
    return languages.route(texts, language)


def run_engine(engine: str, pool: Path, out: Path, cores: int, t_en: int) -> tuple[pa.Table, float]:
    recipe = parse_recipe({"stages": {"metaclip_worldwide": {"t_en": t_en}}, "select": "true"}, "b")
    spark = None
    if engine == "spark":
        from curate.engines.spark import get_spark

        spark = get_spark(f"local[{cores}]")
        spark.range(1).count()  # start the JVM outside the timing
    started = time.perf_counter()
    for stage, cfg in recipe.stages:
        pipeline.run_stage(stage, cfg, pool, out, engine=engine, workers=cores, spark=spark)
    seconds = time.perf_counter() - started
    if spark is not None:
        spark.stop()
    return pq.read_table(sorted((out / "metaclip_worldwide").glob("part-*.parquet"))).sort_by("uid"), seconds


def _load_all(queue) -> None:
    started = time.perf_counter()
    languages = Languages(load_language_metadata(metadata_path("worldwide")))
    loaded = time.perf_counter() - started
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for name in languages.languages:
        languages.matcher(name)
    queue.put({"languages": len(languages.languages), "entries": languages.size, "load_s": round(loaded, 1),
               "build_s": round(time.perf_counter() - started - loaded, 1), "rss_loaded_mb": round(rss_loaded),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})


def memory_of_all_tables() -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_load_all, args=(queue,))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--no-spark", action="store_true")
    args = parser.parse_args()

    lists = load_language_metadata(metadata_path("worldwide"))
    texts = make_captions(args.captions, lists)
    array = pa.array(texts, pa.string())
    n = len(texts)
    print(f"{n:,} captions; {len(lists)} languages, {sum(map(len, lists.values())):,} entries")

    memory = memory_of_all_tables()
    print(f"all lists loaded and every matcher built, fresh process: load {memory['load_s']} s, build "
          f"{memory['build_s']} s, peak RSS {memory['peak_rss_mb']} MB (lists alone {memory['rss_loaded_mb']} MB)")

    english = Matcher(load_metadata(metadata_path("entries.json.gz")))
    languages = Languages(lists)
    for name in languages.languages:
        languages.matcher(name)
    english_matches, english_s = timed(english_only, array, english)
    _, lid_s = timed(metaclip_worldwide_match.identify, array)
    _, lid_english_s = timed(lid_then_english, array, english)
    world_matches, world_s = timed(worldwide, array, languages)
    matched_en = sum(1 for m in english_matches.to_pylist() if m)
    matched_world = sum(1 for m in world_matches.to_pylist() if m)
    print("one core, captions/s (matchers built):")
    print(f"  English-only matching (metaclip_match)      {n / english_s:>10,.0f}   ({matched_en:,} matched)")
    print(f"  language ID alone (lid.176 + probability)    {n / lid_s:>10,.0f}")
    print(f"  language ID + English-only matching          {n / lid_english_s:>10,.0f}")
    print(f"  worldwide (language ID + routed matching)    {n / world_s:>10,.0f}   ({matched_world:,} matched)")
    print(f"  worldwide / English-only matching: {world_s / english_s:.2f}x the time; "
          f"/ language ID + English matching: {world_s / lid_english_s:.2f}x")

    work = Path(tempfile.mkdtemp(prefix="bench-worldwide-"))
    try:
        pool = write_pool(work / "pool", array, shards=8)
        t_en = max(1, round(20_000 * n / 400e6))  # MetaCLIP's t = 20,000 at 400M, scaled to this pool
        local, local_s = run_engine("local", pool, work / "local", args.cores, t_en)
        line = f"engines ({args.cores} cores), both stages, captions/s per core: local {n / local_s / args.cores:,.0f}"
        if not args.no_spark:
            spark, spark_s = run_engine("spark", pool, work / "spark", args.cores, t_en)
            assert spark.equals(local), "Spark and local decisions differ"
            line += f", Spark local[{args.cores}] {n / spark_s / args.cores:,.0f} (Spark/local {spark_s / local_s:.2f}x; " \
                    f"identical decisions)"
        kept = sum(local.column("metaclip_worldwide_keep").to_pylist())
        print(line + f"; t_en {t_en}, kept {kept:,} of {n:,}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
