"""Bad invocations end with one line ``steppo: error: <what> — <how to fix>`` and exit code 2.

Table-driven: each row is the arguments, the expected exit code and a fragment of the message. Every
row is checked before a model loads where possible (the env and options are validated first), so
the table runs in seconds. ``--debug`` turns the line back into a traceback.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import broken_envs  # noqa: F401  (registers steppotest/NeedsExtra-v0 and NoExpert-v0)
import pytest

import steppo_envs
from steppo.cli import main

TOY = "toy_env:steppotest/Guess-v0"
FAKE = ["--policy", "toy_env:make_fake_policy"]
MH = ["--env", "steppo/MultiHopQA-v0"]


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    """main() sets logging variables in os.environ; keep them from leaking into other tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _needs_multihop_data() -> None:
    try:
        steppo_envs.resolve_data_dir(subdir="multihop_qa")
    except steppo_envs.DataDirError:
        pytest.skip("multihop_qa data not found (set STEPPO_DATA_DIR)")


# (id, arguments, exit code, fragment of the message). {tmp} is a fresh folder; {existing} a file with content;
# {empty} an empty file.
CASES: list[tuple[str, list[str], int, str]] = [
    ("env-arg without =", ["rollout", "--env", TOY, *FAKE, "--env-arg", "foo"], 2, "must look like key=value"),
    ("misspelt env option", ["rollout", *MH, "--env-arg", "max_step=3"], 2, "did you mean max_steps"),
    ("env option of the wrong type", ["rollout", *MH, "--env-arg", "max_steps=abc"], 2, "max_steps: Input should be a valid integer"),
    ("unknown env id", ["rollout", "--env", "steppo/Nope-v0", *FAKE], 2, "steppo envs"),
    ("missing data folder", ["rollout", *MH, "--env-arg", "data_dir=/nonexistent/steppo-data"], 2, "STEPPO_DATA_DIR"),
    ("dataset file that is not JSON", ["rollout", *MH, "--env-arg", "dataset={existing}"], 2, "line 1: not valid JSON"),
    ("missing dataset file", ["rollout", *MH, "--env-arg", "dataset=/nonexistent/mine.jsonl"], 2, "does not exist"),
    ("questions file that is not JSON", ["rollout", "--env", "steppo/PaperSearch-v0", "--env-arg", "questions_file={existing}"],
     2, "line 1: not valid JSON"),
    ("missing extra", ["rollout", "--env", "steppotest/NeedsExtra-v0", *FAKE], 2, "pip install 'steppo[imaginary]'"),
    ("negative temperature", ["rollout", "--env", TOY, *FAKE, "--temperature", "-1"], 2, "temperature"),
    ("zero tasks", ["rollout", "--env", TOY, *FAKE, "-n", "0"], 2, "--num-tasks 1 or more"),
    ("flag value not an int", ["eval", "--max-model-len", "abc"], 2, "invalid int value"),
    ("unknown flag", ["rollout", "--nope"], 2, "unrecognized arguments"),
    ("unknown model name", ["rollout", "--env", TOY, "--model", "no-such-model"], 2, "smollm2-135m"),
    ("missing model folder", ["rollout", "--env", TOY, "--model", "/nonexistent/model"], 2, "not a folder"),
    ("folder that is not a model", ["rollout", "--env", TOY, "--model", "{tmp}"], 2, "has no config.json"),
    ("unreachable server", ["rollout", "--env", TOY, "--backend", "openai", "--base-url", "http://127.0.0.1:9"], 2, "127.0.0.1:9"),
    ("bad --policy", ["rollout", "--env", TOY, "--policy", "no_such_module:make"], 2, "cannot be loaded"),
    ("unwritable output folder", ["rollout", "--env", TOY, *FAKE, "--output", "/proc/steppo/out.jsonl"], 2, "output folder"),
    ("output exists, no --resume", ["rollout", "--env", TOY, *FAKE, "--output", "{existing}"], 2, "pass --resume"),
    ("expert without an expert command", ["rollout", "--env", "steppotest/NoExpert-v0", "--backend", "expert",
                                          "--env-arg", "expert=true", "-q", "--output", "{tmp}/x.jsonl"], 2, "no next command"),
    ("unreadable trajectory file", ["inspect", "/nonexistent/run.jsonl"], 2, "does not exist"),
    ("not a trajectory file", ["inspect", "{existing}"], 2, "is not a trajectory record"),
    ("inspect an empty file", ["inspect", "{empty}"], 2, "holds no trajectories"),
    ("inspect a folder", ["inspect", "{tmp}"], 2, "is a folder, not a file"),
    ("unknown --set key", ["train", "--set", "actor_lrr=1e-6"], 2, "did you mean actor_lr"),
    ("unknown key in the first of two --set", ["train", "--set", "actor_lrr=1e-6", "--set", "gamma=1.0"], 2,
     "did you mean actor_lr"),
    ("--set value of the wrong type", ["train", "--set", "iterations=many"], 2, "iterations: Input should be a valid integer"),
    ("--set learning rate not a number", ["train", "--set", 'actor_lr="fast"'], 2, "actor_lr: Input should be a valid number"),
    ("--set save_every not an int", ["train", "--set", "save_every=abc"], 2, "save_every: Input should be a valid integer"),
    ("negative iterations", ["train", "--set", "iterations=-3"], 2, "iterations must be >= 1"),
    ("negative --iterations flag", ["train", "--iterations", "-3"], 2, "iterations must be >= 1"),
    ("zero save_every", ["train", "--set", "save_every=0"], 2, "save_every must be >= 1"),
    ("zero learning rate", ["train", "--set", "critic_lr=0"], 2, "critic_lr must be > 0"),
    ("negative LoRA rank", ["train", "--set", "lora.rank=-1"], 2, "lora.rank must be >= 0"),
    ("infinite learning rate", ["train", "--set", "actor_lr=Infinity"], 2, "actor_lr must be a finite number"),
    ("negative eval_every", ["train", "--set", "eval_every=-1"], 2, "eval_every must be >= 0"),
    ("unknown parallel mode", ["train", "--set", "parallel=zero3"], 2, "parallel: Input should be 'none', 'ddp' or 'fsdp'"),
    ("lora with fsdp", ["train", "--set", "lora.rank=8", "parallel=fsdp"], 2, "use --set parallel=ddp"),
    ("zero tasks per iteration", ["train", "--tasks", "0"], 2, "rollout.num_tasks must be >= 1 (got 0): pass --tasks 1 or more"),
    ("top_p out of range", ["train", "--set", "top_p=1.5"], 2, "top_p must be in (0, 1]"),
    ("negative train temperature", ["train", "--set", "temperature=-0.5"], 2, "temperature must be >= 0"),
    ("unknown algorithm", ["train", "--algo", "nope"], 2, "unknown algo"),
    ("missing config file", ["train", "--config", "/nonexistent/c.yaml"], 2, "config file"),
    ("config file not a mapping", ["train", "--config", "{existing}"], 2, "mapping"),
    ("missing offline trajectories", ["train", "--from-trajectories", "/nonexistent/t.jsonl", "--output-dir", "{tmp}/o"], 2, "no such file"),
    ("train with a misspelt env option", ["train", *MH, "--env-arg", "max_step=3", "--output-dir", "{tmp}/o"], 2, "max_step"),
    ("play an unknown env", ["play", "steppo/Nope-v0"], 2, "steppo envs"),
]


@pytest.mark.parametrize(("name", "argv", "code", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line(
    name: str, argv: list[str], code: int, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "steppo/MultiHopQA-v0" in argv:
        _needs_multihop_data()
    existing = tmp_path / "existing.jsonl"
    existing.write_text("- not a trajectory\n- and not a mapping\n")
    (tmp_path / "empty.jsonl").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{existing}", str(existing)).replace("{empty}", str(tmp_path / "empty.jsonl"))
            for a in argv]
    with pytest.raises(SystemExit) if argv[0] in ("eval",) or "--nope" in argv else _returns() as box:
        box.value = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert box.value == code or getattr(box.value, "code", None) == code
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("steppo: error: "), err
    assert fragment in lines[-1], lines[-1]


class _Box:
    value: object = None


class _returns:
    """A context that hands out a box for main()'s return value (mirrors pytest.raises for exits)."""

    def __enter__(self) -> _Box:
        return _Box()

    def __exit__(self, *exc: object) -> None:
        return None


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(steppo_envs.ConfigError, match="did you mean max_steps"):
        main(["--debug", "rollout", "--env", TOY, *FAKE, "--env-arg", "max_step=3"])


def test_misspelt_option_leaves_an_existing_file_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.jsonl"
    assert main(["rollout", "--env", TOY, *FAKE, "-n", "2", "-q", "--output", str(out)]) == 0
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    assert out.read_text().count("\n") == 2
    code = main(["rollout", "--env", TOY, *FAKE, "-n", "4", "-q", "--output", str(out), "--resume",
                 "--env-arg", "max_step=3"])
    err = capsys.readouterr().err
    assert code == 2 and "steppo: error: unknown option(s) max_step" in err and "did you mean max_steps" in err
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before


def test_library_rollout_checks_the_env_before_writing(tmp_path: Path) -> None:
    """run_rollout itself (not only the CLI) stops on a bad option before touching the file."""
    import toy_env

    from steppo_agent.rollout import RolloutConfig, run_rollout

    out = tmp_path / "r.jsonl"
    out.write_text("")
    config = RolloutConfig(env_id=toy_env.ENV_ID, env_kwargs={"max_step": 3}, output=out, resume=True)
    with pytest.raises(steppo_envs.ConfigError, match="max_step"):
        run_rollout(toy_env.FakePolicy(toy_env.load_tokenizer()), config)
    assert out.read_bytes() == b""


@pytest.mark.parametrize(
    ("changed", "fragment"),
    [
        (["--env-arg", "max_steps=3"], "env options"),
        (["--temperature", "0.5"], "sampling temperature=1.0, not temperature=0.5"),
        (["--max-tokens", "32"], "max_tokens=64, not max_tokens=32"),
        (["--model", "other-model"], "the policy fake:smollm2-135m, not fake:other-model"),
    ],
)
def test_resume_onto_other_settings_is_refused(
    changed: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file never mixes two configurations: --resume with other env options, sampling or model stops
    with one line naming the fix, and the file is left as it was."""
    out = tmp_path / "r.jsonl"
    assert main(["rollout", "--env", TOY, *FAKE, "-n", "2", "-q", "--output", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    code = main(["rollout", "--env", TOY, *FAKE, "-n", "4", "-q", "--output", str(out), "--resume", *changed])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("steppo: error: "), lines
    assert fragment in lines[0] and "--output NEW.jsonl" in lines[0], lines[0]
    assert out.read_bytes() == before
    # the same settings continue the file
    assert main(["rollout", "--env", TOY, *FAKE, "-n", "4", "-q", "--output", str(out), "--resume"]) == 0
    assert out.read_text().count("\n") == 4


def test_deprecated_env_option_warns_on_the_command_line(tmp_path: Path) -> None:
    """Python hides library DeprecationWarnings; the CLI shows a renamed env option's."""
    import subprocess
    import sys

    out = tmp_path / "x.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "steppo", "rollout", "--backend", "expert", "--env", "steppo/MultiHopQA-v0",
         "--env-arg", "dataset=eval", "-n", "1", "-q", "-o", str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    warned = [line for line in proc.stderr.splitlines() if "DeprecationWarning" in line]
    assert warned, proc.stderr
    assert all("'dataset' is deprecated" in line and "use 'split'" in line for line in warned)


def test_a_run_that_fails_before_its_first_episode_leaves_no_empty_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the default output goes to ./runs/
    assert main(["rollout", "--env", TOY, "--backend", "openai", "--base-url", "http://127.0.0.1:9"]) == 2
    assert "127.0.0.1:9" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.jsonl"))


SEED_RANGE = "is out of range: pass an integer in 0..9223372036854775807 (0 <= seed < 2**63)"


@pytest.mark.parametrize("argv", [
    ["rollout", "--env", TOY, *FAKE, "--seed", "18446744073709551616"],
    ["rollout", "--env", TOY, *FAKE, "--sampling-seed", "-1"],
    ["eval", "--env", TOY, *FAKE, "--seed", str(2**63)],
    ["play", TOY, "--seed", "18446744073709551616"],
    ["train", "--seed", "18446744073709551616"],
], ids=["rollout --seed 2**64", "rollout --sampling-seed -1", "eval --seed 2**63", "play --seed 2**64",
        "train --seed 2**64"])
def test_a_seed_out_of_range_is_one_line_naming_the_range(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 38: a seed of 2**64 reached the vLLM engine and wedged it; seed flags now take 0..2**63-1."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("steppo: error: argument --") and SEED_RANGE in lines[0], lines[0]


def test_repeated_set_options_accumulate() -> None:
    """Issue 38: ``--set a=1 --set b=2`` kept only the last list; every --set counts, a key set twice keeps
    its last value."""
    from steppo.cli import build_parser
    from steppo.cli.train import overrides_of

    args = build_parser().parse_args(["train", "--set", "actor_lr=1e-6", "--iterations", "2", "--set", "gamma=0.9",
                                      "save_every=2", "--set", "gamma=1.0"])
    assert overrides_of(args) == {"iterations": 2, "actor_lr": 1e-6, "gamma": 1.0, "save_every": 2}


@pytest.mark.parametrize("stdin", ["devnull", "closed"])
def test_play_without_input_ends_like_end_of_input(stdin: str) -> None:
    """``steppo play`` with stdin at EOF or closed (``<&-``) ends with one line and exit code 0."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "steppo", "play", TOY]
    if stdin == "closed":
        command = ["sh", "-c", 'exec "$0" "$@" <&-', *command]
    tests = Path(__file__).parent
    proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                          check=False, cwd=tests, env={**os.environ, "PYTHONPATH": f"{tests}:{tests.parent}"})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout.strip().splitlines()[-1] == "(end of input)", proc.stdout
