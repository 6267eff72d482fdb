"""BM25 search (steppo_envs.search): both backends, the disk cache, masks and edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from steppo_envs.search import BM25Index, Passage, corpus_key, tokenize

TOY = [
    Passage("0", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    Passage("1", "Louvre", "The Louvre is the world's most-visited art museum, in Paris."),
    Passage("2", "Big Ben", "Big Ben is the nickname for the Great Bell of the clock in London."),
    Passage("3", "Oettinger Brauerei", "Oettinger Brauerei is a brewery group in Germany."),
    Passage("4", "Tower Bridge", "Tower Bridge is a bascule and suspension bridge in London."),
    Passage("5", "Colosseum", "The Colosseum is an oval amphitheatre in the centre of Rome."),
]


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPPO_CACHE_DIR", str(tmp_path / "cache"))


def test_tokenize_drops_stopwords_and_punctuation() -> None:
    assert tokenize("The Eiffel-Tower, in PARIS!") == ["eiffel", "tower", "paris"]
    assert tokenize("the of and") == []


@pytest.mark.parametrize(
    ("query", "title"),
    [("eiffel tower paris", "Eiffel Tower"), ("art museum", "Louvre"), ("bell clock london", "Big Ben"), ("brewery", "Oettinger Brauerei")],
)
def test_backends_agree_on_top_hit(query: str, title: str) -> None:
    a = BM25Index(TOY, backend="bm25s", cache=False).search(query, k=3)
    b = BM25Index(TOY, backend="rank_bm25", cache=False).search(query, k=3)
    assert a[0].title == b[0].title == title
    assert a[0].score > 0 and b[0].score > 0


def test_hits_sorted_and_limited_to_positive_scores() -> None:
    index = BM25Index(TOY, cache=False)
    hits = index.search("tower london", k=10)
    assert {h.title for h in hits} == {"Eiffel Tower", "Tower Bridge", "Big Ben"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].title == "Tower Bridge"  # matches both terms
    assert all(h.text == TOY[h.index].text and h.id == TOY[h.index].id for h in hits)


@pytest.mark.parametrize("backend", ["bm25s", "rank_bm25"])
def test_empty_and_unknown_queries(backend: str) -> None:
    index = BM25Index(TOY, backend=backend, cache=False)  # type: ignore[arg-type]
    assert index.search("") == []
    assert index.search("the of a") == []
    assert index.search("zzzqqq") == []
    assert index.search([]) == []
    assert index.scores("").shape == (len(TOY),)


@pytest.mark.parametrize("backend", ["bm25s", "rank_bm25"])
def test_cache_reused(backend: str) -> None:
    first = BM25Index(TOY, backend=backend)  # type: ignore[arg-type]
    assert not first.from_cache and first.cache_path is not None and first.cache_path.exists()
    second = BM25Index(TOY, backend=backend)  # type: ignore[arg-type]
    assert second.from_cache and second.cache_path == first.cache_path
    assert [h.index for h in second.search("tower")] == [h.index for h in first.search("tower")]


def test_changed_corpus_is_not_served_from_cache() -> None:
    BM25Index(TOY)
    changed = [*TOY[:-1], Passage("5", "Colosseum", "A different text.")]
    assert not BM25Index(changed).from_cache
    assert corpus_key(TOY) != corpus_key(changed)
    assert corpus_key(TOY) != corpus_key(TOY, extra="rank_bm25")


def test_allowed_mask() -> None:
    index = BM25Index(TOY, cache=False)
    allowed = np.ones(len(TOY), dtype=bool)
    allowed[4] = False  # hide Tower Bridge
    hits = index.search("tower london", k=5, allowed=allowed)
    assert 4 not in {h.index for h in hits} and hits[0].title in {"Eiffel Tower", "Big Ben"}
    assert index.search("tower", allowed=np.zeros(len(TOY), dtype=bool)) == []


def test_title_weight_boosts_titles() -> None:
    corpus = [Passage("a", "Paris", "A city."), Passage("b", "Berlin", "Paris is mentioned here with city words.")]
    assert BM25Index(corpus, title_weight=3, cache=False).search("paris")[0].id == "a"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index([], cache=False)
    with pytest.raises(ValueError, match="backend"):
        BM25Index(TOY, backend="tfidf", cache=False)  # type: ignore[arg-type]
