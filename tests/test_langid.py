"""Language identification (curate.models.langid): fastText lid.176 and CLD3, from installed wheels."""

from __future__ import annotations

from curate.models import langid
from curate.models.langid import cld3_language, fasttext_top1

SENTENCES = {
    "en": "The quick brown fox jumps over the lazy dog near the river bank",
    "de": "Der schnelle braune Fuchs springt über den faulen Hund am Flussufer",
    "fr": "Le renard brun rapide saute par-dessus le chien paresseux près de la rivière",
    "es": "El rápido zorro marrón salta sobre el perro perezoso cerca del río",
}


def test_model_ships_in_the_wheel():
    path = langid.fasttext_model_path()
    assert path.name == "lid.176.ftz" and path.is_file()
    assert langid._fasttext() is langid._fasttext()  # loaded once per process
    assert langid._cld3() is langid._cld3()


def test_fasttext_labels_are_iso_codes():
    assert fasttext_top1(list(SENTENCES.values())) == ["en", "de", "fr", "es"]
    assert fasttext_top1([None, SENTENCES["de"], None]) == [None, "de", None]
    assert fasttext_top1([]) == []


def test_fasttext_sees_newlines_as_spaces():
    german_line, english_line = SENTENCES["de"][:24], SENTENCES["en"] + " " + SENTENCES["en"]
    with_newline = fasttext_top1([german_line + "\n" + english_line])
    assert with_newline == fasttext_top1([german_line + " " + english_line]) == ["en"]
    assert langid.fasttext_lines(["a\nb", "c"]) == ["a b\n", "c\n"]


def test_fasttext_labels_every_caption_even_one_word_or_blank():
    # without the line end fastText's predict adds, these would get no label at all
    assert fasttext_top1(["dog", "", "   "]) == ["en", "en", "en"]


def test_fasttext_survives_control_characters_and_huge_text():
    texts = ["\r", "\x00", "\x00" * 1000, "\t\v\f", "\n" * 1000, "a photo\rof a dog", "x" * 1_000_000,
             "a photo of a dog " * 58_824, "\ud800 a photo of a dog"]
    labels = fasttext_top1(texts)
    assert all(isinstance(label, str) and label for label in labels)
    assert labels[5] == labels[7] == labels[8] == "en"
    # NUL and CR separate words inside fastText: the same as a space
    assert fasttext_top1([SENTENCES["de"] + "\x00" + SENTENCES["en"]]) == fasttext_top1(
        [SENTENCES["de"] + " " + SENTENCES["en"]])


def test_cld3_settings_are_datacomps():
    assert (langid.CLD3_MIN_NUM_BYTES, langid.CLD3_MAX_NUM_BYTES) == (0, 1000)


def test_cld3_languages():
    assert cld3_language(list(SENTENCES.values())) == ["en", "de", "fr", "es"]
    assert cld3_language([None, SENTENCES["fr"]]) == [None, "fr"]


def test_cld3_reads_past_nul_and_newline():
    german, english = "Das ist ein schönes Haus am See", "this is a photo of a big dog on the beach with people"
    # gcld3 alone stops at the NUL and answers "de" from the prefix
    assert cld3_language([german + "\x00 " + english]) == cld3_language([german + "  " + english]) == ["en"]
    assert cld3_language([english.replace(" ", "\n")]) == cld3_language([english]) == ["en"]


def test_cld3_survives_huge_and_odd_text():
    labels = cld3_language(["", "\x00", "x" * 1_000_000, "\ud800 a photo of a dog"])
    assert all(isinstance(label, str) and label for label in labels)
