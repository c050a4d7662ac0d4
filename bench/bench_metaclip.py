"""Benchmark: MetaCLIP matching and balancing (issue 4), ratios against baselines run in the same process.

Data: N synthetic alt-text-like captions (5-20 Zipfian words drawn from the built list's
Wikipedia unigrams, some capitalised or followed by "," or ".") and a 500k-entry list (the
built list padded with frequent 2-3 word phrases of the same vocabulary).

Measured side by side, one core unless said otherwise:
- build: curate's compiled entry list vs a pyahocorasick automaton of the spaced entries;
- matching: curate (curate.kernels.metaclip_match) on all N captions, vs (a) a naive per-entry
  substring loop of the same rule on a small sample and (b) iterating a prebuilt
  pyahocorasick automaton in Python per caption on a larger sample; match sets must be equal;
- engines: a recipe's metaclip (the metaclip_match stage: match + write; then metaclip: count
  over the matches + balance + write) on the local engine and on Spark local[CORES]: captions/s
  per core, same decisions;
- balancing 10M samples (counts, p, keep probability, uid uniform, decision; in batches of 1M
  as the engines do) and building a 5M-entry list: seconds and the peak memory they add, each
  in a fresh process.

    .venv/bin/python bench/bench_metaclip.py [--captions 1000000] [--cores 2] [--no-spark]
"""

from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from spark_session import warm_session

from curate import pipeline
from curate.kernels.balancing import keep_probability, sampling_probabilities
from curate.kernels.metaclip_match import Matcher
from curate.recipe import parse_recipe
from curate.resources import load_metadata
from curate.stages.metaclip import DEFAULT_METADATA
from curate.uid import derive_uid, uid_uniform

VOCABULARY = 50_000
ENTRIES = 500_000


def spaced(text: str) -> str:
    text = " " + text + " "
    for mark in ",.;:?!`":
        text = text.replace(mark, f" {mark} ")
    for control in "\t\n\r":
        text = text.replace(control, " ")
    return text


def zipf_ids(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** 1.07
    return rng.choice(n, size=size, p=weights / weights.sum())


def make_data(n_captions: int, seed: int = 0) -> tuple[list[str], pa.Array]:
    """(the 500k-entry list, n synthetic captions)."""
    rng = np.random.default_rng(seed)
    entries = load_metadata(DEFAULT_METADATA)
    # the Wikipedia unigrams come last in the built list, most frequent first (metadata/README.md)
    wikipedia_start = max(i for i, e in enumerate(entries) if " " in e) + 1
    words = pa.array(entries[wikipedia_start:wikipedia_start + VOCABULARY])
    have, extra = set(entries), []
    while len(entries) + len(extra) < ENTRIES:
        lengths = rng.integers(2, 4, 200_000)
        ids = zipf_ids(rng, int(lengths.sum()), 5000)
        phrases = pc.binary_join(pa.ListArray.from_arrays(np.concatenate(([0], np.cumsum(lengths))).astype(np.int32),
                                                          words.take(ids)), " ").to_pylist()
        for phrase in dict.fromkeys(phrases):
            if phrase not in have and len(entries) + len(extra) < ENTRIES:
                have.add(phrase)
                extra.append(phrase)
    variants = pa.concat_arrays([words, pc.utf8_capitalize(words), pc.binary_join_element_wise(words, ",", ""),
                                 pc.binary_join_element_wise(words, ".", "")])
    lengths = rng.integers(5, 21, n_captions)
    ids = zipf_ids(rng, int(lengths.sum()), VOCABULARY)
    variant = rng.choice(4, size=ids.size, p=[0.8, 0.12, 0.04, 0.04])
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    captions = pc.binary_join(pa.ListArray.from_arrays(offsets, variants.take(variant * VOCABULARY + ids)), " ")
    return entries + extra, captions


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def naive(texts: list[str], entries: list[str]) -> list[list[int]]:
    patterns = [(i, f" {e} ") for i, e in enumerate(entries) if e.strip()]
    first = {}
    for i, pattern in patterns:
        first.setdefault(pattern, i)
    patterns = [(i, p) for i, p in patterns if first[p] == i]
    found = []
    for text in texts:
        text = spaced(text)
        found.append([i for i, pattern in patterns if pattern in text])
    return found


def pyahocorasick_automaton(entries: list[str]):
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for i, entry in enumerate(entries):
        key = f" {entry} "
        if entry.strip() and key not in automaton:
            automaton.add_word(key, i)
    automaton.make_automaton()
    return automaton


def per_caption_automaton(texts: list[str], automaton) -> list[list[int]]:
    return [sorted({i for _, i in automaton.iter(spaced(text))}) for text in texts]


def write_pool(directory: Path, captions: pa.Array, shards: int) -> Path:
    directory.mkdir(parents=True)
    texts = captions.to_pylist()
    uids = [derive_uid(f"http://bench/{i}", t) for i, t in enumerate(texts)]
    size = -(-len(texts) // shards)
    for index in range(shards):
        rows = slice(index * size, (index + 1) * size)
        pq.write_table(pa.table({"uid": uids[rows], "text": texts[rows]}), directory / f"{index:05d}.parquet")
    return directory


def run_engine(engine: str, pool: Path, out: Path, metadata: Path, cores: int) -> tuple[pa.Table, float]:
    recipe = parse_recipe({"stages": {"metaclip": {"metadata": str(metadata)}}, "select": "true"}, "b")
    spark = None
    if engine == "spark":
        spark, session = warm_session(cores)  # started and warmed up outside the timing
        print(f"Spark session: {session}", file=sys.stderr)
    started = time.perf_counter()
    for stage, cfg in recipe.stages:  # metaclip_match (per row), then metaclip (counts, balance)
        pipeline.run_stage(stage, cfg, pool, out, engine=engine, workers=cores, spark=spark)
    seconds = time.perf_counter() - started
    if spark is not None:
        spark.stop()
    matches = pq.read_table(sorted((out / "metaclip_match").glob("part-*.parquet"))).sort_by("uid")
    decisions = pq.read_table(sorted((out / "metaclip").glob("part-*.parquet"))).sort_by("uid")
    return decisions.add_column(1, "metaclip_entries", matches.column("metaclip_entries")), seconds


def lean_inputs(samples: int, rng: np.random.Generator) -> tuple[pa.Array, pa.Array]:
    """Match lists (0-14 Zipfian ids each) and random uids for `samples` rows, built chunk by chunk."""
    offsets = np.zeros(samples + 1, dtype=np.int64)
    np.cumsum(rng.integers(0, 15, samples, dtype=np.int8), out=offsets[1:])
    cdf = np.cumsum(1.0 / np.arange(1, ENTRIES + 1) ** 1.07)
    values = np.empty(offsets[-1], dtype=np.int32)
    hex_digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    uid_chunks = []
    for start in range(0, samples, 1_000_000):
        rows = min(1_000_000, samples - start)
        lo, hi = offsets[start], offsets[start + rows]
        values[lo:hi] = np.searchsorted(cdf, rng.random(hi - lo) * cdf[-1])
        data = hex_digits[rng.integers(0, 16, rows * 32, dtype=np.uint8)]
        uid_offsets = pa.py_buffer((np.arange(rows + 1, dtype=np.int32) * 32).tobytes())
        uid_chunks.append(pa.StringArray.from_buffers(rows, uid_offsets, pa.py_buffer(data.tobytes())))
    return pa.LargeListArray.from_arrays(offsets, values), pa.chunked_array(uid_chunks)


def balance_in_batches(matches: pa.Array, uids: pa.Array, batch: int) -> int:
    """What fit + apply do for balancing (matching excluded): count, p, then keep per batch."""
    counts = np.zeros(ENTRIES, dtype=np.int64)
    for start in range(0, len(matches), batch):
        counts += np.bincount(matches.slice(start, batch).flatten().to_numpy(), minlength=ENTRIES)
    p = sampling_probabilities(counts, 20000)
    kept = 0
    for start in range(0, len(matches), batch):
        probability = keep_probability(matches.slice(start, batch), p)
        kept += int((uid_uniform(uids.slice(start, batch), 0, "metaclip") < probability).sum())
    return kept


def _peak_rss_job(job: str, arg: int, queue) -> None:
    if job == "balance":
        matches, uids = lean_inputs(arg, np.random.default_rng(1))
        result = {"samples": arg, "batch": 1_000_000, "input_mb": round((matches.nbytes + uids.nbytes) / 2**20)}
        tracemalloc.start()  # numpy allocations are traced; the inputs were made before
        before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
        result["kept"] = balance_in_batches(matches, uids, 1_000_000)
        result["peak_traced_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20)
    else:
        entries = [f"entry {i}" if i % 3 else f"w{i}" for i in range(arg)]
        before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
        result = {"entries": arg, "tokens": len(Matcher(entries).token_index)}
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["peak_rss_increase_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    queue.put(result)


def in_fresh_process(job: str, arg) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_rss_job, args=(job, arg, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--naive-sample", type=int, default=30)
    parser.add_argument("--automaton-sample", type=int, default=100_000)
    parser.add_argument("--no-spark", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-metaclip-"))
    atexit.register(shutil.rmtree, work, True)  # GBs of scratch: gone when the run ends
    entries, captions = make_data(args.captions)
    metadata = work / "entries.json"
    metadata.write_text(json.dumps(entries))
    report: dict = {"captions": args.captions, "entries": len(entries), "cores": args.cores}

    matcher, build_s = timed(lambda: Matcher(load_metadata(metadata)))
    automaton, automaton_build_s = timed(pyahocorasick_automaton, entries)
    report["build_seconds"] = {"curate": round(build_s, 2), "pyahocorasick": round(automaton_build_s, 2)}

    ours, ours_s = timed(matcher.match, captions)
    ours_rate = args.captions / ours_s
    mean_matches = len(ours.flatten()) / args.captions
    sample = captions.slice(0, args.automaton_sample).to_pylist()
    by_automaton, automaton_s = timed(per_caption_automaton, sample, automaton)
    assert by_automaton == ours.slice(0, len(sample)).to_pylist(), "pyahocorasick disagrees"
    few = sample[:args.naive_sample]
    by_naive, naive_s = timed(naive, few, entries)
    assert by_naive == ours.slice(0, len(few)).to_pylist(), "the naive loop disagrees"
    automaton_rate, naive_rate = len(sample) / automaton_s, len(few) / naive_s
    report["matching_1_core"] = {
        "mean_matches_per_caption": round(mean_matches, 2),
        "curate_captions_per_s": round(ours_rate),
        "baseline_b_pyahocorasick_per_caption": round(automaton_rate),
        "baseline_a_naive_per_entry_loop": round(naive_rate, 1),
        "speedup_vs_b": round(ours_rate / automaton_rate, 2), "speedup_vs_a": round(ours_rate / naive_rate),
        "identical_match_sets": True,
    }

    pool = write_pool(work / "pool", captions, args.shards)
    expected = pa.table({"uid": pq.read_table(pool, columns=["uid"]).column("uid"),
                         "m": matcher.match(pq.read_table(pool, columns=["text"]).column("text"))}).sort_by("uid")
    engines = {}
    for engine in ("local",) + (() if args.no_spark else ("spark",)):
        table, seconds = run_engine(engine, pool, work / engine, metadata, args.cores)
        assert table.column("metaclip_entries").equals(expected.column("m")), f"{engine} match sets differ"
        engines[engine] = table
        rate = args.captions / seconds
        report[f"stage_{engine}"] = {"seconds": round(seconds, 1), "captions_per_s_per_core": round(rate / args.cores),
                                     "per_core_vs_b": round(rate / args.cores / automaton_rate, 2),
                                     "kept": int(pc.sum(table.column("metaclip_keep")).as_py())}
    if "spark" in engines:
        assert engines["spark"].equals(engines["local"]), "local and Spark decisions differ"
        report["local_equals_spark"] = True
    report["balance_10M"] = in_fresh_process("balance", 10_000_000)
    report["build_5M_entries"] = in_fresh_process("build", 5_000_000)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
