"""The command line: help that explains, errors that name the file, exit codes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.cli import main

CURATE = str(Path(sys.executable).parent / "curate")


def test_help_lists_every_command():
    result = subprocess.run([CURATE, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("run", "basic", "laion2b", "align", "subset", "ingest", "import-datacomp", "demo", "report"):
        assert command in result.stdout


def test_stage_command_writes_its_columns_and_subset_selects(tiny_pool, tmp_path):
    out = tmp_path / "out"
    assert main(["basic", "--pool", str(tiny_pool), "--out", str(out), "--workers", "1"]) == 0
    assert main(["align", "--pool", str(tiny_pool), "--out", str(out), "--workers", "1", "--set", "min_side=100"]) == 0
    assert main(["subset", "--pool", str(tiny_pool), "--out", str(out), "--select", "basic_keep AND align_keep"]) == 0
    basic = pq.read_table(sorted((out / "basic").glob("part-*.parquet")))
    align = pq.read_table(sorted((out / "align").glob("part-*.parquet")))
    keep = dict(zip(basic["uid"].to_pylist(), basic["basic_keep"].to_pylist()))
    keep_align = dict(zip(align["uid"].to_pylist(), align["align_keep"].to_pylist()))
    expected = sorted(u for u in keep if keep[u] and keep_align[u])
    subset = np.load(out / "subset.npy")
    assert [f"{a:016x}{b:016x}" for a, b in subset.tolist()] == expected


def test_errors_exit_2_with_the_file_named(tmp_path, capsys):
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "00000.parquet").write_bytes(b"PAR1 not really")
    assert main(["basic", "--pool", str(tmp_path / "pool"), "--out", str(tmp_path / "out")]) == 2
    assert "00000.parquet: not a readable parquet file" in capsys.readouterr().err
    assert main(["run", "jobs/recipes/demo.yaml", "--pool", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "pool directory does not exist" in capsys.readouterr().err
    assert main(["basic", "--pool", str(tmp_path / "pool"), "--out", str(tmp_path / "o"), "--set", "bogus=1"]) == 2
    assert "unknown key(s) ['bogus']" in capsys.readouterr().err


def test_file_urls_are_local_paths(tiny_pool, tmp_path, capsys):
    recipe = tmp_path / "basic.yaml"
    recipe.write_text("stages:\n  basic: {}\nselect: basic_keep\n")
    out = tmp_path / "out dir"
    assert main(["run", recipe.as_uri(), "--pool", tiny_pool.as_uri(), "--out", out.as_uri(), "--workers", "1"]) == 0
    assert (out / "subset.npy").is_file()  # "out%20dir" decoded
    with pytest.raises(SystemExit) as refused:
        main(["run", str(recipe), "--pool", "file://elsewhere/pool", "--out", str(tmp_path / "o")])
    assert refused.value.code == 2
    assert "a file:// URL must name this machine" in capsys.readouterr().err
