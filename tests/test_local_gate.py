"""The local gate's maths on fixed probability arrays, and what a site's format is learnt
from: pure functions, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scrapy_capsolver_ocr.engines.local.formats import (
    DEFAULT_CHARS,
    LEARN_AFTER,
    SiteFormats,
    site_of,
)
from scrapy_capsolver_ocr.engines.local.gate import (
    SECOND_OPINION_ABOVE,
    SECOND_OPINION_BELOW,
    Alphabet,
    Reading,
    passes,
    read_best_path,
    second_opinion,
    softmax,
    wants_second_opinion,
)

# A charset shaped like ddddocr's: the blank first, both cases of letters, digits, and a
# CJK character that noise is often read as.
CHARSET = ["", "a", "A", "b", "B", "1", "中"]
COLUMN = {char: index for index, char in enumerate(CHARSET)}


def frames(*rows: dict[str, float]) -> np.ndarray:
    """Probabilities, one row per frame; what a row does not name is left at 0."""
    array = np.zeros((len(rows), len(CHARSET)))
    for frame, row in enumerate(rows):
        for char, probability in row.items():
            array[frame, COLUMN[char]] = probability
    return array


BLANK = {"": 1.0}


def test_split_cases_fold_into_one_sure_character() -> None:
    # The model is sure of the letter, unsure of its case: 0.5 each.
    probabilities = frames(BLANK, {"a": 0.5, "A": 0.5}, BLANK, {"b": 0.45, "B": 0.45, "": 0.1})
    reading = read_best_path(probabilities, Alphabet(CHARSET, "ab"))

    assert reading.text == "ab"
    assert reading.confidence == pytest.approx(1.0 * 1.0 * 1.0 * 0.9)
    # What the unfolded per-character product would have said: 0.5 * 0.45.
    assert max(probabilities[1]) * max(probabilities[3]) == pytest.approx(0.225)


def test_best_path_score_is_the_product_over_frames_of_the_top_probability() -> None:
    probabilities = frames(
        {"": 0.8, "a": 0.2},
        {"b": 0.7, "": 0.3},
        {"b": 0.6, "": 0.4},
        {"": 0.9, "1": 0.1},
    )
    reading = read_best_path(probabilities, Alphabet(CHARSET, "ab1"))

    assert reading == Reading("b", pytest.approx(0.8 * 0.7 * 0.6 * 0.9))


def test_repeats_collapse_and_a_blank_separates_double_letters() -> None:
    probabilities = frames(
        {"a": 1.0}, {"a": 1.0}, BLANK, {"a": 1.0}, {"b": 1.0}, {"b": 1.0}, BLANK, {"1": 1.0}
    )
    assert read_best_path(probabilities, Alphabet(CHARSET, "ab1")).text == "aab1"


def test_probability_outside_the_alphabet_is_doubt_not_renormalised() -> None:
    # The model thinks the third frame is a CJK character; restricted to "ab1", "1" wins
    # that frame with its own 0.3, which is what the score keeps.
    probabilities = frames({"a": 0.9, "": 0.1}, BLANK, {"中": 0.65, "1": 0.3, "": 0.05})
    restricted = read_best_path(probabilities, Alphabet(CHARSET, "ab1"))
    unrestricted = read_best_path(probabilities, Alphabet(CHARSET))

    assert restricted.text == "a1"
    assert restricted.confidence == pytest.approx(0.9 * 1.0 * 0.3)
    assert unrestricted.text == "a中"
    assert unrestricted.confidence == pytest.approx(0.9 * 0.65)


def test_spelling_follows_the_alphabet_else_the_likelier_case() -> None:
    probabilities = frames({"a": 0.7, "A": 0.3}, BLANK, {"B": 0.6, "b": 0.4})

    assert read_best_path(probabilities, Alphabet(CHARSET, "AB")).text == "AB"
    assert read_best_path(probabilities, Alphabet(CHARSET, "ab")).text == "ab"
    # Both cases allowed (or no alphabet): the case the model preferred at that frame.
    assert read_best_path(probabilities, Alphabet(CHARSET, "aAbB")).text == "aB"
    assert read_best_path(probabilities, Alphabet(CHARSET)).text == "aB"


def test_a_character_spelt_from_its_surest_frame() -> None:
    # One run of "b" over three frames; its case is taken where it peaks.
    probabilities = frames({"b": 0.5, "B": 0.4}, {"B": 0.9, "b": 0.05}, {"b": 0.6, "B": 0.3})
    assert read_best_path(probabilities, Alphabet(CHARSET)).text == "B"


def test_alphabet_characters_the_charset_lacks_are_never_read() -> None:
    alphabet = Alphabet(CHARSET, "az")
    assert alphabet.size == 1
    probabilities = frames({"a": 0.9, "": 0.1})
    assert read_best_path(probabilities, alphabet).text == "a"


def test_no_text_has_no_confidence() -> None:
    assert read_best_path(frames(BLANK, BLANK), Alphabet(CHARSET, "ab")) == Reading("", 0.0)
    assert read_best_path(np.zeros((0, len(CHARSET))), Alphabet(CHARSET)) == Reading("", 0.0)


def test_softmax_of_the_model_output() -> None:
    logits = np.array([[[0.0, math.log(3.0)]], [[5.0, 5.0]]])  # frames x 1 x classes
    probabilities = softmax(logits)
    assert probabilities.shape == (2, 2)
    assert probabilities[0] == pytest.approx([0.25, 0.75])
    assert probabilities[1] == pytest.approx([0.5, 0.5])
    # Large logits do not overflow.
    assert softmax(np.array([[1000.0, 0.0]])) == pytest.approx(np.array([[1.0, 0.0]]))


@pytest.mark.parametrize(
    ("reading", "lengths", "threshold", "expected"),
    [
        (Reading("ab1b", 0.8), {4}, 0.7, True),
        (Reading("ab1b", 0.7), {4}, 0.7, True),  # the threshold itself passes
        (Reading("ab1b", 0.69), {4}, 0.7, False),
        (Reading("ab1", 0.99), {4}, 0.7, False),  # a dropped character
        (Reading("ab1", 0.99), {3, 4}, 0.7, True),
        (Reading("ab1", 0.99), None, 0.7, True),  # no length known: not checked
        (Reading("", 1.0), None, 0.0, False),
    ],
)
def test_gate(reading: Reading, lengths: set[int] | None, threshold: float, expected: bool) -> None:
    assert passes(reading, lengths, threshold) is expected


# What a site's captchas look like


@pytest.mark.parametrize(
    ("first", "wanted"),
    [
        (Reading("AB12", SECOND_OPINION_BELOW), True),
        (Reading("AB12", 0.5), True),
        (Reading("AB12", SECOND_OPINION_ABOVE - 1e-9), True),
        (Reading("AB12", SECOND_OPINION_ABOVE), False),  # sure enough alone
        (Reading("AB12", SECOND_OPINION_BELOW - 1e-9), False),  # hopeless alone
        (Reading("", 0.5), False),  # nothing to agree on
    ],
)
def test_only_unsure_readings_want_a_second_opinion(first: Reading, wanted: bool) -> None:
    assert wants_second_opinion(first) is wanted


def test_when_the_models_agree_the_surer_one_stands() -> None:
    revised = second_opinion(Reading("Ab12", 0.6), Reading("aB12", 0.8))
    assert revised == Reading("Ab12", 0.8)  # the first model's spelling; sites ignore case
    assert second_opinion(Reading("AB12", 0.6), Reading("AB12", 0.3)) == Reading("AB12", 0.6)


def test_a_disagreeing_second_model_takes_its_share_of_the_confidence() -> None:
    revised = second_opinion(Reading("AB12", 0.6), Reading("AB17", 0.75))
    assert revised == Reading("AB12", pytest.approx(0.6 * 0.25))
    # A second model that read nothing leaves the first reading as it was.
    assert second_opinion(Reading("AB12", 0.6), Reading("", 0.0)) == Reading("AB12", 0.6)


def test_the_revised_confidence_stays_a_probability() -> None:
    for c1 in (0.0, 0.2, 0.5, 0.89, 1.0):
        for c2 in (0.0, 0.3, 1.0):
            for second in ("AB12", "XY"):
                confidence = second_opinion(Reading("AB12", c1), Reading(second, c2)).confidence
                assert 0.0 <= confidence <= 1.0


def test_site_is_the_origin_of_the_page_else_of_the_image() -> None:
    assert site_of("https://Shop.example:8443/login?x=1", "https://cdn.example/c.png") == (
        "https://shop.example:8443"
    )
    assert site_of(None, "http://127.0.0.1:8080/captcha.png") == "http://127.0.0.1:8080"
    assert site_of(None, "'#captcha' on data:") == ""


def test_format_learnt_from_accepted_answers_only_after_enough_of_them() -> None:
    formats = SiteFormats()
    site = "http://site"
    assert formats.expected(site).lengths is None
    assert formats.expected(site).alphabet == DEFAULT_CHARS
    for number, text in enumerate(["AB12", "CD34", "EF56", "GH7"]):
        formats.answered(f"sha{number}", site)
        formats.accepted(f"sha{number}", text)
        learnt = number + 1
        expected = formats.expected(site)
        if learnt < LEARN_AFTER:
            assert expected.lengths is None
        else:
            assert expected.lengths is not None and 4 in expected.lengths
    assert formats.expected(site).lengths == {3, 4}
    assert formats.expected(site).chars == "1234567ABCDEFGH"
    assert formats.learnt(site) == 4
    # Other sites learn on their own.
    assert formats.expected("http://other").lengths is None


def test_only_answers_given_in_this_crawl_are_learnt_from_and_each_once() -> None:
    formats = SiteFormats()
    formats.accepted("never-answered", "ABCD")
    assert formats.learnt("http://site") == 0
    formats.answered("sha", "http://site")
    formats.accepted("sha", "ABCD")
    formats.accepted("sha", "ABCD")  # the same answer reported twice
    assert formats.learnt("http://site") == 1


def test_request_options_come_before_settings_before_what_was_learnt() -> None:
    formats = SiteFormats(length=5, chars="0123456789")
    for number in range(LEARN_AFTER):
        formats.answered(f"sha{number}", "http://site")
        formats.accepted(f"sha{number}", "ABCD")
    assert formats.expected("http://site").lengths == {5}
    assert formats.expected("http://site").chars == "0123456789"
    assert formats.expected("http://site", 6, "xy").lengths == {6}
    assert formats.expected("http://site", 6, "xy").chars == "xy"
    learning = SiteFormats()
    for number in range(LEARN_AFTER):
        learning.answered(f"sha{number}", "http://site")
        learning.accepted(f"sha{number}", "ABCD")
    assert learning.expected("http://site", length=4).chars == "ABCD"


def test_characters_are_not_learnt_when_nothing_could_correct_them() -> None:
    # Without CapSolver, a character left out of the learnt alphabet could never be read.
    formats = SiteFormats(learn_chars=False)
    for number in range(LEARN_AFTER):
        formats.answered(f"sha{number}", "http://site")
        formats.accepted(f"sha{number}", "ABCD")
    assert formats.expected("http://site").lengths == {4}
    assert formats.expected("http://site").alphabet == DEFAULT_CHARS
