"""Engines run a stage over a pool: ``local`` (pyarrow/polars + a process pool, the default)
and ``spark`` (Spark DataFrames). Both write the same uid-keyed columns under OUT/<stage>/.

What they share lives in ``curate.engines.plan``: where each input column comes from, the
stage fingerprint that decides whether earlier output can be reused, artifact files.
"""

ENGINES = ("local", "spark")
