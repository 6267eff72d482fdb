"""The configs' base class, :class:`~steppo_envs.config_model.ConfigModel`, re-exported: one
configuration style for envs, agent and trainer (it lives in the lowest layer, ``steppo_envs``)."""

from __future__ import annotations

from steppo_envs.config_model import ConfigModel, explain_validation_error, field_info

__all__ = ["ConfigModel", "explain_validation_error", "field_info"]
