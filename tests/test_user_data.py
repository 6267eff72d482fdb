"""Your own data in the bundled envs (issue 16): a HotpotQA-format file in steppo/MultiHopQA-v0 (its
paragraphs are searched), a question file and a corpus file in steppo/PaperSearch-v0, caches keyed by
content, and one-line errors naming the file, the line or record and the expected layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium
import pytest

import steppo_envs
from steppo_envs import ConfigError
from steppo_envs.multihop.data import load_dataset

# -- MultiHopQA ------------------------------------------------------------------------------------

QUESTIONS = [
    {
        "_id": "zq1",
        "question": "Which instrument does the founder of the Zorblax Quintet play?",
        "answer": "glimmerhorn",
        "supporting_facts": [["Zorblax Quintet", 0], ["Quillon Brevaard", 1]],
        "context": [
            ["Zorblax Quintet", ["The Zorblax Quintet is a band founded by Quillon Brevaard.", " It tours Vantrelia."]],
            ["Quillon Brevaard", ["Quillon Brevaard is a musician from Ostermoor.", " He plays the glimmerhorn."]],
        ],
    },
    {
        "_id": "zq2",
        "question": "In which city was the Pellucid Vexatory built?",
        "answer": "Ostermoor",
        "supporting_facts": [["Pellucid Vexatory", 0]],
        "context": [["Pellucid Vexatory", ["The Pellucid Vexatory is an observatory built in Ostermoor."]]],
    },
]


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _search(query: str) -> str:
    return "<tool_call>" + json.dumps({"name": "search", "arguments": {"query": query}}) + "</tool_call>"


@pytest.fixture
def multihop_data() -> str:
    try:
        return str(steppo_envs.resolve_data_dir(subdir="multihop_qa").parent)
    except steppo_envs.DataDirError:
        pytest.skip("multihop_qa data not found (set STEPPO_DATA_DIR)")


def test_hotpotqa_file_is_loaded_and_its_paragraphs_searched(
    multihop_data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPPO_CACHE_DIR", str(tmp_path / "cache"))
    path = _write_jsonl(tmp_path / "mine.jsonl", QUESTIONS)
    env = gymnasium.make("steppo/MultiHopQA-v0", split=str(path), data_dir=multihop_data)
    assert [ex.id for ex in env.unwrapped.examples] == ["zq1", "zq2"]
    obs, info = env.reset(options={"task_index": 0})
    assert "Zorblax Quintet" in obs and info["task_id"] == "zq1" and info["extra"]["source"] == "mine.jsonl"
    obs, _, _, _, info = env.step("Search[glimmerhorn]")
    assert info["extra"]["retrieved_titles"][0] == "Quillon Brevaard" and "He plays the glimmerhorn." in obs
    _, _, _, _, info = env.step(_search("Zorblax Quintet founder"))  # the tool-call form
    assert info["extra"]["retrieved_titles"][0] == "Zorblax Quintet"
    assert info["metrics"]["support_recall"] == 1.0
    _, reward, terminated, _, info = env.step("Answer[Glimmerhorn]")
    assert reward == 1.0 and terminated and info["success"]
    # the bundled corpus is still searched next to the file's paragraphs
    assert len(env.unwrapped.index.passages) > 15_000

    # the same path with new content: never the cached data or index of the old content
    edited = [dict(QUESTIONS[0], context=[["Quillon Brevaard", ["Quillon Brevaard plays the sproingle."]]])]
    _write_jsonl(path, edited)
    env2 = gymnasium.make("steppo/MultiHopQA-v0", split=str(path), data_dir=multihop_data)
    assert len(env2.unwrapped.examples) == 1
    env2.reset(options={"task_index": 0})
    _, _, _, _, info = env2.step("Search[sproingle]")
    assert info["extra"]["retrieved_titles"][:1] == ["Quillon Brevaard"]


def test_hotpotqa_json_list_layouts_and_mixing(multihop_data: str, tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    no_id = {k: v for k, v in QUESTIONS[1].items() if k != "_id"}
    path.write_text(json.dumps([QUESTIONS[0], no_id, {"question": "Who?", "answer": 7, "context": [["T", "One string."]]}]))
    examples = load_dataset(multihop_data, str(path))
    assert [ex.id for ex in examples] == ["zq1", "mine.json:2", "mine.json:3"]
    assert examples[0].supporting_titles == ("Zorblax Quintet", "Quillon Brevaard")
    assert examples[0].paragraphs[1].text == "Quillon Brevaard is a musician from Ostermoor. He plays the glimmerhorn."
    assert examples[2].answers == ("7",) and examples[2].paragraphs[0].text == "One string."
    mixed = load_dataset(multihop_data, f"musique_dev200, {path}")
    assert len(mixed) == 203 and mixed[-1].source == "mine.json"
    ircot = tmp_path / "ircot.jsonl"  # the IRCoT layout of the bundled hotpotqa_ircot500 file works too
    _write_jsonl(ircot, [{"question_id": "i1", "question_text": "Q?", "answers_objects": [{"spans": ["A"]}],
                          "contexts": [{"title": "T", "paragraph_text": "P.", "is_supporting": True}]}])  # fmt: skip
    (ex,) = load_dataset(multihop_data, str(ircot))
    assert ex.id == "i1" and ex.answers == ("A",) and ex.supporting_titles == ("T",)


BAD_FILES = [
    ("broken-json-line", "bad.jsonl", json.dumps(QUESTIONS[0]) + "\n{\"_id\": \"x\", \"question\": \n", "line 2: not valid JSON"),
    ("missing-question", "bad.jsonl", json.dumps(QUESTIONS[0]) + "\n" + json.dumps({"_id": "x", "answer": "y"}) + "\n",
     "line 2: the record has no 'question' field"),
    ("not-an-object", "bad.jsonl", "[1, 2]\n", "line 1: a JSON object was expected, not list"),
    ("empty-answer", "bad.jsonl", json.dumps({"question": "Q?", "answer": " "}) + "\n", "line 1: the answer is empty"),
    ("bad-context", "bad.json", json.dumps([QUESTIONS[0], dict(QUESTIONS[1], context=[["only a title"]])]),
     "record 2: a field has the wrong shape"),
    ("broken-json-list", "bad.json", "[\n" + json.dumps(QUESTIONS[0]) + ",\n{oops}\n]", "line 3: not valid JSON"),
    ("empty-file", "bad.jsonl", "\n\n", "the whole file: it holds no records"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "filename", "content", "fragment"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_hotpotqa_file_is_one_line_naming_file_and_line(
    multihop_data: str, tmp_path: Path, name: str, filename: str, content: str, fragment: str
) -> None:
    path = tmp_path / filename
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        gymnasium.make("steppo/MultiHopQA-v0", split=str(path), data_dir=multihop_data)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and fragment in message, message
    assert "HotpotQA layout" in message and '"supporting_facts"' in message  # the expected layout


def test_missing_hotpotqa_file_and_unknown_name(multihop_data: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dataset file .*nope.jsonl' does not exist"):
        gymnasium.make("steppo/MultiHopQA-v0", split=str(tmp_path / "nope.jsonl"), data_dir=multihop_data)
    with pytest.raises(ConfigError, match="your own .json / .jsonl file"):
        gymnasium.make("steppo/MultiHopQA-v0", split="my_questions", data_dir=multihop_data)


# -- PaperSearch -----------------------------------------------------------------------------------

PAPERS = [
    ("zz-flumbric", "Flumbric gradient wrangling for sparse quokkas", "We wrangle flumbric gradients.", 2019),
    ("zz-braid", "Quixotic tensor braiding", "Braiding tensors quixotically with zorbic lattices.", 2021),
    ("zz-future", "Flumbric wrangling revisited", "Later flumbric work.", 2025),
    ("zz-lattice", "Zorbic lattices for tensor braiding", "A zorbic lattice method.", 2018),
    ("zz-other", "An unrelated study of teapots", "Teapots and their spouts.", 2017),
]


def _corpus(path: Path, papers: list[tuple[str, str, str, int]] = PAPERS) -> Path:
    return _write_jsonl(path, [{"id": i, "title": t, "abstract": a, "year": y, "venue": "zconf"} for i, t, a, y in papers])


USER_QUESTIONS = [
    {"qid": "uq1", "query": "papers on flumbric gradient wrangling", "date": "2020-01", "gold": [{"corpus_id": "zz-flumbric"}]},
    {"qid": "uq2", "query": "tensor braiding with zorbic lattices", "gold": ["zz-braid", "zz-lattice"]},
]


def _paper_env(questions: Path, corpus: Path | None, **kw: Any) -> Any:
    files = {"questions_file": str(questions)} | ({"corpus_file": str(corpus)} if corpus else {})
    return gymnasium.make("steppo/PaperSearch-v0", progress=False, **files, **kw)


def test_paper_search_user_questions_and_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STEPPO_DATA_DIR", str(tmp_path / "no-data-needed"))
    questions = _write_jsonl(tmp_path / "questions.jsonl", USER_QUESTIONS)
    corpus = _corpus(tmp_path / "corpus.jsonl")
    env = _paper_env(questions, corpus)
    assert [t.qid for t in env.unwrapped.tasks] == ["uq1", "uq2"] and len(env.unwrapped.resources.corpus) == 5
    obs, info = env.reset(options={"task_index": 0})
    assert "flumbric gradient wrangling" in obs and info["task_id"] == "uq1" and info["extra"]["split"] == "user"
    _, _, _, _, info = env.step("Search[flumbric wrangling]")
    assert info["extra"]["surfaced_this_step"] == ["zz-flumbric"]  # zz-future is after the 2020 cut-off (+1)
    _, reward, *_ = env.step("Select[zz-flumbric]")
    assert reward == pytest.approx(1.0)
    _, _, terminated, _, info = env.step("Finish[]")
    assert terminated and info["success"] and info["metrics"]["recall_all"] == 1.0

    obs, info = env.reset(options={"task_index": 1})  # no date: every paper is searchable
    assert "Searchable papers: all" in obs
    _, _, _, _, info = env.step('<tool_call>{"name": "search", "arguments": {"query": "zorbic lattices braiding"}}</tool_call>')
    assert set(info["extra"]["surfaced_this_step"][:2]) == {"zz-braid", "zz-lattice"}
    _, reward, *_ = env.step("Select[zz-braid, zz-lattice]")
    assert reward == pytest.approx(1.0)

    # the same corpus path with new content: a new index, never the cached one
    _corpus(corpus, [*PAPERS[:4], ("zz-other", "Sproingle teapots", "Teapots.", 2017)])
    env2 = _paper_env(questions, corpus)
    assert env2.unwrapped.resources is not env.unwrapped.resources
    env2.reset(options={"task_index": 0})
    _, _, _, _, info = env2.step("Search[sproingle]")
    assert info["extra"]["surfaced_this_step"] == ["zz-other"]


BAD_PAPER_FILES = [
    ("questions", "broken-json-line", json.dumps(USER_QUESTIONS[0]) + "\n{\"qid\": \n", "line 2: not valid JSON"),
    ("questions", "missing-query", json.dumps(USER_QUESTIONS[0]) + "\n" + json.dumps({"qid": "x", "gold": ["zz-braid"]}) + "\n",
     "line 2: the record has no 'query' field"),
    ("questions", "gold-not-in-corpus", json.dumps({"qid": "x", "query": "q", "gold": ["zz-nope"]}) + "\n",
     "line 1: gold paper 'zz-nope' is not in the corpus"),
    ("questions", "bad-date", json.dumps({"qid": "x", "query": "q", "date": "soon", "gold": ["zz-braid"]}) + "\n",
     "line 1: 'date' must look like YYYY-MM"),
    ("questions", "empty-gold", json.dumps({"qid": "x", "query": "q", "gold": []}) + "\n", "line 1: 'gold' must be a non-empty list"),
    ("corpus", "missing-id", json.dumps({"id": "a", "title": "A"}) + "\n" + json.dumps({"title": "B"}) + "\n",
     "line 2: the record has no 'id' field"),
    ("corpus", "duplicate-id", json.dumps({"id": "a", "title": "A"}) + "\n" + json.dumps({"id": "a", "title": "B"}) + "\n",
     "line 2: paper id 'a' is also at line 1"),
    ("corpus", "bad-year", json.dumps({"id": "a", "title": "A", "year": "recent"}) + "\n", "line 1: 'year' must be a number"),
]  # fmt: skip


@pytest.mark.parametrize(("which", "name", "content", "fragment"), BAD_PAPER_FILES, ids=[f"{b[0]}-{b[1]}" for b in BAD_PAPER_FILES])
def test_bad_paper_search_file_is_one_line_naming_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str, name: str, content: str, fragment: str
) -> None:
    monkeypatch.setenv("STEPPO_CACHE_DIR", str(tmp_path / "cache"))
    questions = _write_jsonl(tmp_path / "questions.jsonl", USER_QUESTIONS)
    corpus = _corpus(tmp_path / "corpus.jsonl")
    bad = questions if which == "questions" else corpus
    bad.write_text(content)
    with pytest.raises(ConfigError) as err:
        _paper_env(questions, corpus)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and fragment in message, message
    assert ("scholargym_mlanth_matched.jsonl" if which == "questions" else "mlanthology_corpus.jsonl.gz") in message


def test_paper_search_user_file_option_errors(tmp_path: Path) -> None:
    questions = _write_jsonl(tmp_path / "questions.jsonl", USER_QUESTIONS)
    with pytest.raises(ConfigError, match="corpus_file needs questions_file"):
        gymnasium.make("steppo/PaperSearch-v0", corpus_file=str(_corpus(tmp_path / "corpus.jsonl")))
    with pytest.raises(ConfigError, match="questions file .*nope.jsonl' does not exist"):
        _paper_env(tmp_path / "nope.jsonl", None)
    with pytest.raises(ConfigError, match="corpus file .*nope.jsonl' does not exist"):
        _paper_env(questions, tmp_path / "nope.jsonl")


def _have_paper_data() -> bool:
    try:
        steppo_envs.resolve_data_dir(subdir="paper_search")
    except steppo_envs.DataDirError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _have_paper_data(), reason="../shared/data/paper_search is not available")
def test_paper_search_user_questions_over_the_bundled_corpus(tmp_path: Path) -> None:
    """Only a question file: the bundled 154k-paper corpus is searched (its index comes from the cache)."""
    questions = _write_jsonl(tmp_path / "questions.jsonl", [
        {"qid": "ica", "query": "stochastic algorithms for independent component analysis", "date": "2019-06",
         "gold": [{"corpus_id": "ablin2019aistats-stochastic"}, {"corpus_id": None}], "n_gold": 2},
    ])  # fmt: skip
    with pytest.raises(ConfigError, match="include_partial=True"):  # one of its two gold papers is outside the corpus
        _paper_env(questions, None)
    env = _paper_env(questions, None, include_partial=True)
    env.reset(options={"task_index": 0})
    _, _, _, _, info = env.step("Search[Stochastic algorithms with descent guarantees for ICA]")
    assert "ablin2019aistats-stochastic" in info["extra"]["surfaced_this_step"]
    _, reward, *_ = env.step("Select[ablin2019aistats-stochastic]")
    assert reward == pytest.approx(1.0)  # the scored gold: the one in the corpus


def test_paper_search_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/paper_search.md's "Your own questions and corpus" block runs as written (it holds its asserts)."""
    monkeypatch.setenv("STEPPO_CACHE_DIR", str(tmp_path / "cache"))
    doc = Path(__file__).resolve().parent.parent / "docs" / "paper_search.md"
    code = doc.read_text(encoding="utf-8").split("<!-- example: paper-search-own-data -->", 1)[1]
    code = code.split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code, str(doc), "exec"), {"__name__": "steppo_docs_paper_search"})
