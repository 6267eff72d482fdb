"""Tool schemas in the OpenAI / Hermes function-calling format (what HF chat templates take as ``tools=``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ToolSpec"]


@dataclass(frozen=True)
class ToolSpec:
    """One tool an environment offers.

    Attributes:
        name: the function name the agent calls.
        description: one or two sentences shown to the model.
        parameters: JSON schema (``{"type": "object", "properties": ..., "required": [...]}``).
        compact: the compact ReAct verb (``"Search"`` for ``Search[...]``), or ``None`` for no compact form.
        compact_argument: the argument the compact form's bracket text fills (defaults to the first required one).
    """

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    compact: str | None = None
    compact_argument: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """``{"type": "function", "function": {"name", "description", "parameters"}}``."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    @property
    def compact_arg(self) -> str | None:
        if self.compact_argument:
            return self.compact_argument
        required = self.parameters.get("required") or list(self.parameters.get("properties", {}))
        return required[0] if required else None

    def validate(self, arguments: dict[str, Any]) -> str | None:
        """Return an error message if ``arguments`` misses a required field or has the wrong basic type."""
        props: dict[str, Any] = self.parameters.get("properties", {})
        for name in self.parameters.get("required", []):
            if name not in arguments:
                return f"tool {self.name!r} needs the argument {name!r}"
        for name, value in arguments.items():
            if name not in props:
                return f"tool {self.name!r} has no argument {name!r} (valid: {', '.join(props) or 'none'})"
            expected = props[name].get("type")
            ok = {
                "string": isinstance(value, str),
                "integer": isinstance(value, int) and not isinstance(value, bool),
                "number": isinstance(value, int | float) and not isinstance(value, bool),
                "array": isinstance(value, list),
                "boolean": isinstance(value, bool),
                "object": isinstance(value, dict),
            }.get(expected, True)
            if not ok:
                return f"argument {name!r} of tool {self.name!r} must be of type {expected}"
        return None
