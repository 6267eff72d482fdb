"""steppo/MultiHopQA-v0: loaders, contract, scripted oracle, rewards, rendering and robustness."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gymnasium
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from steppo_envs import ConfigError, DataDirError, MissingExtraError, check_step_env, parse_action
from steppo_envs.multihop import SEARCH_TOOL, MultiHopQAConfig, MultiHopQAEnv
from steppo_envs.multihop.data import DATASETS, SPLITS, load_dataset, load_named, pooled_corpus
from steppo_envs.paths import resolve_data_dir

DATA = str(resolve_data_dir())


@pytest.fixture(scope="module")
def env() -> MultiHopQAEnv:
    return MultiHopQAEnv(split="hotpotqa_ircot500")


def search(query: str) -> str:
    return "<tool_call>" + json.dumps({"name": "search", "arguments": {"query": query}}) + "</tool_call>"


# -- data ----------------------------------------------------------------------------------------


def test_dataset_sizes_and_fields() -> None:
    sizes = {name: len(load_named(DATA, name)) for name in DATASETS}
    assert sizes == {
        "hotpotqa_ircot500": 500,
        "hotpotqa_train100": 100,
        "musique_train100": 100,
        "hotpotqa_dev200": 200,
        "musique_dev200": 200,
        "2wiki_dev200": 200,
    }
    for name in DATASETS:
        for ex in load_named(DATA, name):
            assert ex.id and ex.question and ex.answers and all(ex.answers) and ex.supporting_titles
            assert ex.source == name
    wiki = load_named(DATA, "2wiki_dev200")
    assert sum(bool(ex.paragraphs) for ex in wiki) == 164
    ircot = load_named(DATA, "hotpotqa_ircot500")
    assert all(len(ex.paragraphs) >= 2 and len(ex.supporting_titles) == 2 for ex in ircot)
    musique = load_named(DATA, "musique_train100")
    assert any(len(ex.answers) > 1 for ex in musique)  # aliases are kept


def test_splits_are_disjoint() -> None:
    train, evaluation = load_dataset(DATA, "train"), load_dataset(DATA, "eval")
    assert {ex.source for ex in train} == set(SPLITS["train"])
    assert {ex.source for ex in evaluation} == set(SPLITS["eval"])
    assert len(evaluation) == 600
    assert not {ex.id for ex in train} & {ex.id for ex in evaluation}
    assert len(train) == 600 - 15  # 15 IRCoT questions are also in the HotpotQA evaluation file
    both = load_dataset(DATA, "musique_train100, 2wiki_dev200")
    assert len(both) == 300


def test_pooled_corpus_is_unique_and_covers_all_files() -> None:
    corpus = pooled_corpus(DATA)
    assert 15_000 < len(corpus) < 25_000
    keys = {(p.title, " ".join(p.text.split())) for p in corpus}
    assert len(keys) == len(corpus)
    titles = {p.title for p in corpus}
    for name in ("hotpotqa_ircot500", "hotpotqa_dev200", "musique_dev200"):
        assert all(t in titles for ex in load_named(DATA, name) for t in ex.supporting_titles)


def test_2wiki_python_literal_fields(tmp_path: Path) -> None:
    folder = tmp_path / "multihop_qa"
    folder.mkdir()
    rec = {
        "_id": "w1",
        "question": "Who directed X?",
        "answer": "Y",
        "supporting_facts": "[['X', 0], ['Y', 1]]",
        "context": "[['X', ['X is a film.', 'It was directed by Y.']]]",
    }
    (folder / "migres_2wiki200.jsonl").write_text(json.dumps(rec) + "\n")
    (ex,) = load_named(str(tmp_path), "2wiki_dev200")
    assert ex.supporting_titles == ("X", "Y")
    assert ex.paragraphs[0].text == "X is a film. It was directed by Y."


def test_unknown_dataset_and_missing_extra() -> None:
    with pytest.raises(ConfigError, match="hotpotqa_ircot500"):
        MultiHopQAEnv(split="nope")
    with pytest.raises(MissingExtraError, match=r"steppo\[datasets\]"):
        MultiHopQAEnv(split="hub:hotpot_qa")
    with pytest.raises(ConfigError, match="hub:hotpot_qa"):
        MultiHopQAEnv(split="hub:squad")


# -- contract and configuration ----------------------------------------------------------------


def test_check_step_env_multihop() -> None:
    env = gymnasium.make("steppo/MultiHopQA-v0")
    check_step_env(env)
    check_step_env(MultiHopQAEnv(split="eval", max_steps=2, invalid_penalty=0.5), seed=3)


def test_unknown_override_names_valid_fields() -> None:
    with pytest.raises(ConfigError) as err:
        MultiHopQAEnv(max_step=3)
    assert "max_step" in str(err.value) and "max_steps" in str(err.value) and "top_k" in str(err.value)
    with pytest.raises(ConfigError, match="max_steps"):
        MultiHopQAEnv(max_steps=0)
    with pytest.raises(ConfigError, match="invalid_penalty"):
        MultiHopQAEnv(invalid_penalty=-1.0)


def test_missing_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataDirError) as err:
        MultiHopQAEnv(data_dir=str(tmp_path / "nowhere"))
    assert "data_dir" in str(err.value) and "STEPPO_DATA_DIR" in str(err.value)
    monkeypatch.setenv("STEPPO_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DataDirError, match="STEPPO_DATA_DIR"):
        MultiHopQAEnv()


def test_config_object_and_overrides() -> None:
    env = MultiHopQAEnv(MultiHopQAConfig(max_steps=3), top_k=2, data_dir=DATA)
    assert env.config.max_steps == 3 and env.config.top_k == 2
    _, info = env.reset(seed=0)
    assert info["max_steps"] == 3 and info["tools"] == [SEARCH_TOOL.to_openai()]
    assert "Search[" in info["system_prompt"] and "<answer>" in info["system_prompt"]


def test_second_construction_reuses_loaded_data(env: MultiHopQAEnv) -> None:
    again = MultiHopQAEnv(split="hotpotqa_ircot500", max_steps=7)
    assert again.index is env.index and again.examples is env.examples
    assert MultiHopQAEnv(split="eval").index is env.index  # one corpus for every dataset


def test_reset_seed_and_task_index(env: MultiHopQAEnv) -> None:
    first = env.reset(seed=11)
    assert env.reset(seed=11) == first
    ids = {env.reset(seed=s)[1]["task_id"] for s in range(20)}
    assert len(ids) > 10
    obs, info = env.reset(options={"task_index": 3})
    assert info["task_id"] == env.examples[3].id and env.examples[3].question in obs
    with pytest.raises(ConfigError, match="task_index"):
        env.reset(options={"task_index": 10_000})


# -- episodes and rewards ----------------------------------------------------------------------


def test_scripted_oracle_gets_reward_on_ircot(env: MultiHopQAEnv) -> None:
    solved, recall = 0, 0.0
    for i in range(len(env.examples)):
        env.reset(options={"task_index": i})
        ex = env.examples[i]
        for title in ex.supporting_titles:
            _, reward, terminated, truncated, info = env.step(search(title))
            assert (reward, terminated, truncated, info["valid"]) == (0.0, False, False, True)
        _, reward, terminated, truncated, info = env.step(f"<answer>{ex.answers[0]}</answer>")
        assert terminated and not truncated
        solved += reward == 1.0 and info["success"]
        recall += info["metrics"]["support_recall"]
    assert solved / len(env.examples) >= 0.95
    assert recall / len(env.examples) >= 0.9


def test_wrong_answer_gets_zero(env: MultiHopQAEnv) -> None:
    env.reset(options={"task_index": 0})
    _, reward, terminated, truncated, info = env.step("Answer[definitely not the answer]")
    assert (reward, terminated, truncated) == (0.0, True, False)
    assert info["success"] is False and info["metrics"]["em"] == 0.0
    assert info["extra"]["gold_answers"] == list(env.examples[0].answers)


def test_compact_answer_normalised_and_f1(env: MultiHopQAEnv) -> None:
    env.reset(options={"task_index": 0})
    gold = env.examples[0].answers[0]  # "Chief of Protocol"
    _, reward, terminated, _, info = env.step(f"Thought: done.\nanswer[  the {gold.upper()}. ]")
    assert reward == 1.0 and terminated and info["success"] and info["metrics"]["f1"] == 1.0
    env.reset(options={"task_index": 0})
    _, reward, _, _, info = env.step(f"Answer[{gold} of the United States]")
    assert reward == 0.0 and 0.0 < info["metrics"]["f1"] < 1.0


def test_search_results_and_recall_metric(env: MultiHopQAEnv) -> None:
    obs, info = env.reset(options={"task_index": 0})
    assert info["metrics"]["support_recall"] == 0.0 and info["action"] is None
    title = env.examples[0].supporting_titles[0]
    obs, reward, _, _, info = env.step(f"Search[{title}]")
    assert reward == 0.0 and info["valid"] and info["feedback"] is None
    assert f"[1] {title}:" in obs and "Steps left: 4." in obs
    support = env.examples[0].supporting_titles
    expected = sum(t in info["extra"]["retrieved_titles"] for t in support) / len(support)
    assert info["metrics"]["support_recall"] == expected >= 0.5 and info["metrics"]["searches"] == 1.0
    assert info["extra"]["retrieved_titles"][0] == title and len(info["extra"]["retrieved_titles"]) <= 5


def test_invalid_steps_count_and_truncate() -> None:
    env = MultiHopQAEnv(invalid_penalty=0.25)
    env.reset(seed=0)
    for step in range(1, 6):
        obs, reward, terminated, truncated, info = env.step("Search[   ]" if step % 2 else "hello")
        assert reward == -0.25 and not info["valid"] and info["feedback"]
        assert "invalid" in obs and (terminated, truncated) == (False, step == 5)
    assert "The episode has ended." in obs
    with pytest.raises(RuntimeError, match="reset"):
        env.step("Answer[x]")


def test_searches_until_truncation_and_answer_on_last_step(env: MultiHopQAEnv) -> None:
    env.reset(options={"task_index": 1})
    for step in range(1, 6):
        _, reward, terminated, truncated, _ = env.step(f"Search[query number {step}]")
        assert reward == 0.0 and not terminated and truncated == (step == 5)
    env.reset(options={"task_index": 1})
    for _ in range(4):
        env.step("Search[something]")
    obs, _, terminated, truncated, _ = env.step(f"Answer[{env.examples[1].answers[0]}]")
    assert terminated and not truncated


def test_several_searches_in_one_step() -> None:
    env = MultiHopQAEnv(max_tool_calls=2, top_k=2)
    env.reset(options={"task_index": 0})
    a, b = env.examples[0].supporting_titles
    obs, _, _, _, info = env.step(search(a) + search(b))
    assert info["valid"] and info["extra"]["queries"] == [a, b] and info["metrics"]["searches"] == 2.0
    assert info["metrics"]["support_recall"] == 1.0 and f"Search[{a}]; Search[{b}]" in obs
    _, _, _, _, info = env.step(search(a) + search(b) + search("x"))
    assert not info["valid"] and "at most 2" in info["feedback"]


def test_invalid_feedback_shows_hint(env: MultiHopQAEnv) -> None:
    env.reset(seed=0)
    obs, _, _, _, info = env.step('<tool_call>{"name": "lookup", "arguments": {}}</tool_call>')
    assert "unknown tool 'lookup'" in info["feedback"] and "Search[...]" in info["feedback"]
    assert "unknown tool 'lookup'" in obs and "Search[...]" in obs


def test_budget_and_history_shrinking() -> None:
    env = MultiHopQAEnv(budget_chars=1500, max_steps=6)
    obs, _ = env.reset(options={"task_index": 0})
    question = env.examples[0].question
    for query in ("Corliss Archer", "Shirley Temple", "Kiss and Tell film", "government position"):
        obs, *_ = env.step(f"Search[{query}]")
        assert len(obs) <= 1500 and question in obs and "Steps left:" in obs
    assert "latest results: Search[government position]" in obs
    assert "Search[Corliss Archer]" not in obs  # the oldest search went first


def test_observation_passages_cut() -> None:
    env = MultiHopQAEnv(passage_chars=80, history_passage_chars=0)
    env.reset(options={"task_index": 0})
    obs, *_ = env.step("Search[Shirley Temple]")
    lines = [line for line in obs.splitlines() if line.startswith("[")]
    assert lines and all(len(line) <= 80 + 60 for line in lines)
    obs, *_ = env.step("Search[Corliss Archer]")
    assert "earlier search: Search[Shirley Temple]" in obs


def test_rank_bm25_backend_same_top_hit(env: MultiHopQAEnv) -> None:
    other = MultiHopQAEnv(search_backend="rank_bm25")
    for ex in env.examples[:10]:
        assert other.index.search(ex.question, k=1)[0].title == env.index.search(ex.question, k=1)[0].title


# -- robustness ----------------------------------------------------------------------------------

@dataclass
class _FuzzState:
    """One environment shared by all Hypothesis examples, and the steps taken in its episode."""

    env: MultiHopQAEnv | None = None
    steps: int = 0


_FUZZ = _FuzzState()


def _fuzz_env() -> MultiHopQAEnv:
    if _FUZZ.env is None:
        _FUZZ.env = MultiHopQAEnv(split="eval")
        _FUZZ.env.reset(seed=0)
        _FUZZ.steps = 0
    return _FUZZ.env


ACTIONS = st.one_of(
    st.text(),
    st.text().map(lambda s: f"Search[{s}]"),
    st.text().map(lambda s: f"<tool_call>{s}</tool_call>"),
    st.text().map(lambda s: search(s)),
    st.text(alphabet="[]<>{}\"':/_ SearchAnswtool_cl", max_size=60),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(ACTIONS)
def test_arbitrary_strings_never_crash(action: str) -> None:
    env = _fuzz_env()
    assume(parse_action(action, env.tools).kind != "answer")
    obs, reward, terminated, truncated, info = env.step(action)
    _FUZZ.steps += 1
    assert isinstance(obs, str) and obs and reward == 0.0 and not terminated
    assert truncated == (_FUZZ.steps == env.config.max_steps)
    json.dumps(info)
    if truncated:
        env.reset()
        _FUZZ.steps = 0


def test_expert_action_follows_the_oracle_and_answers_on_the_last_step() -> None:
    env = MultiHopQAEnv(split="hotpotqa_ircot500", expert=True, max_steps=6)
    solved = 0
    for i in range(20):
        _, info = env.reset(options={"task_index": i})
        ex = env.examples[i]
        assert info["extra"]["expert_action"] == f"Search[{ex.supporting_titles[0]}]"
        done = False
        while not done:
            action = info["extra"]["expert_action"]
            _, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        assert terminated and action == f"Answer[{ex.answers[0]}]" and "expert_action" not in info["extra"]
        solved += reward == 1.0
    assert solved >= 19
    short = MultiHopQAEnv(split="hotpotqa_ircot500", expert=True, max_steps=1)
    _, info = short.reset(options={"task_index": 0})
    assert info["extra"]["expert_action"] == f"Answer[{short.examples[0].answers[0]}]"
    assert "expert_action" not in MultiHopQAEnv(split="hotpotqa_ircot500").reset(options={"task_index": 0})[1]["extra"]
