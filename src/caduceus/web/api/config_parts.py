"""Creating, changing and removing one named target or module, through edit_config.

Both kinds work the same way: a name that must be free (or must exist), settings validated
by their own model first (so a mistake comes back as a list of fields and messages, the way
FastAPI reports its own), then the whole configuration validated and stored as a new
version. Nothing here ever quotes a value the user sent: it may be a password.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastapi import HTTPException, Request, status
from pydantic import BaseModel, ValidationError

from caduceus.core.config.models import NAME
from caduceus.web.api.config_edit import Refused, edit_config
from caduceus.web.auth import Principal

T = TypeVar("T")
UNPROCESSABLE = status.HTTP_422_UNPROCESSABLE_CONTENT

# Builds the stored settings of the item from the settings it had (None for a new one).
Build = Callable[[dict[str, Any] | None], dict[str, Any]]


def found(items: Mapping[str, T], name: str, noun: str) -> T:
    """The named item, or 404."""
    if name not in items:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such {noun}")
    return items[name]


def field_error(field: str, message: str) -> HTTPException:
    return HTTPException(UNPROCESSABLE, [{"loc": [field], "msg": message, "type": "value_error"}])


def validated(
    model: type[BaseModel], settings: dict[str, Any], context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The settings, once the model accepts them, or 422 naming each field at fault.

    They are returned as given, not as the model dumps them: a dump masks the secrets."""
    try:
        model.model_validate(settings, context=context)
    except ValidationError as exc:
        problems = [
            {
                "loc": [str(part) for part in error["loc"]],
                "msg": error["msg"],
                "type": error["type"],
            }
            for error in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise HTTPException(UNPROCESSABLE, problems) from exc
    return settings


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(NAME, name):
        raise field_error(
            "name",
            "a name is 1 to 64 letters, digits, spaces and _ . - (starting with a letter or digit)",
        )
    return name


def save(
    request: Request,
    who: Principal,
    section: str,
    noun: str,
    name: str,
    build: Build,
    creating: bool,
) -> dict[str, Any]:
    """Add (creating) or replace the item `name` of `section` ("targets", "modules")."""

    def change(document: dict[str, Any]) -> None:
        items = document[section]
        before = items.get(name)
        if creating and before is not None:
            raise Refused(f"there is already a {noun} named {name!r}")
        if not creating and before is None:
            raise Refused(f"there is no {noun} named {name!r}", status.HTTP_404_NOT_FOUND)
        items[name] = build(before)

    verb = "added" if creating else "changed"
    answer = edit_config(request, who, change, f"{noun} {name!r} {verb}")
    return {"name": name, **answer}


def remove(
    request: Request,
    who: Principal,
    section: str,
    noun: str,
    name: str,
    used_by: Callable[[dict[str, Any], str], bool],
) -> dict[str, Any]:
    """Remove the item, unless a rule still uses it (409, naming the rules)."""

    def change(document: dict[str, Any]) -> None:
        if name not in document[section]:
            raise Refused(f"there is no {noun} named {name!r}", status.HTTP_404_NOT_FOUND)
        users = [rule for rule, settings in document["rules"].items() if used_by(settings, name)]
        if users:
            raise Refused(f"{noun} {name!r} is used by the rules: {', '.join(users)}")
        del document[section][name]

    answer = edit_config(request, who, change, f"{noun} {name!r} removed")
    return {"name": name, **answer}
