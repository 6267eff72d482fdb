"""SQuAD-normalised exact match and token F1 over answer aliases."""

from __future__ import annotations

import pytest

from steppo_envs.metrics import best_f1, exact_match, normalize_answer, token_f1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Beatles", "beatles"),
        ("  Paris,   France. ", "paris france"),
        ("an apple a day", "apple day"),
        ("Theatre", "theatre"),  # "the" inside a word stays
        ("U.S.A.", "usa"),
        ("O'Neill", "oneill"),
        ("", ""),
        ("Zürich", "zürich"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_articles_punctuation_case_whitespace() -> None:
    assert exact_match("the  beatles!", "The Beatles") == 1.0
    assert exact_match("Chief of Protocol.", ["Chief of Protocol"]) == 1.0
    assert exact_match("CHIEF OF PROTOCOL", "chief of protocol") == 1.0
    assert exact_match("Beatles band", "The Beatles") == 0.0


def test_exact_match_aliases() -> None:
    aliases = ["G. Stanley Hall", "Stanley Hall"]
    assert exact_match("Stanley Hall", aliases) == 1.0
    assert exact_match("g stanley hall", aliases) == 1.0
    assert exact_match("Hall", aliases) == 0.0
    assert exact_match("anything", []) == 0.0


def test_token_f1_exact_values() -> None:
    # pred tokens {new, york, city}, gold {new, york}: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("New York City", "New York") == pytest.approx(0.8)
    assert token_f1("the cat", "a cat") == 1.0
    assert token_f1("dog", "cat") == 0.0
    # repeated tokens count with multiplicity: pred {a1 b b}, gold {b}: P = 1/3, R = 1 → 0.5
    assert token_f1("x y y", "y") == pytest.approx(0.5)


def test_token_f1_empty_after_normalisation() -> None:
    assert token_f1("the", "a") == 1.0  # both normalise to nothing
    assert token_f1("the", "cat") == 0.0
    assert token_f1("cat", "...") == 0.0


def test_best_f1_takes_best_alias() -> None:
    assert best_f1("Stanley Hall", ["G. Stanley Hall", "Stanley Hall"]) == 1.0
    assert best_f1("New York City", ["Boston", "New York"]) == pytest.approx(0.8)
    assert best_f1("x", []) == 0.0
    assert best_f1("Paris", "Paris") == 1.0
