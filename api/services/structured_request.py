"""OpenAI's ``response_format`` and ``tools``/``tool_choice`` (and vLLM's ``guided_json`` /
``structured_outputs.json``) read into one ``StructuredOutput``, checked where the wire schema
cannot (400 with the field as ``param``); and tool calls written back the way OpenAI's are."""

from __future__ import annotations

import json
from typing import Any

from api.errors import ApiError
from api.schemas.openai import PromptFields
from ensemble_core.structured_output import StructuredOutput, ToolFunction, parse_tool_call, tool_instruction


def _bad(message: str, param: str) -> ApiError:
    return ApiError(400, message, code="invalid_value", param=param)


def structured_output(body: PromptFields, *, kind: str) -> StructuredOutput | None:
    """The request's structured output, or None for free text."""
    from_format = _from_response_format(body)
    from_tools = _from_tools(body, kind=kind)
    if from_format is not None and from_tools is not None:
        raise ApiError(
            400,
            "give either response_format (a JSON answer) or tools (a function call), not both",
            code="unsupported_parameter",
            param="response_format",
        )
    return from_format or from_tools


def _schema_text(schema: Any, param: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise _bad(f"{param} is not valid JSON: {exc}", param) from exc
    if not isinstance(schema, dict):
        raise _bad(f"{param} must be a JSON schema (an object)", param)
    return json.dumps(schema, sort_keys=True)


def _from_response_format(body: PromptFields) -> StructuredOutput | None:
    guided = body.guided_json
    if guided is None and body.structured_outputs:
        guided = body.structured_outputs.get("json")
        unknown = sorted(set(body.structured_outputs) - {"json"})
        if unknown:
            raise ApiError(
                400,
                f"structured_outputs supports 'json' only here, not {', '.join(unknown)}",
                code="unsupported_parameter",
                param="structured_outputs",
            )
    fmt = body.response_format
    kind = (fmt or {}).get("type")
    if guided is not None:
        if kind not in (None, "text"):
            raise _bad("give either response_format or guided_json, not both", "guided_json")
        return StructuredOutput(kind="json_schema", schema_text=_schema_text(guided, "guided_json"))
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return StructuredOutput(kind="json_object")
    if kind == "json_schema":
        spec = (fmt or {}).get("json_schema")
        if not isinstance(spec, dict) or not spec.get("name"):
            raise _bad(
                "response_format json_schema needs json_schema: {name, schema, strict}",
                "response_format.json_schema",
            )
        schema = spec.get("schema", {})
        return StructuredOutput(
            kind="json_schema",
            schema_text=_schema_text(schema, "response_format.json_schema.schema"),
            strict=bool(spec.get("strict", True)) if spec.get("strict") is not None else True,
        )
    raise _bad(
        f"response_format type {kind!r} is not one of text, json_object, json_schema", "response_format.type"
    )


def _functions(tools: list[Any]) -> list[ToolFunction]:
    functions = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function, dict)
        ):
            raise _bad(
                f"tools[{i}] must be {{'type': 'function', 'function': {{name, parameters}}}}", f"tools.{i}"
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"tools[{i}].function.name is missing", f"tools.{i}.function.name")
        parameters = function.get("parameters") or {"type": "object"}
        functions.append(
            ToolFunction(
                name=name,
                description=str(function.get("description") or ""),
                parameters_json=_schema_text(parameters, f"tools.{i}.function.parameters"),
            )
        )
    if len({f.name for f in functions}) != len(functions):
        raise _bad("tools name the same function twice", "tools")
    return functions


def _from_tools(body: PromptFields, *, kind: str) -> StructuredOutput | None:
    tools, choice = body.tools, body.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise _bad("tool_choice is only allowed when tools are given", "tool_choice")
        return None
    if kind == "completion":
        raise ApiError(
            400,
            "tools are taken by /v1/chat/completions, not /v1/completions",
            code="unsupported_parameter",
            param="tools",
        )
    functions = _functions(tools)
    if choice in (None, "auto"):
        return StructuredOutput(kind="tool_auto", tools=tuple(functions))
    if choice == "none":
        return None
    if choice == "required":
        return StructuredOutput(kind="tool_call", tools=tuple(functions))
    function = choice.get("function") if isinstance(choice, dict) else None
    named = function.get("name") if isinstance(function, dict) else None
    if not named:
        raise _bad(
            "tool_choice must be none, auto, required or {'type': 'function', 'function': {'name': ...}}",
            "tool_choice",
        )
    chosen = [f for f in functions if f.name == named]
    if not chosen:
        raise _bad(f"tool_choice names {named!r}, which is not in tools", "tool_choice")
    return StructuredOutput(kind="tool_call", tools=tuple(chosen))


def with_tool_instruction(
    messages: list[dict[str, str]], output: StructuredOutput | None
) -> list[dict[str, str]]:
    """The messages with the functions described in the system turn (first system turn, or a
    new one in front)."""
    if output is None or not output.is_tool_call:
        return messages
    text = tool_instruction(output)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def message_parts(
    text: str, finish_reason: str, output: StructuredOutput | None, call_id: str
) -> tuple[str | None, list[dict[str, Any]] | None, str]:
    """``(content, tool_calls, finish_reason)`` of one chat answer (OpenAI's shape: a call has
    no content and finishes with ``tool_calls``)."""
    call = parse_tool_call(output, text, call_id) if output is not None else None
    if call is None:
        return text, None, finish_reason
    tool_call = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    return None, [tool_call], "tool_calls"


def structured_of(job_request: dict[str, Any] | None) -> StructuredOutput | None:
    raw = ((job_request or {}).get("generation") or {}).get("structured")
    return StructuredOutput.model_validate(raw) if raw else None


def tool_turn(message: Any, index: int) -> dict[str, str]:
    """A tool-calling turn as text the members read: an assistant's calls as the JSON they
    write, a tool's result as a user turn that says whose result it is."""
    if message.role == "assistant":
        calls = []
        for call in message.tool_calls if isinstance(message.tool_calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise _bad(
                    f"messages[{index}].tool_calls must be [{{id, type, function: {{name, arguments}}}}]",
                    f"messages.{index}.tool_calls",
                )
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except (TypeError, json.JSONDecodeError) as exc:
                raise _bad(
                    f"messages[{index}].tool_calls: arguments must be JSON text",
                    f"messages.{index}.tool_calls",
                ) from exc
            calls.append(json.dumps({"name": function.get("name"), "arguments": arguments}))
        return {"role": "assistant", "content": "\n".join(calls)}
    content = message.content
    if isinstance(content, list):
        content = "".join(part.text or "" for part in content)
    call_id = getattr(message, "tool_call_id", None) or message.name or "the function"
    return {"role": "user", "content": f"Result of {call_id}: {content or ''}"}
