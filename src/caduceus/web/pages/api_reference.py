"""The API's reference page, made from its OpenAPI description."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class Parameter:
    name: str
    where: str  # path, query
    kind: str
    required: bool


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    description: str
    parameters: list[Parameter] = field(default_factory=list)
    body: str = ""


def _kind(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_kind(s) for s in schema["anyOf"])
    return str(schema.get("type", "any"))


def operations(description: dict[str, Any]) -> list[tuple[str, list[Operation]]]:
    """The operations grouped by their tag, in the order the description lists them."""
    groups: dict[str, list[Operation]] = {}
    for path, item in description.get("paths", {}).items():
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            content: dict[str, Any] = (op.get("requestBody") or {}).get("content", {})
            first: dict[str, Any] = next(iter(content.values()), {})
            body: dict[str, Any] = first.get("schema", {})
            groups.setdefault((op.get("tags") or ["other"])[0], []).append(
                Operation(
                    method=method.upper(),
                    path=path,
                    summary=op.get("summary", ""),
                    description=op.get("description", ""),
                    parameters=[
                        Parameter(
                            p["name"], p["in"], _kind(p.get("schema", {})), p.get("required", False)
                        )
                        for p in op.get("parameters", [])
                    ],
                    body=_kind(body) if body else "",
                )
            )
    return list(groups.items())
