"""Modules: list them, add, change and remove them (admins), start a test run (operators)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request, status

from caduceus.core.config import store
from caduceus.core.config.docker_arguments import ALLOW_ROOT_KEY
from caduceus.core.config.models import Module
from caduceus.core.storage import DataRoot
from caduceus.web.api import config_parts
from caduceus.web.api.config_edit import allow_root_modules
from caduceus.web.api.control import module_shown
from caduceus.web.api.engines import reader, writer
from caduceus.web.api.module_trial import start_trial
from caduceus.web.auth import Admin, Operator, Principal, Viewer
from caduceus.web.model_forms import lines_to_lists

router = APIRouter(prefix="/api", tags=["modules"])
OBJECTS = ("settings", "environment", "docker_arguments", "node_selector")


def summary(name: str, module: Module, who: Principal) -> dict[str, Any]:
    return {
        "name": name,
        "runs": module.image or " ".join(module.command),
        "kind": "image" if module.image else "command",
        "comment": module.comment,
        "settings": module_shown(module.model_dump(mode="json"), who),
    }


def _modules(request: Request) -> dict[str, Module]:
    return dict(store.current_or_default(reader(request)).modules)


@router.get("/modules")
def list_modules(request: Request, who: Viewer) -> list[dict[str, Any]]:
    return [summary(name, module, who) for name, module in _modules(request).items()]


@router.get("/modules/{name}")
def one_module(request: Request, name: str, who: Viewer) -> dict[str, Any]:
    return summary(name, config_parts.found(_modules(request), name, "module"), who)


def _builder(request: Request, body: dict[str, Any]) -> config_parts.Build:
    settings = dict(body)
    settings.pop("name", None)
    for field in OBJECTS:
        if field in settings and not isinstance(settings[field], dict):
            raise config_parts.field_error(field, "must be a JSON object ({...})")
    settings = lines_to_lists(Module, settings)
    # Root-only docker_arguments are refused here unless the host allows root modules.
    context = {ALLOW_ROOT_KEY: allow_root_modules(request)}
    return lambda _before: config_parts.validated(Module, settings, context)


@router.post("/modules", status_code=status.HTTP_201_CREATED)
def add_module(request: Request, who: Admin, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Add a module: {"name": ..., "image": ... or "command": [...], "settings": {...}, ...}."""
    name = config_parts.check_name(body.get("name"))
    return config_parts.save(request, who, "modules", "module", name, _builder(request, body), True)


@router.put("/modules/{name}")
def change_module(
    request: Request, name: str, who: Admin, body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    if body.get("name", name) != name:
        raise config_parts.field_error("name", "a module cannot be renamed; add a new one")
    return config_parts.save(
        request, who, "modules", "module", name, _builder(request, body), False
    )


def _uses_module(rule: dict[str, Any], name: str) -> bool:
    return name in rule.get("modules", [])


@router.delete("/modules/{name}")
def remove_module(request: Request, name: str, who: Admin) -> dict[str, Any]:
    """Remove a module; 409 while a rule runs it."""
    return config_parts.remove(request, who, "modules", "module", name, _uses_module)


@router.post("/modules/{name}/test", status_code=status.HTTP_201_CREATED)
def test_module(request: Request, name: str, who: Operator) -> dict[str, Any]:
    """Queue a test run: a generated series processed by this module alone, sent nowhere.
    The processor runs it like any task; its logs and results are the task's."""
    config_parts.found(_modules(request), name, "module")
    settings = request.app.state.settings
    task_id = start_trial(writer(request), DataRoot(settings.home), name, settings.ae_title)
    return {"task_id": task_id, "module": name, "requested_by": who.username}
