"""Form fields made from a pydantic model's JSON schema: a target's or a module's form.

The schema says the kind of input (a checkbox for a boolean, a number with its limits, a
select for a choice, a password box for a secret, a text area for a list or an object), the
default of a new item and which fields are required. A field added to the model appears on
its form by itself. Secrets are never put into a form, not even masked: the form only says
whether one is stored.

The pages draw the forms and the API reads their posts back (lines_to_lists): it sits beside
both, in web/, so the API never imports a page module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from caduceus.core.config.models import MASK

# Words a label shows in capitals or spelt out.
_WORDS = {
    "aet": "AE title",
    "url": "URL",
    "tls": "TLS",
    "ca": "CA",
    "gpu": "GPU",
    "cpus": "CPUs",
    "id": "ID",
    "mb": "(MB)",
    "dicom": "DICOM",
}


def label_of(name: str) -> str:
    words = [_WORDS.get(word, word) for word in name.split("_")]
    text = " ".join(words)
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class FormField:
    name: str
    label: str
    # checkbox, number, select, text, password, lines (a list, one a line) or json (an object)
    kind: str
    value: Any = ""
    help: str = ""
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: str = "1"
    stored: bool = False  # a secret: whether one is stored (its value never is shown)


def _plain(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """An optional field (`X | None`) as X, and whether None was allowed."""
    variants = schema.get("anyOf")
    if not variants:
        return schema, False
    others = [v for v in variants if v.get("type") != "null"]
    return ({**others[0], **{k: v for k, v in schema.items() if k != "anyOf"}}, True)


def _kind(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "select"
    kind = schema.get("type")
    if kind == "boolean":
        return "checkbox"
    if kind in ("integer", "number"):
        return "number"
    if kind == "array":
        return "lines"
    if kind == "object":
        return "json"
    if schema.get("format") == "password":
        return "password"
    return "text"


def _shown(kind: str, value: Any) -> Any:
    """A value as its input shows it."""
    if value is None:
        return ""
    if kind == "lines":
        return "\n".join(str(item) for item in value)
    if kind == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    return value


def form_fields(
    model: type[BaseModel],
    current: dict[str, Any] | None,
    help_texts: dict[str, str] | None = None,
    skip: tuple[str, ...] = ("type",),
) -> list[FormField]:
    """The fields of `model`, filled from `current` (its JSON dump with secrets masked, as
    model_dump(mode="json") gives it) or with the defaults of a new one."""
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", []))
    extra = help_texts or {}
    fields = []
    for name, raw in schema["properties"].items():
        if name in skip:
            continue
        prop, optional = _plain(raw)
        kind = _kind(prop)
        if current is not None:
            value = current.get(name)
        else:
            value = prop.get("default", [] if kind == "lines" else {} if kind == "json" else "")
        stored = False
        if kind == "password":
            stored = bool(current and current.get(name) == MASK)
            value = ""
        minimum = prop.get("minimum", prop.get("exclusiveMinimum"))
        fields.append(
            FormField(
                name=name,
                label=label_of(name),
                kind=kind,
                value=_shown(kind, value),
                help=prop.get("description") or extra.get(name, ""),
                required=name in required and not optional,
                choices=tuple(str(choice) for choice in prop.get("enum", ())),
                minimum=minimum,
                maximum=prop.get("maximum"),
                step="1" if prop.get("type") == "integer" else "any",
                stored=stored,
            )
        )
    return fields


def lines_to_lists(model: type[BaseModel], body: dict[str, Any]) -> dict[str, Any]:
    """A form sends a list as the text of its text area: one item a line, blank lines left
    out. API callers may send real lists; both mean the same."""
    properties = model.model_json_schema(mode="validation")["properties"]
    fixed = dict(body)
    for name, value in body.items():
        prop = properties.get(name)
        if prop is not None and _plain(prop)[0].get("type") == "array" and isinstance(value, str):
            fixed[name] = [line.strip() for line in value.splitlines() if line.strip()]
    return fixed
