"""The Configuration page: versions with who and when, one version, a diff between two,
restore, the global settings, import of a file (ours or mercure.json), export."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse

from caduceus.core.config import store
from caduceus.core.config.models import Settings, SmtpSettings
from caduceus.core.ids import MAX_ROW_ID, RowId
from caduceus.web.api.config_diff import classify, pretty, unified_diff
from caduceus.web.api.control import shown_to, version_shown
from caduceus.web.api.engines import reader
from caduceus.web.model_forms import form_fields
from caduceus.web.pages.rendering import PageAdmin, PageViewer, render

router = APIRouter(include_in_schema=False)
Version = Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)]


@router.get("/configuration", response_class=HTMLResponse)
def page(request: Request, who: PageViewer) -> HTMLResponse:
    versions = store.history(reader(request))
    return render(
        request, "configuration.html", who, "Configuration", tab="versions", versions=versions
    )


@router.get("/configuration/versions/{version}", response_class=HTMLResponse)
def one_version(request: Request, version: RowId, who: PageViewer) -> HTMLResponse:
    document = version_shown(request, version, who)
    entry = next((v for v in store.history(reader(request)) if v["version"] == version), None)
    return render(
        request,
        "configuration_version.html",
        who,
        f"Configuration version {version}",
        tab="versions",
        version=version,
        entry=entry,
        document=pretty(document),
    )


@router.get("/configuration/diff", response_class=HTMLResponse)
def diff_page(
    request: Request,
    who: PageViewer,
    old: Annotated[int | None, Query(alias="from", ge=1, le=MAX_ROW_ID)] = None,
    new: Annotated[int | None, Query(alias="to", ge=1, le=MAX_ROW_ID)] = None,
) -> HTMLResponse:
    """Without versions, the newest change: the newest version against the one before."""
    numbers = [v["version"] for v in store.history(reader(request))]  # newest first
    if new is None and numbers:
        new = numbers[0]
    if old is None and new is not None:
        older = [n for n in numbers if n < new]
        old = older[0] if older else None
    lines = []
    if old is not None and new is not None:
        text = unified_diff(
            version_shown(request, old, who),
            version_shown(request, new, who),
            f"version {old}",
            f"version {new}",
        )
        lines = classify(text)
    return render(
        request,
        "configuration_diff.html",
        who,
        "Compare configuration versions",
        tab="diff",
        numbers=numbers,
        old=old,
        new=new,
        lines=lines,
    )


@router.get("/configuration/settings", response_class=HTMLResponse)
def settings_page(request: Request, who: PageViewer) -> HTMLResponse:
    shown = store.current_or_default(reader(request)).model_dump(mode="json")["settings"]
    # (legend, the prefix that nests the fields in the JSON the form sends, the fields)
    groups = [
        ("General", "settings.", form_fields(Settings, shown, skip=("smtp",))),
        (
            "Mail server for notifications",
            "settings.smtp.",
            form_fields(SmtpSettings, shown["smtp"], skip=()),
        ),
    ]
    return render(
        request,
        "configuration_settings.html",
        who,
        "Global settings",
        tab="settings",
        groups=groups,
    )


@router.get("/configuration/import", response_class=HTMLResponse)
def import_page(request: Request, who: PageAdmin) -> HTMLResponse:
    return render(request, "configuration_import.html", who, "Import a configuration", tab="import")


@router.get("/configuration/export")
def export(request: Request, who: PageViewer, version: Version = None) -> Response:
    """The configuration as a JSON file to download; secrets are always masked (an import
    keeps the stored ones), webhook URLs too unless for an admin."""
    if version is None:
        found = store.current(reader(request))
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "there is no configuration yet")
        version, config = found
        document = shown_to(config.model_dump(mode="json"), who)
    else:
        document = version_shown(request, version, who)
    body = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return Response(
        body,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="caduceus-config-v{version}.json"'},
    )
