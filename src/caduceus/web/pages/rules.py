"""The Rules pages: the list with each rule's flow, and the editor (read-only for viewers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse

from caduceus.bookkeeper.search import StudyFilter, search_series
from caduceus.core.config import store
from caduceus.core.config.models import NAME, Rule
from caduceus.web.api.engines import reader
from caduceus.web.api.rules import NAME_HELP, shown_rules
from caduceus.web.auth import Principal
from caduceus.web.pages.rendering import PageAdmin, PageViewer, render

router = APIRouter(include_in_schema=False)
# Enough to find the series one has in mind; the Queue page searches all of them.
RECENT_SERIES = 50


@dataclass(frozen=True)
class Step:
    kind: str  # "module", "targets" or "end": how the flow diagram draws it
    label: str


def flow(rule: dict[str, Any]) -> list[Step]:
    """What happens to a matching series, in order: its modules, then where it goes."""
    action = rule["action"]
    steps: list[Step] = []
    if action in ("process", "both"):
        steps += [Step("module", name) for name in rule["modules"]]
    if action in ("route", "both"):
        steps.append(Step("targets", ", ".join(rule["targets"])))
    elif action == "process":
        steps.append(Step("end", "results kept, not sent"))
    elif action == "discard":
        steps.append(Step("end", "discarded"))
    elif action == "notification":
        steps.append(Step("end", "notification only"))
    return steps


@router.get("/rules", response_class=HTMLResponse)
def page(request: Request, who: PageViewer) -> HTMLResponse:
    rules = shown_rules(request, who)
    return render(
        request,
        "rules.html",
        who,
        "Rules",
        rules=rules,
        flows={name: flow(rule) for name, rule in rules.items()},
        can_edit=who.can("admin"),
    )


@router.get("/rules/new", response_class=HTMLResponse)
def new_rule(request: Request, who: PageAdmin) -> HTMLResponse:
    blank = Rule.model_construct(rule="").model_dump(mode="json")
    return _editor(request, who, "New rule", "", blank)


@router.get("/rules/{name}", response_class=HTMLResponse)
def edit_rule(request: Request, name: str, who: PageViewer) -> HTMLResponse:
    rule = shown_rules(request, who).get(name)
    if rule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"there is no rule {name!r}")
    return _editor(request, who, f"Rule {name}", name, rule)


def _editor(
    request: Request, who: Principal, title: str, name: str, rule: dict[str, Any]
) -> HTMLResponse:
    config = store.current_or_default(reader(request))
    modules = list(config.modules)
    # Chosen modules first and in their order: the form sends the list in this order.
    ordered_modules = [*rule["modules"], *(m for m in modules if m not in rule["modules"])]
    return render(
        request,
        "rule_editor.html",
        who,
        title,
        name=name,
        rule=rule,
        module_settings=json.dumps(rule["module_settings"], indent=2),
        steps=flow(rule) if name else [],
        targets=list(config.targets),
        modules=ordered_modules,
        series=search_series(reader(request), StudyFilter(), limit=RECENT_SERIES),
        can_edit=who.can("admin"),
        name_pattern=NAME,
        name_help=NAME_HELP,
    )
