"""Rules: read, create, replace, rename, duplicate, enable, disable and delete them; check an
expression while it is typed; try it on the tags of a series that was received.

Every change is one new configuration version (web/api/config_edit.py) with its author and a
comment naming the rule. A rule whose expression does not parse is refused with the position
of the problem, so the editor can point at it. A test of a rule runs in a worker thread, never
on the event loop, within the rules' budget, and only a few at once: other requests are
answered while one runs.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Body, HTTPException, Request, status
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select

from caduceus.core.config import store
from caduceus.core.config.models import NAME, Rule
from caduceus.core.db.models import SERIES
from caduceus.core.dicom.series_tags import SeriesNotStored, UnreadableSeries, series_tags
from caduceus.core.rules import Budget, EvaluationError, RuleError, parse_rule
from caduceus.core.rules import Rule as Expression
from caduceus.core.rules.text_values import as_text
from caduceus.core.storage import DataRoot
from caduceus.web.api.config_edit import Refused, edit_config
from caduceus.web.api.control import shown_to
from caduceus.web.api.engines import reader
from caduceus.web.auth import Admin, Principal, Viewer

router = APIRouter(prefix="/api", tags=["rules"])
NAME_HELP = (
    "a name has 1 to 64 letters, digits, spaces, '_', '.' or '-' and starts with a letter or digit"
)
Rules = dict[str, Any]


class ExpressionCheck(BaseModel):
    rule: str = Field(max_length=20_000)


class ExpressionTry(ExpressionCheck):
    series_id: int
    # As the rule will see the tags: typed, or as text (a rule imported from mercure).
    tag_values: Literal["typed", "text"] = "typed"


def shown_rules(request: Request, who: Principal) -> Rules:
    """The configured rules in their order, as this user may see them (webhook URLs carry
    tokens: whole only for admins)."""
    document = store.current_or_default(reader(request)).model_dump(mode="json")
    rules: Rules = shown_to({"rules": document["rules"]}, who)["rules"]
    return rules


def rule_problem(exc: RuleError) -> dict[str, Any]:
    """A RuleError in the shape of FastAPI's validation errors, with where it is."""
    return {"loc": ["body", "rule"], "msg": str(exc), "type": "rule_expression", **_where(exc)}


def _expression(text: str) -> Expression:
    try:
        return parse_rule(text)
    except RuleError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [rule_problem(exc)]) from exc


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(NAME, name):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "name"], "msg": NAME_HELP, "type": "name"}],
        )
    return name


def _checked_rule(fields: dict[str, Any]) -> dict[str, Any]:
    """The rule's fields validated alone (the expression with its position), as stored."""
    if isinstance(fields.get("rule"), str):
        _expression(fields["rule"])
    try:
        # As given: a plain dump would mask the secret module settings it stores.
        return Rule.model_validate(fields).model_dump(mode="json", context={"reveal_secrets": True})
    except ValidationError as exc:
        problems = [
            {"loc": ["body", *problem["loc"]], "msg": problem["msg"], "type": problem["type"]}
            for problem in exc.errors(include_url=False, include_input=False)
        ]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems) from exc


def _existing(document: dict[str, Any], name: str) -> dict[str, Any]:
    rule: dict[str, Any] | None = document["rules"].get(name)
    if rule is None:
        raise Refused(f"there is no rule {name!r}", status.HTTP_404_NOT_FOUND)
    return rule


def _free(document: dict[str, Any], name: str) -> None:
    if name in document["rules"]:
        raise Refused(f"a rule named {name!r} exists already")


@router.get("/rules")
def list_rules(request: Request, who: Viewer) -> list[dict[str, Any]]:
    """Every rule, in the configuration's order, each with its name."""
    return [{"name": name, **rule} for name, rule in shown_rules(request, who).items()]


@router.get("/rules/{name}")
def one_rule(request: Request, name: str, who: Viewer) -> dict[str, Any]:
    rule = shown_rules(request, who).get(name)
    if rule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"there is no rule {name!r}")
    return {"name": name, **rule}


@router.post("/rules", status_code=status.HTTP_201_CREATED)
def create_rule(request: Request, who: Admin, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """A new rule: its name and the rule's fields; 409 when the name is taken."""
    fields = dict(body)
    name = _checked_name(fields.pop("name", None))
    rule = _checked_rule(fields)

    def change(document: dict[str, Any]) -> None:
        _free(document, name)
        document["rules"][name] = rule

    return {"name": name, **edit_config(request, who, change, f"rule {name} created")}


@router.put("/rules/{name}")
def replace_rule(
    request: Request, name: str, who: Admin, body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    """Replace a rule's fields; a different "name" in the body renames it in place."""
    fields = dict(body)
    new_name = _checked_name(fields.pop("name", name))
    rule = _checked_rule(fields)

    def change(document: dict[str, Any]) -> None:
        _existing(document, name)
        if new_name != name:
            _free(document, new_name)
        # Rebuilt so that a renamed rule keeps its place in the list.
        document["rules"] = {
            (new_name if key == name else key): (rule if key == name else value)
            for key, value in document["rules"].items()
        }

    comment = f"rule {name} changed"
    if new_name != name:
        comment = f"rule {name} renamed to {new_name} and changed"
    return {"name": new_name, **edit_config(request, who, change, comment)}


@router.delete("/rules/{name}")
def delete_rule(request: Request, name: str, who: Admin) -> dict[str, Any]:
    def change(document: dict[str, Any]) -> None:
        _existing(document, name)
        del document["rules"][name]

    return {"name": name, **edit_config(request, who, change, f"rule {name} deleted")}


@router.post("/rules/{name}/duplicate", status_code=status.HTTP_201_CREATED)
def duplicate_rule(
    request: Request, name: str, who: Admin, body: dict[str, Any] | None = Body(None)
) -> dict[str, Any]:
    """A copy named as given, or "<name> copy" ("<name> copy 2" ... when taken); 409 when the
    name is taken. The copy starts disabled: two identical enabled rules would make every
    task twice."""
    given = (body or {}).get("name")
    if given is None:
        taken = shown_rules(request, who)
        given, number = f"{name} copy", 1
        while given in taken:
            number += 1
            given = f"{name} copy {number}"
    copy_name = _checked_name(given)

    def change(document: dict[str, Any]) -> None:
        original = _existing(document, name)
        _free(document, copy_name)
        document["rules"][copy_name] = {**original, "disabled": True}

    comment = f"rule {name} duplicated as {copy_name}"
    return {"name": copy_name, **edit_config(request, who, change, comment)}


def _set_disabled(request: Request, name: str, who: Principal, disabled: bool) -> dict[str, Any]:
    def change(document: dict[str, Any]) -> None:
        _existing(document, name)["disabled"] = disabled

    state = "disabled" if disabled else "enabled"
    return {"name": name, **edit_config(request, who, change, f"rule {name} {state}")}


@router.post("/rules/{name}/enable")
def enable_rule(request: Request, name: str, who: Admin) -> dict[str, Any]:
    return _set_disabled(request, name, who, False)


@router.post("/rules/{name}/disable")
def disable_rule(request: Request, name: str, who: Admin) -> dict[str, Any]:
    return _set_disabled(request, name, who, True)


@router.post("/rules/validate")
def validate_expression(check: ExpressionCheck, _: Viewer) -> dict[str, Any]:
    """Whether an expression parses; if not, what is wrong and at which character (from 0)
    of the text, with its line and column (from 1)."""
    try:
        expression = parse_rule(check.rule)
    except RuleError as exc:
        return {"valid": False, "error": str(exc), **_where(exc), "keywords": []}
    where = {"position": None, "line": None, "column": None}
    return {"valid": True, "error": "", **where, "keywords": sorted(expression.keywords)}


def _where(exc: RuleError) -> dict[str, int | None]:
    return {"position": exc.position, "line": exc.line, "column": exc.column}


@router.post("/rules/test")
async def test_expression(request: Request, attempt: ExpressionTry, _: Viewer) -> dict[str, Any]:
    """Evaluate an expression on the tags the router would see for a received series: the
    header of its newest stored instance."""
    limiter = _rule_tests(request)
    busy = limiter.statistics()
    if busy.borrowed_tokens >= busy.total_tokens and busy.tasks_waiting >= busy.total_tokens:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many rule tests are running; try again in a moment",
            headers={"Retry-After": "1"},
        )
    return await anyio.to_thread.run_sync(_test, request, attempt, limiter=limiter)


def _rule_tests(request: Request) -> anyio.CapacityLimiter:
    """The worker threads rule tests share (made on first use, on the event loop)."""
    state = request.app.state
    limiter: anyio.CapacityLimiter | None = getattr(state, "rule_tests", None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(state.settings.web_rule_tests_parallel)
        state.rule_tests = limiter
    return limiter


def _test(request: Request, attempt: ExpressionTry) -> dict[str, Any]:
    expression = _expression(attempt.rule)
    with reader(request).connect() as conn:
        series = conn.execute(
            select(SERIES.c.id, SERIES.c.series_uid).where(SERIES.c.id == attempt.series_id)
        ).first()
        if series is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such series")
    tags = _series_tags(request, attempt.series_id)
    if attempt.tag_values == "text":
        tags = as_text(tags)
    try:
        result, used = expression.explain(tags, Budget.of(request.app.state.settings))
    except EvaluationError as exc:
        problem = {
            "loc": ["body", "rule"],
            "msg": f"the rule could not be evaluated: {exc}",
            "type": "rule_evaluation",
        }
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [problem]) from exc
    return {"result": result, "tags": used, "series_uid": series.series_uid}


def _series_tags(request: Request, series_id: int) -> dict[str, Any]:
    gone = HTTPException(
        status.HTTP_409_CONFLICT,
        "the files of this series are no longer stored (cleaned); choose a newer series",
    )
    root = DataRoot(request.app.state.settings.home)
    try:
        tags = series_tags(reader(request), root, series_id=series_id)
    except SeriesNotStored as exc:
        raise gone from exc
    except UnreadableSeries as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"the series' stored file cannot be read: {exc}"
        ) from exc
    if tags is None:
        raise gone
    return tags
