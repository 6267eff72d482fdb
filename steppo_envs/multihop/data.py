"""Loaders for the multi-hop QA data: HotpotQA, MuSiQue and 2WikiMultihopQA into one record type.

Every format becomes a :class:`QAExample`. Files live in ``<data_dir>/multihop_qa`` (see
``docs/environments.md`` for the sources and licences):

========================  =================================  =========================================
dataset name              file                               format
========================  =================================  =========================================
``hotpotqa_ircot500``     ``hotpotqa_dev500_ircot.jsonl``    IRCoT processed HotpotQA (dev, distractor)
``hotpotqa_train100``     ``hipporag_hotpotqa_train.json``   official HotpotQA (train sample)
``musique_train100``      ``hipporag_musique_train.json``    official MuSiQue (train sample)
``hotpotqa_dev200``       ``migres_hotpotqa200.jsonl``       official HotpotQA (dev, hard)
``musique_dev200``        ``migres_musique200.jsonl``        official MuSiQue (answerable, dev)
``2wiki_dev200``          ``migres_2wiki200.jsonl``          official 2WikiMultihopQA (dev)
========================  =================================  =========================================

Splits: ``"train"`` = ``hotpotqa_ircot500`` + ``hotpotqa_train100`` minus any question whose id is
also in an evaluation file (15 IRCoT questions are in ``hotpotqa_dev200``); ``"eval"`` =
``hotpotqa_dev200`` + ``musique_dev200`` + ``2wiki_dev200``. A comma-separated list of names also
works, and ``"hub:hotpot_qa"`` (optionally ``"hub:hotpot_qa:<split>"``, default ``validation``)
loads the canonical hub dataset (config ``distractor``) through the ``datasets`` extra.

Your own file: a part of the list that is a path (it ends in ``.json`` / ``.jsonl`` or holds a ``/``)
is a user file in the official HotpotQA layout (or the IRCoT / MuSiQue layouts above), read by
:func:`load_user_file` with errors naming the file, the line or record and :data:`USER_LAYOUT`.

The search corpus (:func:`pooled_corpus`) pools the unique ``(title, text)`` paragraphs of *all*
files, question contexts and the HippoRAG corpus files alike (about 20k paragraphs); the environment
adds the paragraphs of a user file's questions. Loads are cached in-process (a user file by its
content hash, so an edited file is read again), so building a second environment over the same data
is fast.
"""

from __future__ import annotations

import ast
import functools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steppo_envs.config import ConfigError
from steppo_envs.contract import optional_import
from steppo_envs.datafiles import file_digest, read_records, record_error, user_file

__all__ = [
    "CORPUS_FILES",
    "DATASETS",
    "SPLITS",
    "USER_LAYOUT",
    "Paragraph",
    "QAExample",
    "dataset_names",
    "dataset_parts",
    "is_file_part",
    "load_dataset",
    "load_hub_hotpotqa",
    "load_named",
    "load_user_file",
    "pooled_corpus",
    "user_file_keys",
]

SUBDIR = "multihop_qa"


@dataclass(frozen=True)
class Paragraph:
    """A Wikipedia paragraph: its article title and text."""

    title: str
    text: str


@dataclass(frozen=True)
class QAExample:
    """One multi-hop question.

    Attributes:
        id: the dataset's question id.
        question: the question text.
        answers: the gold answer and its aliases (first = the main answer).
        supporting_titles: titles of the paragraphs needed to answer (in dataset order, unique).
        paragraphs: the question's own context paragraphs (empty when the file has none).
        source: the dataset name (a key of :data:`DATASETS`, ``"hub:hotpot_qa"``, or a user file's name).
    """

    id: str
    question: str
    answers: tuple[str, ...]
    supporting_titles: tuple[str, ...]
    paragraphs: tuple[Paragraph, ...]
    source: str


# -- helpers -------------------------------------------------------------------------------------


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def _join_sentences(sentences: Iterable[str] | str) -> str:
    """Join sentence lists; HotpotQA sentences carry their own leading space, 2Wiki ones do not (a
    user file may give one string instead of a list)."""
    if isinstance(sentences, str):
        return sentences.strip()
    out = ""
    for s in sentences:
        if out and s and not s[0].isspace() and not out[-1].isspace():
            out += " "
        out += s
    return out.strip()


def _literal(value: Any) -> Any:
    """2WikiMultihopQA stores some list fields as Python-literal strings."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return []
    return value


def _read_records(path: Path) -> list[dict[str, Any]]:
    """A ``.jsonl`` file (one object per line) or a ``.json`` file holding a list."""
    try:
        with open(path, encoding="utf-8") as f:
            if path.suffix == ".jsonl":
                return [json.loads(line) for line in f if line.strip()]
            data = json.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"multi-hop QA file {str(path)!r} is missing: point data_dir (or STEPPO_DATA_DIR) at the folder "
            f"that holds {SUBDIR}/."
        ) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"multi-hop QA file {str(path)!r} is not valid JSON ({exc.msg}): restore the original file.") from exc
    return data if isinstance(data, list) else [data]


# -- one parser per format -----------------------------------------------------------------------


def _parse_ircot(rec: dict[str, Any], source: str) -> QAExample:
    answers = [s for obj in rec.get("answers_objects", []) for s in obj.get("spans", [])]
    contexts = rec.get("contexts", [])
    return QAExample(
        id=str(rec["question_id"]),
        question=rec["question_text"].strip(),
        answers=_unique(a.strip() for a in answers),
        supporting_titles=_unique(c["title"] for c in contexts if c.get("is_supporting")),
        paragraphs=tuple(Paragraph(c["title"], c["paragraph_text"].strip()) for c in contexts),
        source=source,
    )


def _parse_official(rec: dict[str, Any], source: str) -> QAExample:
    """Official HotpotQA and 2WikiMultihopQA: ``context = [[title, [sentences]]]``."""
    context = _literal(rec.get("context")) or []
    facts = _literal(rec.get("supporting_facts")) or []
    return QAExample(
        id=str(rec["_id"]),
        question=rec["question"].strip(),
        answers=_unique([str(rec["answer"]).strip()]),
        supporting_titles=_unique(str(f[0]) for f in facts),
        paragraphs=tuple(Paragraph(str(title), _join_sentences(sents)) for title, sents in context),
        source=source,
    )


def _parse_musique(rec: dict[str, Any], source: str) -> QAExample:
    paragraphs = rec.get("paragraphs", [])
    return QAExample(
        id=str(rec["id"]),
        question=rec["question"].strip(),
        answers=_unique(a.strip() for a in [rec["answer"], *rec.get("answer_aliases", [])]),
        supporting_titles=_unique(p["title"] for p in paragraphs if p.get("is_supporting")),
        paragraphs=tuple(Paragraph(p["title"], p["paragraph_text"].strip()) for p in paragraphs),
        source=source,
    )


DATASETS: dict[str, tuple[str, str]] = {
    "hotpotqa_ircot500": ("hotpotqa_dev500_ircot.jsonl", "ircot"),
    "hotpotqa_train100": ("hipporag_hotpotqa_train.json", "official"),
    "musique_train100": ("hipporag_musique_train.json", "musique"),
    "hotpotqa_dev200": ("migres_hotpotqa200.jsonl", "official"),
    "musique_dev200": ("migres_musique200.jsonl", "musique"),
    "2wiki_dev200": ("migres_2wiki200.jsonl", "official"),
}
"""Dataset name → (file in ``multihop_qa/``, format)."""

SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("hotpotqa_ircot500", "hotpotqa_train100"),
    "eval": ("hotpotqa_dev200", "musique_dev200", "2wiki_dev200"),
}
"""Split name → dataset names. ``train`` drops questions that also appear in ``eval``."""

CORPUS_FILES: tuple[str, ...] = (
    "hipporag_hotpotqa_train_corpus.json",
    "hipporag_musique_train_corpus.json",
    "hipporag_2wikimultihopqa_corpus.json",
)
"""Paragraph-only files (no questions) pooled into the search corpus."""

_PARSERS = {"ircot": _parse_ircot, "official": _parse_official, "musique": _parse_musique}


USER_LAYOUT = (
    'one JSON object per line (.jsonl) or a JSON list (.json) in the HotpotQA layout {"_id": ..., "question": ..., '
    '"answer": ..., "supporting_facts": [[title, sentence_index], ...], "context": [[title, [sentence, ...]], ...]} '
    "(only question and answer are required; the IRCoT and MuSiQue layouts of the bundled files work too)"
)
"""The layout of a user's question file, as error messages describe it."""


def dataset_names() -> list[str]:
    """The valid values of ``MultiHopQAConfig.dataset`` besides comma-separated lists and file paths."""
    return [*SPLITS, *DATASETS, "hub:hotpot_qa"]


def is_file_part(part: str) -> bool:
    """Whether one part of a ``dataset`` value is a file path rather than a dataset name."""
    return part.lower().endswith((".json", ".jsonl")) or "/" in part or os.sep in part or part.startswith("~")


def dataset_parts(dataset: str) -> list[str]:
    """The non-empty, stripped parts of a comma-separated ``dataset`` value."""
    return [p for p in (part.strip() for part in dataset.split(",")) if p]


def user_file_keys(dataset: str) -> tuple[tuple[str, str], ...]:
    """``(resolved path, content hash)`` of each user file named in ``dataset``: the cache keys."""
    keys = []
    for part in dataset_parts(dataset):
        if is_file_part(part):
            path = user_file(part, "dataset", USER_LAYOUT)
            keys.append((str(path), file_digest(path)))
    return tuple(keys)


def _detect_format(rec: dict[str, Any]) -> str:
    if "question_text" in rec or "contexts" in rec:
        return "ircot"
    if "paragraphs" in rec:
        return "musique"
    return "official"


def _check_example(ex: QAExample) -> str | None:
    if not ex.question:
        return "the question is empty"
    if not ex.answers:
        return "the answer is empty"
    return None


@functools.lru_cache(maxsize=16)
def load_user_file(path: str, digest: str) -> tuple[QAExample, ...]:
    """The examples of a user's question file (``digest``, its content hash, keys the cache).

    A record without an id gets ``<file name>:<line or record number>``; any problem raises a
    :class:`ConfigError` naming the file, the line or record and :data:`USER_LAYOUT`.
    """
    file = Path(path)
    out = []
    for rec in read_records(file, USER_LAYOUT):
        fmt = _detect_format(rec.data)
        id_key = {"official": "_id", "ircot": "question_id", "musique": "id"}[fmt]
        data = {id_key: rec.data.get("id", f"{file.name}:{rec.number}"), **rec.data}
        try:
            ex = _PARSERS[fmt](data, file.name)
        except KeyError as exc:
            raise record_error(file, rec.where, f"the record has no {exc.args[0]!r} field", USER_LAYOUT) from None
        except (TypeError, ValueError, AttributeError, IndexError) as exc:
            raise record_error(file, rec.where, f"a field has the wrong shape ({type(exc).__name__}: {exc})", USER_LAYOUT) from None
        problem = _check_example(ex)
        if problem:
            raise record_error(file, rec.where, problem, USER_LAYOUT)
        out.append(ex)
    return tuple(out)


@functools.lru_cache(maxsize=16)
def load_named(data_dir: str, name: str) -> tuple[QAExample, ...]:
    """The examples of one named dataset (a key of :data:`DATASETS`) under ``data_dir``, cached."""
    if name not in DATASETS:
        raise ConfigError(
            f"unknown multi-hop QA dataset {name!r}: use one of {', '.join(dataset_names())}, "
            "or the path of your own .json / .jsonl file."
        )
    filename, fmt = DATASETS[name]
    parse = _PARSERS[fmt]
    return tuple(parse(rec, name) for rec in _read_records(Path(data_dir) / SUBDIR / filename))


def load_dataset(data_dir: str, dataset: str) -> tuple[QAExample, ...]:
    """Examples for a split, a dataset name, a user file, or a comma-separated list of them, cached
    in-process (user files by their content hash)."""
    return _load_dataset(data_dir, dataset, user_file_keys(dataset))


@functools.lru_cache(maxsize=16)
def _load_dataset(data_dir: str, dataset: str, files: tuple[tuple[str, str], ...]) -> tuple[QAExample, ...]:
    parts = dataset_parts(dataset)
    if not parts:
        raise ConfigError(f"split is empty: use one of {', '.join(dataset_names())}.")
    digests = iter(files)
    examples: list[QAExample] = []
    names: set[str] = set()
    for part in parts:
        if is_file_part(part):
            examples.extend(load_user_file(*next(digests)))
            continue
        for name in SPLITS.get(part, (part,)):
            if name not in names:
                names.add(name)
                examples.extend(load_named(data_dir, name))
    if "train" in parts:
        held_out = {ex.id for name in SPLITS["eval"] for ex in load_named(data_dir, name)}
        examples = [ex for ex in examples if ex.id not in held_out]
    return tuple(examples)


def _corpus_file_paragraphs(path: Path) -> Iterator[Paragraph]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):  # HippoRAG HotpotQA: {title: [sentences]}
        for title, sents in data.items():
            yield Paragraph(str(title), _join_sentences(sents) if isinstance(sents, list) else str(sents).strip())
    else:  # [{title, text}]
        for rec in data:
            yield Paragraph(str(rec["title"]), str(rec["text"]).strip())


def dedup_paragraphs(paragraphs: Iterable[Paragraph]) -> tuple[Paragraph, ...]:
    """Unique paragraphs by ``(title, whitespace-normalised text)``, first occurrence kept, empty text dropped."""
    seen: set[tuple[str, str]] = set()
    out: list[Paragraph] = []
    for p in paragraphs:
        key = (p.title.strip(), " ".join(p.text.split()))
        if key[1] and key not in seen:
            seen.add(key)
            out.append(p)
    return tuple(out)


@functools.lru_cache(maxsize=4)
def pooled_corpus(data_dir: str) -> tuple[Paragraph, ...]:
    """Unique paragraphs of every question file and corpus file under ``data_dir``, in a fixed order."""

    def gen() -> Iterator[Paragraph]:
        for name in DATASETS:
            for ex in load_named(data_dir, name):
                yield from ex.paragraphs
        for filename in CORPUS_FILES:
            path = Path(data_dir) / SUBDIR / filename
            if path.exists():
                yield from _corpus_file_paragraphs(path)

    return dedup_paragraphs(gen())


# -- the canonical hub dataset -------------------------------------------------------------------


def _parse_hub_hotpot(rec: dict[str, Any]) -> QAExample:
    ctx = rec["context"]
    facts = rec["supporting_facts"]
    return QAExample(
        id=str(rec["id"]),
        question=rec["question"].strip(),
        answers=_unique([rec["answer"].strip()]),
        supporting_titles=_unique(facts["title"]),
        paragraphs=tuple(Paragraph(t, _join_sentences(s)) for t, s in zip(ctx["title"], ctx["sentences"], strict=True)),
        source="hub:hotpot_qa",
    )


@functools.lru_cache(maxsize=4)
def load_hub_hotpotqa(split: str = "validation") -> tuple[QAExample, ...]:
    """HotpotQA (config ``distractor``) from the Hugging Face hub; needs ``pip install 'steppo[datasets]'``."""
    datasets = optional_import("datasets", "datasets")
    ds = datasets.load_dataset("hotpot_qa", "distractor", split=split)
    return tuple(_parse_hub_hotpot(rec) for rec in ds)


def parse_hub_spec(dataset: str) -> tuple[str, str] | None:
    """``"hub:hotpot_qa[:split]"`` → ``("hotpot_qa", split)``; ``None`` for local dataset names."""
    if not dataset.startswith("hub:"):
        return None
    parts = dataset.split(":")
    name = parts[1] if len(parts) > 1 else ""
    split = parts[2] if len(parts) > 2 and parts[2] else "validation"
    if name != "hotpot_qa" or len(parts) > 3:
        raise ConfigError(f"unknown hub dataset {dataset!r}: use 'hub:hotpot_qa' or 'hub:hotpot_qa:<split>'.")
    return name, split
