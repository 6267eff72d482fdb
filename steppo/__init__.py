"""steppo: step-level agentic RL for LLM agents. This top-level package holds the ``steppo``
command line (:mod:`steppo.cli`), the highest layer: ``steppo_envs`` <- ``steppo_agent`` <-
``steppo_train`` <- ``steppo``. Nothing below imports it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("steppo")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
