"""A uid-hashed uniform per sample: random subsets that are the same on every engine and partitioning.

Column added: ``sample_u`` (float64 in [0, 1)) = uid_uniform(uid, seed, "sample") (curate.uid), so
``select: "sample_u < 0.1"`` is a random 10% of the pool, and a random subset of exactly n rows is the
n rows with the smallest ``sample_u`` (no two uids share one in practice: 53 random bits).
``curate evaluate`` draws its random baselines this way (one seed per training seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from curate.contract import Stage
from curate.uid import uid_uniform

ADDS = pa.schema([("sample_u", pa.float64())])


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    seed: int = 0  # the recipe's seed; another seed draws an independent subset


def reads(cfg: SampleConfig) -> tuple[str, ...]:
    return ("uid",)


def apply(table: pa.Table, cfg: SampleConfig, artifact: None = None) -> pa.Table:
    return pa.table({"sample_u": pa.array(uid_uniform(table.column("uid"), cfg.seed, "sample"), pa.float64())})


STAGE = Stage(
    name="sample",
    config=SampleConfig,
    reads=reads,
    adds=ADDS,
    apply=apply,
    summary="a uid-hashed uniform per sample (random subsets, identical on every engine)",
)
