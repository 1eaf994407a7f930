"""Control: queues, the configuration (read, validate, write, history, restore), health."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, HTTPException, Query, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import func, select, text

from caduceus.core.config import files, store
from caduceus.core.config.models import MASK
from caduceus.core.db.models import QUEUE_CONTROLS, TASKS
from caduceus.core.ids import MAX_ROW_ID, RowId
from caduceus.core.work_queue import set_suspended
from caduceus.web.api.config_diff import unified_diff
from caduceus.web.api.config_edit import allow_root_modules, edit_config
from caduceus.web.api.engines import reader, writer
from caduceus.web.auth import Admin, Operator, Principal, Viewer

router = APIRouter(prefix="/api", tags=["control"])
QUEUE_NAME = re.compile(r"^(dispatch|process|dispatch:[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63})$")


@router.get("/health")
def health(request: Request, _: Viewer) -> dict[str, Any]:
    """The database answers and the data root has room."""
    import shutil

    with reader(request).connect() as conn:
        conn.execute(text("SELECT 1"))
    usage = shutil.disk_usage(request.app.state.settings.home)
    return {"database": "ok", "disk_free_bytes": usage.free, "disk_total_bytes": usage.total}


@router.get("/queues")
def queues(request: Request, _: Viewer) -> dict[str, Any]:
    """Tasks per state, and which queues are suspended."""
    with reader(request).connect() as conn:
        by_state: dict[str, int] = dict(
            conn.execute(select(TASKS.c.state, func.count()).group_by(TASKS.c.state)).all()
        )
        controls = [dict(r._mapping) for r in conn.execute(select(QUEUE_CONTROLS))]
    return {"tasks": by_state, "controls": controls}


def _queue(name: str) -> str:
    if not QUEUE_NAME.match(name):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "a queue is dispatch, dispatch:<target> or process",
        )
    return name


@router.post("/queues/{name}/suspend")
def suspend(request: Request, name: str, who: Operator) -> dict[str, str]:
    set_suspended(writer(request), _queue(name), True, who.username)
    return {"queue": name, "state": "suspended"}


@router.post("/queues/{name}/resume")
def resume(request: Request, name: str, who: Operator) -> dict[str, str]:
    set_suspended(writer(request), _queue(name), False, who.username)
    return {"queue": name, "state": "resumed"}


def module_shown(module: dict[str, Any], who: Principal) -> dict[str, Any]:
    """A module's environment often carries an API key for the model's licence or service:
    only admins see the values; anyone else sees which variables are set."""
    if not who.can("admin") and module.get("environment"):
        module["environment"] = dict.fromkeys(module["environment"], MASK)
    return module


def shown_to(document: dict[str, Any], who: Principal) -> dict[str, Any]:
    """Webhook URLs often carry their token in the path or query: only admins see them whole;
    anyone else sees where they point (scheme and host). Module environments likewise."""
    if who.can("admin"):
        return document
    for module in document.get("modules", {}).values():
        module_shown(module, who)
    for rule in document.get("rules", {}).values():
        notification = rule.get("notification") or {}
        if notification.get("webhook_url"):
            parts = urlsplit(notification["webhook_url"])
            notification["webhook_url"] = f"{parts.scheme}://{parts.hostname}/{MASK}"
    for target in document.get("targets", {}).values():
        if target.get("url"):
            parts = urlsplit(target["url"])
            if parts.username or parts.password:
                target["url"] = parts._replace(netloc=f"{MASK}@{parts.hostname}").geturl()
    return document


@router.get("/config")
def config(request: Request, who: Viewer) -> dict[str, Any]:
    """The newest configuration; secrets are masked, and webhook URLs unless for an admin."""
    return shown_to(store.current_or_default(reader(request)).model_dump(mode="json"), who)


@router.post("/config/validate")
def validate(request: Request, _: Viewer, document: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Check a configuration document (caduceus or mercure.json format) without saving it."""
    try:
        loaded = files.parse(document, "request", allow_root_modules=allow_root_modules(request))
    except files.ConfigFileError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return {
        "valid": True,
        "format": loaded.source_format,
        "not_mapped": loaded.not_mapped,
        "counts": {
            "rules": len(loaded.config.rules),
            "targets": len(loaded.config.targets),
            "modules": len(loaded.config.modules),
        },
    }


class ConfigText(BaseModel):
    text: str


@router.post("/config/read")
def read_text(_: Viewer, file: ConfigText) -> dict[str, Any]:
    """A configuration file's text (YAML, of which JSON is a part) as the document the page
    then checks and saves: browsers read JSON themselves, not YAML. The request body limit
    bounds its size; safe_load builds plain values only."""
    try:
        return {"document": files.parse_text(file.text)}
    except files.ConfigFileError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


@router.put("/config")
def save_config(
    request: Request,
    who: Admin,
    document: dict[str, Any] = Body(...),
    comment: str = "",
) -> dict[str, Any]:
    """Validate and store as the newest version; masked secrets keep their stored values."""
    try:
        loaded = files.parse(document, "request", allow_root_modules=allow_root_modules(request))
        version, changed = store.save(
            writer(request), loaded.config, who.username, comment or "changed through the API"
        )
    except (files.ConfigFileError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return {"version": version, "changed": changed, "not_mapped": loaded.not_mapped}


@router.get("/config/versions")
def versions(request: Request, _: Viewer) -> list[dict[str, Any]]:
    return store.history(reader(request))


def version_shown(request: Request, version: int, who: Principal) -> dict[str, Any]:
    """One version as this user may see it: secrets masked, webhook URLs unless an admin."""
    try:
        return shown_to(store.get(reader(request), version).model_dump(mode="json"), who)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


@router.get("/config/versions/{version}")
def one_version(request: Request, version: RowId, who: Viewer) -> dict[str, Any]:
    return version_shown(request, version, who)


@router.get("/config/diff")
def diff(
    request: Request,
    who: Viewer,
    old: int = Query(alias="from", ge=1, le=MAX_ROW_ID),
    new: int = Query(alias="to", ge=1, le=MAX_ROW_ID),
) -> dict[str, Any]:
    """A unified diff of two versions' masked JSON documents, pretty-printed, keys sorted."""
    return {
        "from": old,
        "to": new,
        "diff": unified_diff(
            version_shown(request, old, who),
            version_shown(request, new, who),
            f"version {old}",
            f"version {new}",
        ),
    }


class SettingsChange(BaseModel):
    settings: dict[str, Any]
    comment: str = Field(default="", max_length=500)


@router.put("/config/settings")
def save_settings(request: Request, change: SettingsChange, who: Admin) -> dict[str, Any]:
    """Replace the global settings; rules, targets and modules stay as they are. An SMTP
    password left out (a form never shows it) or masked keeps its stored value, as long as
    the server and user name stay the same."""

    def apply(document: dict[str, Any]) -> None:
        smtp = change.settings.get("smtp")
        if isinstance(smtp, dict) and "password" not in smtp:
            smtp["password"] = document["settings"]["smtp"]["password"]  # masked or empty
        document["settings"] = change.settings

    return edit_config(request, who, apply, change.comment or "settings changed")


@router.post("/config/versions/{version}/restore")
def restore(request: Request, version: RowId, who: Admin) -> dict[str, int]:
    try:
        return {"version": store.restore(writer(request), version, who.username)}
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
