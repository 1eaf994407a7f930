"""Targets: list them, add, change and remove them (admins), test a connection (operators).

Secrets are write-only. Answers say only whether one is stored; a change that leaves a
secret empty keeps the stored one, and `"forget": {"password": true}` removes it.
"""

from __future__ import annotations

from typing import Any, get_args

from fastapi import APIRouter, Body, Request, status
from pydantic import SecretStr

from caduceus.core.config import store
from caduceus.core.config.describe import where_of
from caduceus.core.config.models import TargetSettings
from caduceus.web.api import config_parts
from caduceus.web.api.connection_test import check_connection
from caduceus.web.api.control import shown_to
from caduceus.web.api.engines import reader
from caduceus.web.auth import Admin, Operator, Principal, Viewer
from caduceus.web.model_forms import lines_to_lists

router = APIRouter(prefix="/api", tags=["targets"])
TEST_SECONDS = 20.0

KINDS: dict[str, type[TargetSettings]] = {
    model.model_fields["type"].default: model for model in get_args(TargetSettings)
}


def secret_fields(model: type[TargetSettings]) -> list[str]:
    return [name for name, info in model.model_fields.items() if info.annotation is SecretStr]


def as_seen_by(target: TargetSettings, who: Principal) -> TargetSettings:
    """A login written into a URL (https://user:password@host/) only for admins; anyone
    else sees where the URL points, as in the whole configuration's answer."""
    url = getattr(target, "url", "")
    if who.can("admin") or not url:
        return target
    shown = shown_to({"targets": {"this": {"url": url}}}, who)["targets"]["this"]["url"]
    return target.model_copy(update={"url": shown})


def summary(name: str, target: TargetSettings) -> dict[str, Any]:
    """A target as anyone may see it: where it points, and only whether secrets are set."""
    secrets = secret_fields(type(target))
    return {
        "name": name,
        "type": target.type,
        "where": where_of(target),
        "comment": target.comment,
        "settings": {
            key: value
            for key, value in target.model_dump(mode="json").items()
            if key not in secrets
        },
        "secrets": {key: bool(getattr(target, key).get_secret_value()) for key in secrets},
    }


def _targets(request: Request) -> dict[str, TargetSettings]:
    return dict(store.current_or_default(reader(request)).targets)


@router.get("/targets")
def list_targets(request: Request, who: Viewer) -> list[dict[str, Any]]:
    targets = _targets(request).items()
    return [summary(name, as_seen_by(target, who)) for name, target in targets]


@router.get("/targets/{name}")
def one_target(request: Request, name: str, who: Viewer) -> dict[str, Any]:
    target = config_parts.found(_targets(request), name, "target")
    return summary(name, as_seen_by(target, who))


def _builder(body: dict[str, Any]) -> config_parts.Build:
    """The stored settings from a form's or a caller's body, keeping or forgetting secrets."""
    settings = dict(body)
    forget = settings.pop("forget", None) or {}
    settings.pop("name", None)
    model = KINDS.get(settings.get("type"))  # type: ignore[arg-type]
    if model is None:
        raise config_parts.field_error("type", f"the type is one of {', '.join(KINDS)}")
    if not isinstance(forget, dict):
        raise config_parts.field_error("forget", "an object of secret names and true or false")
    settings = lines_to_lists(model, settings)

    def build(before: dict[str, Any] | None) -> dict[str, Any]:
        same_kind = before is not None and before.get("type") == settings["type"]
        for field in secret_fields(model):
            if forget.get(field):
                settings[field] = ""
            elif not settings.get(field):
                # The masked value as the stored version shows it: the store puts the stored
                # secret back, and refuses if the target now points elsewhere.
                settings[field] = before.get(field, "") if before and same_kind else ""
        return config_parts.validated(model, settings)

    return build


@router.post("/targets", status_code=status.HTTP_201_CREATED)
def add_target(request: Request, who: Admin, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Add a target: {"name": ..., "type": "dicom", ...its settings}."""
    name = config_parts.check_name(body.get("name"))
    return config_parts.save(request, who, "targets", "target", name, _builder(body), True)


@router.put("/targets/{name}")
def change_target(
    request: Request, name: str, who: Admin, body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    """Replace a target's settings; a secret left out or empty keeps its stored value."""
    if body.get("name", name) != name:
        raise config_parts.field_error("name", "a target cannot be renamed; add a new one")
    return config_parts.save(request, who, "targets", "target", name, _builder(body), False)


def _uses_target(rule: dict[str, Any], name: str) -> bool:
    return (
        name in rule.get("targets", [])
        or name in rule.get("dynamic_routing_allowed_targets", [])
        or rule.get("alternate_target") == name
    )


@router.delete("/targets/{name}")
def remove_target(request: Request, name: str, who: Admin) -> dict[str, Any]:
    """Remove a target; 409 while a rule sends to it."""
    return config_parts.remove(request, who, "targets", "target", name, _uses_target)


@router.post("/targets/{name}/test")
def test_target(request: Request, name: str, _: Operator) -> dict[str, Any]:
    """The check of `caduceus targets test NAME` (a C-ECHO, a writable folder, a login):
    {"ok": true or false, "message": what answered or what failed}."""
    target = config_parts.found(_targets(request), name, "target")
    ok, message = check_connection(target, TEST_SECONDS)
    return {"ok": ok, "message": message}
