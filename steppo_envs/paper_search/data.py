"""Data for ``steppo/PaperSearch-v0``: the questions, their splits, the 154k-paper corpus and its index.

Files (under ``resolve_data_dir(data_dir, subdir="paper_search")``, see the data README):

* ``scholargym_bench.jsonl`` — the ScholarGym questions (``query, cited_paper, date, source, qid``);
* ``scholargym_mlanth_matched.jsonl`` — the same questions joined to the corpus by title
  (``gold[{arxiv_id, title, corpus_id}]``, ``n_gold``, ``n_gold_in_corpus``);
* ``mlanthology_corpus.jsonl.gz`` — 154,242 papers (``id, title, abstract, year, venue, ...``).

Parsing the gzip corpus takes seconds, so the parsed columns (and the document frequencies used by
``related``) are pickled once under ``cache_dir("paper_search")``, keyed by the gzip file's size and
modification time and the tokenizer version. The BM25 index itself is cached by :class:`steppo_envs.search.BM25Index`.
:func:`load_resources` keeps one in-process copy per (data directory, index parameters) so several
environments share the same index.

Splits (deterministic, never overlapping; see :func:`split_of`): ``train`` is 80% of the
AutoScholarQuery questions; ``test_autoscholar`` is the other 20% (chosen by a hash of the qid);
``test_litsearch`` and ``test_realscholar`` are the LitSearch and RealScholarQuery questions;
``test`` is the union of the three test splits; ``all`` is everything.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from steppo_envs.paths import cache_dir, resolve_data_dir
from steppo_envs.search import TOKENIZER_VERSION, Backend, BM25Index, Passage, SearchHit, tokenize

__all__ = [
    "BENCH_FILE",
    "CORPUS_FILE",
    "MATCHED_FILE",
    "SPLITS",
    "BenchQuery",
    "Paper",
    "PaperCorpus",
    "PaperSearchResources",
    "PaperTask",
    "load_bench_queries",
    "load_corpus",
    "load_resources",
    "load_tasks",
    "split_of",
]

BENCH_FILE = "scholargym_bench.jsonl"
MATCHED_FILE = "scholargym_mlanth_matched.jsonl"
CORPUS_FILE = "mlanthology_corpus.jsonl.gz"
SPLITS = ("train", "test", "test_autoscholar", "test_litsearch", "test_realscholar", "all")
TEST_PERCENT = 20
_CORPUS_CACHE_VERSION = "1"


@dataclass(frozen=True)
class Paper:
    """One corpus paper. ``year`` is the publication (venue) year, ``venue`` a short name like ``neurips``."""

    id: str
    title: str
    abstract: str
    year: int
    venue: str


@dataclass(frozen=True)
class BenchQuery:
    """One raw ScholarGym question: its gold papers are arXiv ids + titles (``cited``)."""

    qid: str
    source: str
    query: str
    date: str
    cited: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PaperTask:
    """One question of the task.

    Attributes:
        qid: the ScholarGym question id (the env's ``task_id``).
        source: ``PASA_AutoScholar``, ``PASA_RealScholar`` or ``LitSearch``.
        question: the research question shown to the agent.
        date: the search cut-off, ``YYYY-MM``.
        gold_ids: corpus ids of the gold papers that are in the corpus (the ones that are scored).
        n_gold_total: how many gold papers the question has, in the corpus or not.
        split: the split the question belongs to (see :func:`split_of`).
    """

    qid: str
    source: str
    question: str
    date: str
    gold_ids: tuple[str, ...]
    n_gold_total: int
    split: str

    @property
    def year(self) -> int:
        """The year of the search cut-off."""
        return int(self.date[:4])


def split_of(qid: str, source: str) -> str:
    """The split of a question: ``test_litsearch`` / ``test_realscholar`` by source; AutoScholarQuery
    questions go to ``test_autoscholar`` when ``int(sha256(qid)[:8], 16) % 100 < 20`` and to ``train``
    otherwise (deterministic across machines and Python versions)."""
    if source == "LitSearch":
        return "test_litsearch"
    if source == "PASA_RealScholar":
        return "test_realscholar"
    bucket = int(hashlib.sha256(qid.encode()).hexdigest()[:8], 16) % 100
    return "test_autoscholar" if bucket < TEST_PERCENT else "train"


def _in_split(task_split: str, split: str) -> bool:
    if split == "all":
        return True
    if split == "test":
        return task_split.startswith("test_")
    return task_split == split


def _read_jsonl(path: Path) -> Iterator[dict[str, object]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing: put the paper_search files of the shared data there or pass data_dir=...."
        )
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def load_bench_queries(data_dir: str | os.PathLike[str] | None = None) -> list[BenchQuery]:
    """All 2,536 raw ScholarGym questions from ``scholargym_bench.jsonl``."""
    root = resolve_data_dir(data_dir, subdir="paper_search")
    out = []
    for r in _read_jsonl(root / BENCH_FILE):
        cited = tuple((str(c.get("arxiv_id", "")), str(c.get("title", ""))) for c in r.get("cited_paper", []))  # type: ignore[union-attr]
        out.append(BenchQuery(str(r["qid"]), str(r["source"]), str(r["query"]), str(r["date"]), cited))
    return out


def load_tasks(
    data_dir: str | os.PathLike[str] | None = None, split: str = "all", *, include_partial: bool = False
) -> list[PaperTask]:
    """The questions of ``split`` (file order) from ``scholargym_mlanth_matched.jsonl``.

    By default only questions whose gold papers are all in the corpus (826 over all splits);
    ``include_partial=True`` also admits questions with at least one gold paper in the corpus,
    scoring only those.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    root = resolve_data_dir(data_dir, subdir="paper_search")
    tasks = []
    for r in _read_jsonl(root / MATCHED_FILE):
        gold = tuple(str(g["corpus_id"]) for g in r["gold"] if g.get("corpus_id"))  # type: ignore[union-attr]
        n_total = int(r["n_gold"])  # type: ignore[arg-type]
        if not gold or (len(gold) < n_total and not include_partial):
            continue
        task_split = split_of(str(r["qid"]), str(r["source"]))
        if _in_split(task_split, split):
            gold = tuple(dict.fromkeys(gold))
            tasks.append(
                PaperTask(
                    str(r["qid"]),
                    str(r["source"]),
                    str(r["query"]),
                    str(r["date"]),
                    gold,
                    n_total,
                    task_split,
                )
            )
    return tasks


# -- the corpus ----------------------------------------------------------------------------------


@dataclass
class PaperCorpus:
    """The corpus as parallel columns (cheap to pickle), plus each term's document frequency.

    ``source_key`` identifies the source file version (size + mtime); when set, the BM25 index is
    cached under it instead of a hash of all 154k passages.
    """

    ids: list[str]
    titles: list[str]
    abstracts: list[str]
    years: np.ndarray
    venues: list[str]
    doc_freq: dict[str, int] = field(default_factory=dict)
    source_key: str = ""
    load_seconds: float = 0.0
    from_cache: bool = False

    def __post_init__(self) -> None:
        self.index_of: dict[str, int] = {pid: i for i, pid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def paper(self, i: int) -> Paper:
        """The paper at corpus position ``i``."""
        return Paper(self.ids[i], self.titles[i], self.abstracts[i], int(self.years[i]), self.venues[i])

    def passages(self) -> list[Passage]:
        """Passages for :class:`BM25Index` (title + abstract)."""
        return [Passage(pid, t, a) for pid, t, a in zip(self.ids, self.titles, self.abstracts, strict=True)]


def _parse_corpus(path: Path, show_progress: bool) -> PaperCorpus:
    from steppo_envs.progress import progress_bar

    ids: list[str] = []
    titles: list[str] = []
    abstracts: list[str] = []
    years: list[int] = []
    venues: list[str] = []
    df: Counter[str] = Counter()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in progress_bar(f, desc="parsing paper corpus", unit=" papers", enabled=show_progress):
            if not line.strip():
                continue
            r = json.loads(line)
            ids.append(str(r["id"]))
            titles.append(str(r.get("title") or ""))
            abstracts.append(str(r.get("abstract") or ""))
            year = str(r.get("year") or "0")
            years.append(int(year) if year.isdigit() else 0)
            venues.append(str(r.get("venue") or ""))
            df.update(set(tokenize(titles[-1] + " " + abstracts[-1])))
    return PaperCorpus(ids, titles, abstracts, np.asarray(years, dtype=np.int16), venues, dict(df))


def load_corpus(data_dir: str | os.PathLike[str] | None = None, *, show_progress: bool = True) -> PaperCorpus:
    """Load the corpus, from the pickle cache when the gzip file is unchanged (same size and mtime)."""
    path = resolve_data_dir(data_dir, subdir="paper_search") / CORPUS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing: put the paper_search files of the shared data there or pass data_dir=...."
        )
    st = path.stat()
    version = f"v{_CORPUS_CACHE_VERSION}-tok{TOKENIZER_VERSION}"  # doc_freq depends on the tokenizer
    cached = cache_dir("paper_search") / f"corpus-{version}-{st.st_size}-{st.st_mtime_ns}.pkl"
    t0 = time.perf_counter()
    if cached.is_file():
        with open(cached, "rb") as f:
            cols = pickle.load(f)
        corpus = PaperCorpus(**cols)
        corpus.from_cache = True
    else:
        corpus = _parse_corpus(path, show_progress)
        cols = {k: getattr(corpus, k) for k in ("ids", "titles", "abstracts", "years", "venues", "doc_freq")}
        fd, tmp = tempfile.mkstemp(prefix=cached.name, dir=cached.parent)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(cols, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cached)  # atomic: concurrent loaders race safely
    corpus.source_key = f"{CORPUS_FILE}|{st.st_size}|{st.st_mtime_ns}"
    corpus.load_seconds = time.perf_counter() - t0
    return corpus


# -- search resources shared by environments ----------------------------------------------------


class PaperSearchResources:
    """The corpus, its BM25 index and the per-year date masks, shared by every env in the process.

    Args:
        corpus: the parsed corpus.
        backend, k1, b, title_weight: BM25 settings (see :class:`BM25Index`).
        show_progress: progress bar while building the index.
    """

    def __init__(
        self,
        corpus: PaperCorpus,
        *,
        backend: Backend = "bm25s",
        k1: float = 1.5,
        b: float = 0.75,
        title_weight: int = 2,
        cache: bool = True,
        show_progress: bool = True,
    ) -> None:
        self.corpus = corpus
        t0 = time.perf_counter()
        self.index = BM25Index(
            corpus.passages(),
            backend=backend,
            k1=k1,
            b=b,
            title_weight=title_weight,
            cache=cache,
            show_progress=show_progress,
            content_key=corpus.source_key or None,
        )
        self.index_seconds = time.perf_counter() - t0
        self._masks: dict[int, np.ndarray] = {}
        self._n_docs = len(corpus)

    def allowed(self, max_year: int) -> np.ndarray:
        """Boolean mask of the papers with ``year <= max_year`` (computed once per year)."""
        mask = self._masks.get(max_year)
        if mask is None:
            mask = self.corpus.years <= max_year
            self._masks[max_year] = mask
        return mask

    def search(
        self, query: str | Sequence[str], k: int, max_year: int, exclude: int | None = None
    ) -> list[SearchHit]:
        """The top-``k`` papers for ``query`` published no later than ``max_year`` (minus ``exclude``)."""
        mask = self.allowed(max_year)
        if exclude is not None and mask[exclude]:
            mask = mask.copy()
            mask[exclude] = False
        return self.index.search(query, k, allowed=mask)

    def related_terms(self, i: int, n_terms: int) -> list[str]:
        """The ``n_terms`` most characteristic terms of paper ``i`` (title counted twice), by tf-idf
        with ``idf = log(N / df)``; ties broken alphabetically so the query is deterministic."""
        tf = Counter(
            tokenize(self.corpus.titles[i] + " " + self.corpus.titles[i] + " " + self.corpus.abstracts[i])
        )
        n = self._n_docs
        weight = {t: c * float(np.log(n / max(1, self.corpus.doc_freq.get(t, 1)))) for t, c in tf.items()}
        return sorted(weight, key=lambda t: (-weight[t], t))[:n_terms]


_RESOURCES: dict[tuple[object, ...], PaperSearchResources] = {}


def load_resources(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    backend: Backend = "bm25s",
    k1: float = 1.5,
    b: float = 0.75,
    title_weight: int = 2,
    show_progress: bool = True,
) -> PaperSearchResources:
    """The shared :class:`PaperSearchResources` for these settings (built or loaded once per process)."""
    root = resolve_data_dir(data_dir, subdir="paper_search")
    key = (str(root), str(cache_dir("paper_search")), backend, k1, b, title_weight)
    res = _RESOURCES.get(key)
    if res is None:
        corpus = load_corpus(root.parent, show_progress=show_progress)
        res = PaperSearchResources(
            corpus, backend=backend, k1=k1, b=b, title_weight=title_weight, show_progress=show_progress
        )
        _RESOURCES[key] = res
    return res
