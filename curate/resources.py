"""Where the data files that ship with curate (metadata/) are found.

The files live in the repository's top-level ``metadata/``. A wheel installs them as data
files under ``<prefix>/share/curate/metadata/`` (pyproject.toml, ``data-files``), so a
plain ``pip install`` finds them too. Order searched, first hit wins:

1. ``$CURATE_METADATA_DIR`` (a user's own copy);
2. the source tree: ``metadata/`` next to the ``curate`` package (a checkout, ``pip install -e``);
3. ``<prefix>/share/curate/metadata`` for the running interpreter's prefix (a wheel install).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

from curate.errors import RecipeError
from curate.fingerprint import file_sha256

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
        if (directory / name).exists():  # a list, or a directory of per-language lists
            return str(directory / name)
    return str(SOURCE_DIR / name)


def resolve_metadata(path: str) -> str:
    """A metadata path as given when it is a file; a bare file name (no directory) that is not a
    file here is looked up in :func:`metadata_dirs` (so a recipe can say ``demo_concepts.txt``)."""
    if Path(path).exists() or Path(path).name != path:
        return path
    return metadata_path(path)


def missing_metadata(path: str | Path) -> str:
    """A message for a metadata file that is not there, naming every place searched."""
    looked = ", ".join(str(d) for d in metadata_dirs())
    return (f"{path}: no such metadata file (looked in {looked}; set CURATE_METADATA_DIR or "
            f"pass the file in the stage config)")


def load_metadata(path: str | Path) -> list[str]:
    """Entries from a JSON list of strings (.json, .json.gz) or a text file with one per line.

    In a text file the lines are split on "\\n" and a trailing "\\r" (CRLF files) is removed;
    a final newline does not add an entry. Nothing else is stripped: ids are positions.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(missing_metadata(path))
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RecipeError(f"{path}: metadata is not UTF-8 (byte {error.start}: {raw[error.start:error.start + 8]!r})") from None
    if path.name.endswith((".json", ".json.gz")):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as error:
            raise RecipeError(f"{path}: not a JSON list of strings ({error})") from None
        if not isinstance(entries, list):
            raise RecipeError(f"{path}: expected a JSON list of strings, got {type(entries).__name__}")
        bad = next((i for i, e in enumerate(entries) if not isinstance(e, str)), None)
        if bad is not None:
            raise RecipeError(f"{path}: entry {bad} is {entries[bad]!r}, not a string")
        return entries
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


LANGUAGE_SUFFIXES = (".json", ".json.gz", ".txt", ".txt.gz")


def language_metadata_files(path: str | Path) -> dict[str, Path]:
    """Per-language metadata files: a directory holding ``<lang>.json[.gz]`` or ``<lang>.txt[.gz]``
    (MetaCLIP 2's one file per language; other files, e.g. a README, are ignored), or one JSON
    file holding an object {lang: [entries]} (returned as {"*": path})."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(missing_metadata(path))
    if path.is_file():
        return {"*": path}
    files: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        if not file.is_file() or not file.name.endswith(LANGUAGE_SUFFIXES):
            continue
        language = file.name.split(".")[0]
        if language in files:
            raise RecipeError(f"{path}: two metadata files for language {language!r}: {files[language].name}, {file.name}")
        files[language] = file
    if not files:
        raise RecipeError(f"{path}: no per-language metadata files (<lang>.json, .json.gz, .txt or .txt.gz)")
    return files


def load_language_metadata(path: str | Path) -> dict[str, list[str]]:
    """{language: entries}, languages in sorted order (see ``language_metadata_files``)."""
    files = language_metadata_files(path)
    if "*" not in files:
        return {language: load_metadata(file) for language, file in files.items()}
    file = files["*"]
    raw = file.read_bytes()
    try:
        table = json.loads(gzip.decompress(raw) if file.suffix == ".gz" else raw)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise RecipeError(f"{file}: not a JSON object of per-language lists ({error})") from None
    if not isinstance(table, dict):
        raise RecipeError(f"{file}: expected a JSON object {{language: [entries]}} or a directory of "
                          f"per-language files, got {type(table).__name__}")
    for language, entries in table.items():
        if not isinstance(entries, list) or any(not isinstance(e, str) for e in entries):
            raise RecipeError(f"{file}: language {language!r}: expected a list of strings")
    return {language: table[language] for language in sorted(table)}


def language_metadata_digest(path: str | Path) -> str:
    """One sha256 over per-language metadata (file names and contents): editing a list re-runs."""
    sha = hashlib.sha256()
    for language, file in language_metadata_files(path).items():
        sha.update(f"{language}:{file.name}:{file_sha256(file)}\n".encode())
    return sha.hexdigest()
