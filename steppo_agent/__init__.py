"""steppo_agent: policies (vLLM, OpenAI-compatible HTTP, transformers), prompt rendering, batched
rollout, token-exact trajectory records and the ``steppo`` CLI."""

__version__ = "0.1.0"
