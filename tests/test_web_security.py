"""Two checks across the whole web interface, each enumerating the application's routes:

- every state-changing route refuses the roles below the one it needs, changes nothing for
  them, lets the others through, and refuses a session that does not send its CSRF token;
- every page shows the values of a real received series whose tags hold markup escaped, in
  the HTML and in a real browser.

That no route answers without a login is tests/test_api.py's
test_every_route_requires_a_user (GET routes under /api answer 401, pages redirect).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.db.models import API_TOKENS, EVENTS, USERS, Base
from caduceus.core.settings import Settings
from caduceus.web import auth
from caduceus.web.app import OPEN_ROUTES, all_routes, create_app
from tests.support.browser import assert_no_errors, browser_login, shot
from tests.support.hostile import IMG_SHOWN, SCRIPT, SCRIPT_SHOWN, hostile_world, page_visits
from tests.support.processes import Caduceus, free_port
from tests.support.queue_rows import add_series, add_study, add_task
from tests.support.web import add_user, as_role, log_in, serve, web_client

ROLES = ("viewer", "operator", "admin")
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# The least role each change needs, decided from issue 7 and docs/api.md (viewers read and
# look after their own account; operators act on the queue and run tests; admins change the
# configuration and the users), not read out of the code. A route missing here fails the
# test, so every new route gets a decision. The login is open (OPEN_ROUTES).
LEAST_ROLE: dict[tuple[str, str], str] = {
    # one's own account and tokens
    ("POST", "/api/logout"): "viewer",
    ("POST", "/api/me/password"): "viewer",
    ("POST", "/api/tokens"): "viewer",
    ("DELETE", "/api/tokens/{token_id}"): "viewer",
    # checks that store nothing
    ("POST", "/api/config/validate"): "viewer",
    ("POST", "/api/config/read"): "viewer",
    ("POST", "/api/rules/validate"): "viewer",
    ("POST", "/api/rules/test"): "viewer",
    # the queue
    ("POST", "/api/studies/{study_id}/force-complete"): "operator",
    ("POST", "/api/series/{series_id}/force-complete"): "operator",
    ("POST", "/api/tasks/{task_id}/restart"): "operator",
    ("POST", "/api/tasks/{task_id}/discard"): "operator",
    ("POST", "/api/queues/{name}/suspend"): "operator",
    ("POST", "/api/queues/{name}/resume"): "operator",
    ("POST", "/api/events"): "operator",
    # tests of what is configured
    ("POST", "/api/targets/{name}/test"): "operator",
    ("POST", "/api/modules/{name}/test"): "operator",
    ("POST", "/api/selftest"): "operator",
    # users
    ("POST", "/api/users"): "admin",
    ("PATCH", "/api/users/{user_id}"): "admin",
    ("DELETE", "/api/users/{user_id}"): "admin",
    # the configuration
    ("PUT", "/api/config"): "admin",
    ("PUT", "/api/config/settings"): "admin",
    ("POST", "/api/config/versions/{version}/restore"): "admin",
    ("POST", "/api/rules"): "admin",
    ("PUT", "/api/rules/{name}"): "admin",
    ("DELETE", "/api/rules/{name}"): "admin",
    ("POST", "/api/rules/{name}/duplicate"): "admin",
    ("POST", "/api/rules/{name}/enable"): "admin",
    ("POST", "/api/rules/{name}/disable"): "admin",
    ("POST", "/api/targets"): "admin",
    ("PUT", "/api/targets/{name}"): "admin",
    ("DELETE", "/api/targets/{name}"): "admin",
    ("POST", "/api/modules"): "admin",
    ("PUT", "/api/modules/{name}"): "admin",
    ("DELETE", "/api/modules/{name}"): "admin",
}
# A self-test run waits this long at most for each stage (its least allowed).
BODIES: dict[tuple[str, str], dict[str, Any]] = {("POST", "/api/selftest"): {"timeout": 5}}


def unsafe_routes(app: FastAPI) -> set[tuple[str, str]]:
    return {(m, p) for m, p in all_routes(app) if m in UNSAFE and (m, p) not in OPEN_ROUTES}


def fill(template: str, values: dict[str, str]) -> str:
    """The path with each {parameter} replaced; a parameter without a value fails loudly."""
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], template)


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows but the sessions and the login events, which a login changes."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name == "web_sessions":
                continue
            query = select(table).order_by(*table.primary_key.columns)
            if table is EVENTS:
                query = query.where(EVENTS.c.kind.not_like("login.%"))
            found[table.name] = [tuple(row) for row in conn.execute(query)]
    return found


# -- 1: roles and CSRF on every change --------------------------------------------------------


@dataclass
class Sessions:
    clients: dict[str, TestClient]
    csrf: dict[str, dict[str, str]]

    def relog(self, role: str) -> None:
        """A logout (allowed to everyone) ends the session; the next route needs one."""
        if self.clients[role].get("/api/me").status_code == 401:
            self.csrf[role] = log_in(self.clients[role], f"{role}-user")


def a_world_to_act_on(engine: Engine, tmp_path: Path) -> dict[str, str]:
    """Real things for the path parameters, so a role check that came too late would show
    as a change in the database."""
    (tmp_path / "out").mkdir()
    config = Config.model_validate(
        {
            "targets": {"archive": {"type": "folder", "path": str(tmp_path / "out")}},
            "modules": {"mod": {"command": [sys.executable, "-c", "pass"]}},
            "rules": {"all": {"rule": "True", "targets": ["archive"]}},
        }
    )
    version, _ = store.save(engine, config, "tester")
    study_id, study_uid = add_study(engine, state="receiving")
    series_id, _ = add_series(engine, study_id, state="receiving")
    task_id = add_task(engine, "all", "error", study_uid=study_uid, targets={"archive": "error"})
    add_user(engine, "victim", "viewer")
    with engine.connect() as conn:
        victim = conn.execute(select(USERS.c.id).where(USERS.c.username == "victim")).scalar_one()
    auth.create_token(engine, victim, "victim's")
    with engine.connect() as conn:
        token = conn.execute(select(API_TOKENS.c.id)).scalar_one()
    return {
        "user_id": str(victim),
        "token_id": str(token),
        "study_id": str(study_id),
        "series_id": str(series_id),
        "task_id": task_id,
        "version": str(version),
    }


NAMES = {
    "/api/queues/": "dispatch",
    "/api/rules/": "all",
    "/api/targets/": "archive",
    "/api/modules/": "mod",
}


def path_of(route: str, ids: dict[str, str]) -> str:
    """A {name} of a kind not named here fails in fill(): a new route needs its own."""
    names = [{"name": n} for prefix, n in NAMES.items() if route.startswith(prefix)]
    return fill(route, ids | (names[0] if names else {}))


def test_every_change_checks_the_role_and_the_csrf_token(
    tmp_path: Path, database_url: str, web_engine: Engine
) -> None:
    # The self-test's own receiver is a closed port: an allowed start ends at its first stage.
    (tmp_path / "home").mkdir(exist_ok=True)  # opening the database made it, for its key
    settings = Settings(home=tmp_path / "home", database_url=database_url, dicom_port=free_port())
    app = create_app(settings, web_engine)
    routes = unsafe_routes(app)
    assert routes == set(LEAST_ROLE), (
        f"not in the table: {sorted(routes - set(LEAST_ROLE))}; "
        f"gone from the application: {sorted(set(LEAST_ROLE) - routes)}"
    )
    ids = a_world_to_act_on(web_engine, tmp_path)
    clients = {role: TestClient(app, base_url="http://testserver") for role in ROLES}
    sessions = Sessions(clients, {role: as_role(clients[role], web_engine, role) for role in ROLES})
    ordered = sorted(LEAST_ROLE)

    # Every refusal first, while nothing allowed has changed the world yet.
    for method, route in ordered:
        path = path_of(route, ids)
        body = BODIES.get((method, route), {})
        least = ROLES.index(LEAST_ROLE[(method, route)])
        for role in ROLES[:least]:
            before = snapshot(web_engine)
            answer = clients[role].request(method, path, json=body, headers=sessions.csrf[role])
            assert answer.status_code == 403, (role, method, route, answer.text)
            assert "role" in answer.json()["detail"], (role, method, route, answer.text)
            assert snapshot(web_engine) == before, (role, method, route)
        before = snapshot(web_engine)
        forged = clients["admin"].request(method, path, json=body)
        assert forged.status_code == 403, (method, route, forged.text)
        assert "CSRF" in forged.json()["detail"], (method, route)
        assert snapshot(web_engine) == before, ("without CSRF", method, route)

    for method, route in ordered:
        path = path_of(route, ids)
        body = BODIES.get((method, route), {})
        least = ROLES.index(LEAST_ROLE[(method, route)])
        for role in ROLES[least:]:
            answer = clients[role].request(method, path, json=body, headers=sessions.csrf[role])
            assert answer.status_code not in (401, 403), (role, method, route, answer.text)
            if route == "/api/selftest" and answer.status_code == 202:
                wait_for_selftest(clients[role], answer.json()["id"])
            sessions.relog(role)


def wait_for_selftest(client: TestClient, run_id: str) -> None:
    """The run works in a thread of the application; it must end before the database goes."""
    deadline = time.monotonic() + 120
    while client.get(f"/api/selftest/{run_id}").json()["state"] == "running":
        assert time.monotonic() < deadline, "the self-test did not end"
        time.sleep(0.2)


# -- 2: values from DICOM escaped on every page -----------------------------------------------


def test_dicom_values_are_escaped_on_every_page(receiver: Caduceus, tmp_path: Path) -> None:
    world = hostile_world(receiver, tmp_path)
    web = web_client(receiver.home, receiver.database_url, world.engine)
    as_role(web, world.engine, "admin")
    pages = [
        route
        for method, route in all_routes(web.app)  # type: ignore[arg-type]
        if method == "GET" and not route.startswith(("/api", "/metrics", "/static"))
    ]
    assert len(pages) > 20
    shown: dict[str, str] = {}
    for route in pages:
        for path, params in page_visits(route, world.ids):
            answer = web.get(path, params=params)
            where = (path, params)
            assert answer.status_code == 200, (where, answer.text[:500])
            if not answer.headers["content-type"].startswith("text/html"):
                # A download (the configuration as JSON) is never rendered as a page.
                assert "attachment" in answer.headers["content-disposition"], where
                continue
            # The layout's own scripts are <script src=...>; a bare <script> is injected.
            for raw in ("<script>", "<img src=x"):
                assert raw not in answer.text, (raw, where)
            shown[path + (f"?{urlencode(params)}" if params else "")] = answer.text
    ids = world.ids
    version = f"/configuration/versions/{ids['version']}"
    # The patient's name, as the queue, a task, a series, a study and the rule tester show it.
    for key in (
        "/queue?tab=received",
        "/queue?tab=failed",
        "/queue?tab=finished",
        "/queue/rows?tab=failed",
        "/queue/rows?tab=finished",
        f"/tasks/{ids['done']}",
        f"/tasks/{ids['failed']}",
        f"/series/{ids['series_id']}",
        f"/studies/{ids['study_id']}",
        "/rules/new",
    ):
        assert SCRIPT_SHOWN in shown[key], key
    # The study's and series' descriptions.
    for key in (
        "/queue?tab=received",
        f"/series/{ids['series_id']}",
        f"/studies/{ids['study_id']}",
    ):
        assert IMG_SHOWN in shown[key], key
    # Comments in the configuration (the rule's, the module's, the versions').
    for key in ("/rules", "/rules/to_archive", "/modules/mod", "/configuration", version):
        assert SCRIPT_SHOWN in shown[key], key
    for key in ("/targets/archive", version):
        assert IMG_SHOWN in shown[key], key


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_browser_shows_the_markup_as_text_and_runs_none(
    receiver: Caduceus, tmp_path: Path, page: Any
) -> None:
    world = hostile_world(receiver, tmp_path)
    web = web_client(receiver.home, receiver.database_url, world.engine)
    add_user(world.engine, "admin-user", "admin")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    with serve(web.app) as url:  # type: ignore[arg-type]
        browser_login(page, url, "admin-user", "/queue?tab=failed")
        for path, name in (
            ("/queue?tab=failed", "security-queue-failed"),
            ("/queue?tab=finished", "security-queue-finished"),
            (f"/tasks/{world.ids['failed']}", "security-task"),
        ):
            page.goto(url + path)
            text = page.inner_text("main")
            assert SCRIPT in text, path
            shot(page, name)
        assert_no_errors(page)
    assert dialogs == []


# -- 3: who sees what was typed into a failed login -------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_failed_login_names_are_shown_to_admins_only(
    web: TestClient, web_engine: Engine, role: str
) -> None:
    """A password typed into the name box ends up as the name of a failed login: the events
    show that name to admins, and to the other roles only that a login failed, and where from."""
    typed = "Pa55word-in-the-name-box"
    failed = web.post("/api/login", json={"username": typed, "password": "whatever"})
    assert failed.status_code == 401
    as_role(web, web_engine, role)
    for query in ({"kind": "login.failed"}, {}):
        shown = web.get("/api/events", params=query)
        assert shown.status_code == 200
        assert "failed login" in shown.text
        assert (typed in shown.text) is (role == "admin"), (role, shown.text)


# -- 4: ids out of range in every path and query ----------------------------------------------

OUT_OF_RANGE = (2**63, 2**64, -1)


def _int_parameters(app: FastAPI) -> list[tuple[str, str, list[Any], list[Any]]]:
    """(method, path, int path parameters, all query parameters) of every route that takes an
    integer, read from FastAPI's own route table: a new route is covered without a change."""
    from fastapi.routing import APIRoute

    def params(dependant: Any, kind: str) -> list[Any]:
        found = list(getattr(dependant, kind))
        for sub in dependant.dependencies:
            found += params(sub, kind)
        return found

    def is_int(field: Any) -> bool:
        return "int" in str(field.field_info.annotation)

    found = []
    stack = list(app.router.routes)
    while stack:
        route = stack.pop()
        if getattr(route, "original_router", None) is not None:
            stack += list(route.original_router.routes)
        elif isinstance(route, APIRoute):
            path = params(route.dependant, "path_params")
            query = params(route.dependant, "query_params")
            if any(is_int(p) for p in path + query):
                for method in sorted(route.methods - {"HEAD"}):
                    found.append((method, route.path, [p for p in path if is_int(p)], query))
    return found


def test_ids_out_of_range_never_give_a_server_error(web: TestClient, web_engine: Engine) -> None:
    """2**63 and above overflowed the database driver (HTTP 500) on /api/series/N and others.
    Every integer in a path or query of every route is bounded: the API answers 422, a page
    404. An admin asks, so no role check answers first."""
    csrf = as_role(web, web_engine, "admin")
    routes = _int_parameters(web.app)  # type: ignore[arg-type]
    assert ("GET", "/api/series/{series_id}") in {(m, p) for m, p, _, _ in routes}
    assert ("GET", "/api/events") in {(m, p) for m, p, _, _ in routes}
    tried = 0
    for method, template, path_ints, query in routes:
        # Required query integers get a valid 1 while another is out of range.
        fine_query = {
            q.alias: 1
            for q in query
            if q.field_info.is_required() and "int" in str(q.field_info.annotation)
        }
        fine_path = {p.name: "1" for p in path_ints}
        targets = [("path", p.name) for p in path_ints]
        targets += [("query", q.alias) for q in query if "int" in str(q.field_info.annotation)]
        for where, name in targets:
            for value in OUT_OF_RANGE:
                values = {"service": "receiver", **fine_path}
                url = fill(template, {**values, **({name: str(value)} if where == "path" else {})})
                params = {**fine_query, **({name: value} if where == "query" else {})}
                answer = web.request(method, url, params=params, headers=csrf)
                tried += 1
                expected = 404 if method == "GET" and not url.startswith("/api") else 422
                assert answer.status_code == expected, (method, url, params, answer.text[:200])
    assert tried >= 60
