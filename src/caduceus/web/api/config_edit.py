"""Changing one part of the configuration (a rule, a target, a module) from the web.

The change is made on the stored configuration as its JSON document, with secrets masked
as the pages see it, then validated whole and saved as a new version, all in one
transaction. A masked secret left as it was keeps its stored value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request, status

from caduceus.core.config import files, store
from caduceus.core.config.models import Config
from caduceus.web.api.engines import writer
from caduceus.web.auth import Principal


def allow_root_modules(request: Request) -> bool:
    """The host's CADUCEUS_PROCESSOR_ALLOW_ROOT: root-only docker_arguments are refused when
    saved without it."""
    settings = getattr(request.app.state, "settings", None)
    return bool(getattr(settings, "processor_allow_root", False))


class Refused(Exception):
    """A change that makes no sense (a name taken, a rule that does not exist)."""

    def __init__(self, message: str, code: int = status.HTTP_409_CONFLICT):
        super().__init__(message)
        self.code = code


def edit_config(
    request: Request,
    who: Principal,
    change: Callable[[dict[str, Any]], None],
    comment: str,
) -> dict[str, Any]:
    """Apply `change` to the document (it edits in place; it may raise Refused) and store the
    result. Answers 422 with the validation error, 409 or 404 for a refusal."""

    def apply(previous: Config | None) -> Config:
        document = (previous or Config()).model_dump(mode="json")
        change(document)
        return files.parse(
            document, "request", allow_root_modules=allow_root_modules(request)
        ).config

    try:
        version, changed = store.edit(writer(request), apply, who.username, comment)
    except Refused as exc:
        raise HTTPException(exc.code, str(exc)) from exc
    except (files.ConfigFileError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return {"version": version, "changed": changed}
