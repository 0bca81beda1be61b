"""Structured output: what an answer must look like (OpenAI's ``response_format`` and ``tools``)
as one value the backends constrain decoding with, and the tool calls read back from the text.

The kinds, and the text each lets a member write:

- ``json_object``: one JSON object (OpenAI's JSON mode);
- ``json_schema``: one JSON value valid under ``schema`` (OpenAI's structured outputs);
- ``tool_call``: one call of one of ``tools``, written ``{"name": ..., "arguments": {...}}``
  (``tool_choice: required``, or a named function: then ``tools`` holds that one);
- ``tool_auto``: either such a call or plain text that does not begin with ``{``
  (``tool_choice: auto``).

The HF backend compiles the grammar for each member's tokenizer (``backends/hf_grammar``) and
masks every decode step, so every candidate is valid whichever member wins; segment-level
methods re-feed the accepted text to each member's grammar state each round. JSON is written
on one line with ``", "`` and ``": "`` separators (no free whitespace), so a small model cannot
wander off into blank lines.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

StructuredKind = Literal["json_object", "json_schema", "tool_call", "tool_auto"]


class ToolFunction(BaseModel):
    """One callable function, as OpenAI's ``tools[i].function`` names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    parameters_json: str = Field(default='{"type": "object"}', description="its JSON schema, as JSON text")

    @property
    def parameters(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.parameters_json)
        return value


class StructuredOutput(BaseModel):
    """The shape an answer must have (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: StructuredKind
    schema_text: str | None = Field(default=None, description="json_schema: the JSON schema, as JSON text")
    strict: bool = True
    tools: tuple[ToolFunction, ...] = ()

    @property
    def is_tool_call(self) -> bool:
        return self.kind in ("tool_call", "tool_auto")

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema the answer (or, for ``tool_auto``, its JSON branch) must satisfy."""
        if self.kind == "json_object":
            return {"type": "object"}
        if self.kind == "json_schema":
            schema: dict[str, Any] = json.loads(self.schema_text or "{}")
            return schema
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for tool in self.tools
        ]
        return calls[0] if len(calls) == 1 else {"anyOf": calls}

    def key(self) -> str:
        """A stable identity (compiled grammars are cached by it)."""
        return self.model_dump_json()


def tool_instruction(output: StructuredOutput) -> str:
    """The system text that tells the members which functions they may call and how (the
    grammar enforces the form; this tells the model what the names and arguments mean)."""
    listing = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters})
        for t in output.tools
    )
    how = (
        'To call a function, answer with only {"name": <function name>, "arguments": <JSON object>}'
        if output.kind == "tool_auto"
        else 'Answer with only {"name": <function name>, "arguments": <JSON object>}'
    )
    return f"You can call these functions:\n{listing}\n{how}."


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def parse_tool_call(output: StructuredOutput, text: str, call_id: str) -> ToolCall | None:
    """The call an answer makes, or None (plain text under ``tool_auto``, or an answer cut off
    before its JSON was complete)."""
    stripped = text.strip()
    if not output.is_tool_call or not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    names = {t.name for t in output.tools}
    if not isinstance(value, dict) or value.get("name") not in names or "arguments" not in value:
        return None
    return ToolCall(
        id=call_id,
        name=str(value["name"]),
        arguments=json.dumps(value["arguments"], ensure_ascii=False),
    )
