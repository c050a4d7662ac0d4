"""A wheel install (not editable) finds the shipped metadata files."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from curate import resources

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_wheel_install_finds_the_metadata_outside_the_source_tree(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "wheel").glob("curate-*.whl"))
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, cwd=tmp_path)
    # the new venv borrows this one's dependencies (a plain path entry: the editable curate's
    # finder is not loaded, so `import curate` is the wheel's copy)
    site = next((target / "lib").glob("python*/site-packages"))
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "pyarrow").is_dir())
    (site / "zz_deps.pth").write_text(deps + "\n")
    probe = ("import curate, curate.stages.metaclip as m, curate.stages.text_based as t; "
             "print(curate.__file__); print(m.DEFAULT_METADATA); print(t.DEFAULT_TABLE)")
    lines = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True,
                           cwd=tmp_path).stdout.split()
    assert lines[0].startswith(str(site))
    share = target / "share" / "curate" / "metadata"
    assert lines[1:] == [str(share / "entries.json.gz"), str(share / "text_based.json.gz")]
    assert (share / "entries.json.gz").read_bytes() == (ROOT / "metadata" / "entries.json.gz").read_bytes()


def test_environment_variable_comes_first_and_a_missing_file_names_where_it_looked(tmp_path, monkeypatch):
    (tmp_path / "entries.json.gz").write_bytes(b"")
    monkeypatch.setenv("CURATE_METADATA_DIR", str(tmp_path))
    assert resources.metadata_path("entries.json.gz") == str(tmp_path / "entries.json.gz")
    assert resources.metadata_path("text_based.json.gz") == str(resources.SOURCE_DIR / "text_based.json.gz")
    assert resources.metadata_path("nope.json") == str(resources.SOURCE_DIR / "nope.json")
    message = resources.missing_metadata("/x/nope.json")
    assert "/x/nope.json" in message and str(tmp_path) in message and "CURATE_METADATA_DIR" in message


def test_metaclip_with_a_missing_metadata_file_says_so(tmp_path):
    from curate.errors import RecipeError
    from curate.stages.metaclip import MetaclipConfig

    with pytest.raises(RecipeError, match="nope.json.*CURATE_METADATA_DIR"):  # when the recipe is read
        MetaclipConfig(metadata=str(tmp_path / "nope.json"))
