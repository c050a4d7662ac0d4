"""Where the data files that ship with curate (metadata/) are found.

The files live in the repository's top-level ``metadata/``. A wheel installs them as data
files under ``<prefix>/share/curate/metadata/`` (pyproject.toml, ``data-files``), so a
plain ``pip install`` finds them too. Order searched, first hit wins:

1. ``$CURATE_METADATA_DIR`` (a user's own copy);
2. the source tree: ``metadata/`` next to the ``curate`` package (a checkout, ``pip install -e``);
3. ``<prefix>/share/curate/metadata`` for the running interpreter's prefix (a wheel install).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent.parent / "metadata"


def metadata_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("CURATE_METADATA_DIR"):
        dirs.append(Path(os.environ["CURATE_METADATA_DIR"]))
    dirs.append(SOURCE_DIR)
    for prefix in dict.fromkeys([sysconfig.get_path("data"), sys.prefix, sys.base_prefix]):
        dirs.append(Path(prefix) / "share" / "curate" / "metadata")
    return dirs


def metadata_path(name: str) -> str:
    """The first of :func:`metadata_dirs` holding ``name``.

    When none does, the source-tree path is returned, so the error a stage raises on reading
    it names a concrete file; ``curate`` also says where it looked (``missing_metadata``).
    """
    for directory in metadata_dirs():
        if (directory / name).is_file():
            return str(directory / name)
    return str(SOURCE_DIR / name)


def resolve_metadata(path: str) -> str:
    """A metadata path as given when it is a file; a bare file name (no directory) that is not a
    file here is looked up in :func:`metadata_dirs` (so a recipe can say ``demo_concepts.txt``)."""
    if Path(path).is_file() or Path(path).name != path:
        return path
    return metadata_path(path)


def missing_metadata(path: str | Path) -> str:
    """A message for a metadata file that is not there, naming every place searched."""
    looked = ", ".join(str(d) for d in metadata_dirs())
    return (f"{path}: no such metadata file (looked in {looked}; set CURATE_METADATA_DIR or "
            f"pass the file in the stage config)")
