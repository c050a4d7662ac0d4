"""Shared fixtures: tiny generated pools in tmp_path, and one Spark session per test run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import write_pool


@pytest.fixture(autouse=True, scope="session")
def pool_check_cache(tmp_path_factory):
    """The machine-wide pool-check cache (curate.pipeline.pool_check_cache) in this run's scratch,
    not the user's ~/.cache (subprocesses inherit it)."""
    os.environ["CURATE_POOL_CHECK_CACHE"] = str(tmp_path_factory.mktemp("pool-checks"))


@pytest.fixture
def tiny_pool(tmp_path: Path) -> Path:
    return write_pool(tmp_path / "pool", [40, 0, 35, 25])


@pytest.fixture(scope="session")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from curate.engines.spark import get_spark

    session = get_spark("local[2]", app="curate-tests")
    yield session
    session.stop()
