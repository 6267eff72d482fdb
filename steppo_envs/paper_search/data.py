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

Your own data: :func:`read_user_questions` reads a question file in the layout of the matched file
(:data:`QUESTIONS_LAYOUT`), :func:`load_user_corpus` a corpus file in the layout of the corpus
(:data:`CORPUS_LAYOUT`); the index of a user corpus is cached under its content hash.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steppo_envs.datafiles import FileRecord, file_digest, read_records, record_error, user_file
from steppo_envs.paths import cache_dir, resolve_data_dir
from steppo_envs.search import TOKENIZER_VERSION, Backend, BM25Index, Passage, SearchHit, tokenize

__all__ = [
    "BENCH_FILE",
    "CORPUS_FILE",
    "CORPUS_LAYOUT",
    "MATCHED_FILE",
    "NO_CUTOFF_YEAR",
    "QUESTIONS_LAYOUT",
    "SPLITS",
    "BenchQuery",
    "Paper",
    "PaperCorpus",
    "PaperSearchResources",
    "PaperTask",
    "UserQuestion",
    "load_bench_queries",
    "load_corpus",
    "load_resources",
    "load_tasks",
    "load_user_corpus",
    "read_user_questions",
    "split_of",
    "user_tasks",
]

BENCH_FILE = "scholargym_bench.jsonl"
MATCHED_FILE = "scholargym_mlanth_matched.jsonl"
CORPUS_FILE = "mlanthology_corpus.jsonl.gz"
SPLITS = ("train", "test", "test_autoscholar", "test_litsearch", "test_realscholar", "all")
TEST_PERCENT = 20
_CORPUS_CACHE_VERSION = "1"
NO_CUTOFF_YEAR = 9999
"""The ``year`` of a question without a date: every paper is searchable."""

QUESTIONS_LAYOUT = (
    'one JSON object per line (.jsonl) or a JSON list (.json) like scholargym_mlanth_matched.jsonl: {"qid": ..., '
    '"query": ..., "gold": [{"corpus_id": a corpus paper id, or null for a paper not in the corpus}, ...] (or a list '
    'of paper ids), optional "date": "YYYY-MM" (the search cut-off), "n_gold", "source"}'
)
"""The layout of a user's question file, as error messages describe it."""

CORPUS_LAYOUT = (
    "one JSON object per line (.jsonl, or .jsonl.gz) or a JSON list (.json) like mlanthology_corpus.jsonl.gz: "
    '{"id": ..., "title": ..., "abstract": ..., optional "year" (a number) and "venue"}'
)
"""The layout of a user's corpus file, as error messages describe it."""


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
        date: the search cut-off, ``YYYY-MM`` (``""`` for a user question without one: no cut-off).
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
        """The year of the search cut-off (:data:`NO_CUTOFF_YEAR` without a date)."""
        return int(self.date[:4]) if self.date else NO_CUTOFF_YEAR


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


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON records of a JSONL file (values as JSON gives them: any JSON type)."""
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
        cited = tuple((str(c.get("arxiv_id", "")), str(c.get("title", ""))) for c in r.get("cited_paper", []))
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
        gold = tuple(str(g["corpus_id"]) for g in r["gold"] if g.get("corpus_id"))
        n_total = int(r["n_gold"])
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


_CORPUS_VERSION = f"v{_CORPUS_CACHE_VERSION}-tok{TOKENIZER_VERSION}"  # doc_freq depends on the tokenizer


def _cached_corpus(filename: str, source_key: str, parse: Callable[[], PaperCorpus]) -> PaperCorpus:
    """The corpus from the pickle ``cache_dir("paper_search")/<filename>``, else ``parse()``d and saved there."""
    cached = cache_dir("paper_search") / filename
    t0 = time.perf_counter()
    if cached.is_file():
        with open(cached, "rb") as f:
            cols = pickle.load(f)
        corpus = PaperCorpus(**cols)
        corpus.from_cache = True
    else:
        corpus = parse()
        cols = {k: getattr(corpus, k) for k in ("ids", "titles", "abstracts", "years", "venues", "doc_freq")}
        fd, tmp = tempfile.mkstemp(prefix=cached.name, dir=cached.parent)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(cols, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cached)  # atomic: concurrent loaders race safely
    corpus.source_key = source_key
    corpus.load_seconds = time.perf_counter() - t0
    return corpus


def load_corpus(data_dir: str | os.PathLike[str] | None = None, *, show_progress: bool = True) -> PaperCorpus:
    """Load the corpus, from the pickle cache when the gzip file is unchanged (same size and mtime)."""
    path = resolve_data_dir(data_dir, subdir="paper_search") / CORPUS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing: put the paper_search files of the shared data there or pass data_dir=...."
        )
    st = path.stat()
    return _cached_corpus(
        f"corpus-{_CORPUS_VERSION}-{st.st_size}-{st.st_mtime_ns}.pkl",
        f"{CORPUS_FILE}|{st.st_size}|{st.st_mtime_ns}",
        lambda: _parse_corpus(path, show_progress),
    )


def _paper_fields(path: Path, rec: FileRecord) -> tuple[str, str, str, int, str]:
    """``(id, title, abstract, year, venue)`` of one user corpus record, checked."""
    r = rec.data
    pid = r.get("id")
    if not isinstance(pid, str | int) or isinstance(pid, bool) or not str(pid).strip():
        raise record_error(path, rec.where, "the record has no 'id' field (a non-empty string)", CORPUS_LAYOUT)
    title, abstract = r.get("title") or "", r.get("abstract") or ""
    if not isinstance(title, str) or not isinstance(abstract, str) or not (title.strip() or abstract.strip()):
        raise record_error(path, rec.where, "the paper needs a 'title' or an 'abstract' (strings)", CORPUS_LAYOUT)
    year = str(r.get("year") or "0").strip()
    if not year.isdigit() or int(year) > 32767:
        raise record_error(path, rec.where, f"'year' must be a number, got {r.get('year')!r}", CORPUS_LAYOUT)
    return str(pid).strip(), title, abstract, int(year), str(r.get("venue") or "")


def _parse_user_corpus(path: Path) -> PaperCorpus:
    rows = [(rec, _paper_fields(path, rec)) for rec in read_records(path, CORPUS_LAYOUT)]
    seen: dict[str, str] = {}
    for rec, (pid, *_rest) in rows:
        if pid in seen:
            raise record_error(path, rec.where, f"paper id {pid!r} is also at {seen[pid]}", CORPUS_LAYOUT)
        seen[pid] = rec.where
    ids, titles, abstracts, years, venues = (list(col) for col in zip(*(fields for _, fields in rows), strict=True))
    df: Counter[str] = Counter()
    for title, abstract in zip(titles, abstracts, strict=True):
        df.update(set(tokenize(title + " " + abstract)))
    return PaperCorpus(ids, titles, abstracts, np.asarray(years, dtype=np.int16), venues, dict(df))


def load_user_corpus(corpus_file: str | os.PathLike[str]) -> PaperCorpus:
    """A user's corpus file (:data:`CORPUS_LAYOUT`), parsed once and cached under its content hash,
    as is its BM25 index; a bad record raises :class:`ConfigError` naming the file and the line."""
    path = user_file(str(corpus_file), "corpus", CORPUS_LAYOUT)
    digest = file_digest(path)
    return _cached_corpus(f"user-corpus-{_CORPUS_VERSION}-{digest}.pkl", f"user-corpus|{digest}", lambda: _parse_user_corpus(path))


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
    corpus_file: str | os.PathLike[str] | None = None,
) -> PaperSearchResources:
    """The shared :class:`PaperSearchResources` for these settings (built or loaded once per process).

    ``corpus_file`` replaces the bundled corpus with a user's (then no data directory is needed); it
    is keyed by its content hash, so an edited file gets a new index.
    """
    if corpus_file is not None:
        path = user_file(str(corpus_file), "corpus", CORPUS_LAYOUT)
        source: tuple[str, ...] = ("user", str(path), file_digest(path))
    else:
        root = resolve_data_dir(data_dir, subdir="paper_search")
        source = ("bundled", str(root))
    key = (*source, str(cache_dir("paper_search")), backend, k1, b, title_weight)
    res = _RESOURCES.get(key)
    if res is None:
        corpus = load_user_corpus(corpus_file) if corpus_file is not None else load_corpus(root.parent, show_progress=show_progress)
        res = PaperSearchResources(
            corpus, backend=backend, k1=k1, b=b, title_weight=title_weight, show_progress=show_progress
        )
        _RESOURCES[key] = res
    return res


# -- a user's question file -----------------------------------------------------------------------

_DATE_RE = re.compile(r"^\d{4}(-\d{2}){0,2}$")


@dataclass(frozen=True)
class UserQuestion:
    """One question of a user's file: ``where`` it is (``"line 3"``), the gold ids it names (``None``
    for a gold paper outside the corpus) and the task it becomes."""

    where: str
    gold: tuple[str | None, ...]
    task: PaperTask


def _gold_ids(path: Path, rec: FileRecord) -> tuple[str | None, ...]:
    gold = rec.data.get("gold")
    if not isinstance(gold, list) or not gold:
        raise record_error(path, rec.where, "'gold' must be a non-empty list of the papers that answer the question", QUESTIONS_LAYOUT)
    out: list[str | None] = []
    for g in gold:
        pid: Any = g.get("corpus_id") if isinstance(g, dict) else g
        if pid is not None and (not isinstance(pid, str | int) or isinstance(pid, bool) or not str(pid).strip()):
            raise record_error(path, rec.where, f"a gold paper id must be a string, got {pid!r}", QUESTIONS_LAYOUT)
        out.append(None if pid is None else str(pid).strip())
    return tuple(out)


def _user_question(path: Path, rec: FileRecord) -> UserQuestion:
    r = rec.data
    for name in ("qid", "query"):
        if not isinstance(r.get(name), str | int) or not str(r[name]).strip():
            raise record_error(path, rec.where, f"the record has no {name!r} field (a non-empty string)", QUESTIONS_LAYOUT)
    date = str(r.get("date") or "").strip()
    if date and not _DATE_RE.match(date):
        raise record_error(path, rec.where, f"'date' must look like YYYY-MM, got {r.get('date')!r}", QUESTIONS_LAYOUT)
    gold = _gold_ids(path, rec)
    n_gold = r.get("n_gold", len(gold))
    if not isinstance(n_gold, int) or n_gold < len([g for g in gold if g]):
        raise record_error(path, rec.where, f"'n_gold' must be a whole number >= the gold ids given, got {n_gold!r}", QUESTIONS_LAYOUT)
    ids = tuple(dict.fromkeys(g for g in gold if g))
    task = PaperTask(str(r["qid"]).strip(), str(r.get("source") or "user"), str(r["query"]).strip(), date, ids, n_gold, "user")
    return UserQuestion(rec.where, gold, task)


def read_user_questions(questions_file: str | os.PathLike[str]) -> list[UserQuestion]:
    """The questions of a user's file (:data:`QUESTIONS_LAYOUT`); a bad record raises
    :class:`ConfigError` naming the file, the line or record and the layout."""
    path = user_file(str(questions_file), "questions", QUESTIONS_LAYOUT)
    return [_user_question(path, rec) for rec in read_records(path, QUESTIONS_LAYOUT)]


def user_tasks(
    questions: Sequence[UserQuestion], corpus: PaperCorpus, questions_file: str | os.PathLike[str], *, include_partial: bool = False
) -> list[PaperTask]:
    """The tasks of a user's questions over ``corpus``: every gold id they name must be a corpus paper;
    a question with gold papers outside the corpus (``null`` ids) is a task only with ``include_partial``."""
    path = Path(questions_file)
    tasks = []
    for q in questions:
        missing = [g for g in q.task.gold_ids if g not in corpus.index_of]
        if missing:
            raise record_error(
                path, q.where, f"gold paper {missing[0]!r} is not in the corpus (use null for a paper outside it)", QUESTIONS_LAYOUT
            )
        if q.task.gold_ids and (len(q.task.gold_ids) == q.task.n_gold_total or include_partial):
            tasks.append(q.task)
    return tasks
