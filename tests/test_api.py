"""The bookkeeper API: every route behind a login, roles, sessions, tokens, search, actions.

The application runs in the test process (Starlette's TestClient speaks HTTP to it without a
socket); images arrive through a real receiver process sharing the database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from caduceus.core.config.models import Config
from caduceus.core.database import open_database
from caduceus.core.settings import Settings
from caduceus.web import auth
from caduceus.web.app import OPEN_ROUTES, all_routes, create_app
from caduceus.web.throttle import LoginThrottle
from tests.support.processes import Caduceus
from tests.support.routing import router_for
from tests.support.sending import send

PASSWORD = "correct horse battery"


@pytest.fixture
def engine(receiver: Caduceus) -> Iterator[Engine]:
    engine = open_database(Settings(home=receiver.home, database_url=receiver.database_url))
    yield engine
    engine.dispose()


@pytest.fixture
def client(receiver: Caduceus, engine: Engine) -> TestClient:
    settings = Settings(home=receiver.home, database_url=receiver.database_url)
    return TestClient(create_app(settings, engine), base_url="http://testserver")


def user(engine: Engine, name: str, role: str) -> None:
    auth.create_user(engine, name, PASSWORD, role)


def login(client: TestClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    answer = client.post("/api/login", json={"username": name, "password": password})
    assert answer.status_code == 200, answer.text
    return {auth.CSRF_HEADER: answer.json()["csrf_token"]}


def token_for(client: TestClient, engine: Engine, name: str, role: str) -> dict[str, str]:
    user(engine, name, role)
    with engine.connect() as conn:
        from sqlalchemy import select

        from caduceus.core.db.models import USERS

        user_id = conn.execute(select(USERS.c.id).where(USERS.c.username == name)).scalar_one()
    return {"Authorization": f"Bearer {auth.create_token(engine, user_id, 'test')}"}


def test_every_route_requires_a_user(client: TestClient) -> None:
    """Enumerates the application's routes: none answers without credentials."""
    routes = all_routes(client.app)  # type: ignore[arg-type]
    assert len(routes) > 20
    checked = 0
    for method, route in routes:
        if (method, route) in OPEN_ROUTES or method == "HEAD":
            continue
        path = re.sub(r"\{[^}]+\}", "1", route)
        answer = client.request(method, path, json={}, follow_redirects=False)
        if method == "GET" and not route.startswith(("/api", "/metrics")):
            # A page: the visitor is sent to the login form instead.
            assert answer.status_code == 303, f"{method} {route}: {answer.status_code}"
            assert answer.headers["location"].startswith("/login?next=")
        else:
            assert answer.status_code == 401, f"{method} {route}: {answer.status_code}"
        checked += 1
    # The OpenAPI description and its viewer, too.
    for path in ("/api/openapi.json", "/api/docs", "/metrics"):
        assert client.get(path).status_code == 401, path
    assert checked > 20


def test_first_login_must_change_the_password_and_old_sessions_die(
    client: TestClient, engine: Engine, receiver: Caduceus
) -> None:
    path = auth.ensure_initial_admin(engine, receiver.home)
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    first = path.read_text().strip()
    headers = login(client, "admin", first)
    assert client.get("/api/me").json()["must_change_password"] is True
    answer = client.get("/api/tasks")
    assert answer.status_code == 403 and "password must be changed" in answer.text
    # A change without the CSRF token is refused, even with the right session.
    refused = client.post(
        "/api/me/password", json={"current_password": first, "new_password": PASSWORD}
    )
    assert refused.status_code == 403 and "CSRF" in refused.text
    changed = client.post(
        "/api/me/password",
        json={"current_password": first, "new_password": PASSWORD},
        headers=headers,
    )
    assert changed.status_code == 200
    assert not path.exists(), "the first password's file is gone once it is changed"
    assert client.get("/api/me").status_code == 401, "the old session ended"
    login(client, "admin")
    assert client.get("/api/tasks").status_code == 200


def test_roles_are_checked_on_every_action(client: TestClient, engine: Engine) -> None:
    viewer = token_for(client, engine, "val", "viewer")
    operator = token_for(client, engine, "otto", "operator")
    admin = token_for(client, engine, "ada", "admin")
    assert client.get("/api/tasks", headers=viewer).status_code == 200
    for headers, allowed in ((viewer, False), (operator, True), (admin, True)):
        answer = client.post("/api/queues/dispatch/suspend", headers=headers)
        assert (answer.status_code == 200) is allowed, answer.text
    document = client.get("/api/config", headers=admin).json()
    for headers, allowed in ((viewer, False), (operator, False), (admin, True)):
        answer = client.put("/api/config", json=document, headers=headers)
        assert (answer.status_code == 200) is allowed, answer.text
        assert client.get("/api/users", headers=headers).status_code == (200 if allowed else 403)


def test_a_demoted_or_disabled_user_loses_access_at_once(
    client: TestClient, engine: Engine
) -> None:
    admin = token_for(client, engine, "ada", "admin")
    user(engine, "olga", "operator")
    other = TestClient(client.app)
    headers = login(other, "olga")
    assert other.post("/api/queues/process/suspend", headers=headers).status_code == 200
    users = {u["username"]: u["id"] for u in client.get("/api/users", headers=admin).json()}
    client.patch(f"/api/users/{users['olga']}", json={"role": "viewer"}, headers=admin)
    assert other.get("/api/tasks").status_code == 401, "the session ended with the demotion"
    headers = login(other, "olga")
    assert other.post("/api/queues/process/resume", headers=headers).status_code == 403
    client.patch(f"/api/users/{users['olga']}", json={"disabled": True}, headers=admin)
    assert other.get("/api/tasks").status_code == 401
    failed = other.post("/api/login", json={"username": "olga", "password": PASSWORD})
    assert failed.status_code == 401


def test_tokens_are_shown_once_and_can_be_revoked(client: TestClient, engine: Engine) -> None:
    admin = token_for(client, engine, "ada", "admin")
    made = client.post("/api/tokens", json={"name": "prometheus"}, headers=admin).json()
    bearer = {"Authorization": f"Bearer {made['token']}"}
    assert client.get("/api/me", headers=bearer).json()["username"] == "ada"
    listed = client.get("/api/tokens", headers=admin).json()
    assert made["token"] not in str(listed)
    token_id = next(t["id"] for t in listed if t["name"] == "prometheus")
    client.delete(f"/api/tokens/{token_id}", headers=admin)
    assert client.get("/api/me", headers=bearer).status_code == 401


def test_logins_are_rate_limited_and_recorded(client: TestClient, engine: Engine) -> None:
    user(engine, "val", "viewer")
    for _ in range(10):  # CADUCEUS_WEB_LOGIN_FAILURES_PER_ADDRESS
        wrong = client.post("/api/login", json={"username": "val", "password": "nope"})
        assert wrong.status_code == 401
    blocked = client.post("/api/login", json={"username": "val", "password": PASSWORD})
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    admin = token_for(client, engine, "ada", "admin")
    failures = client.get("/api/events", params={"kind": "login.failed"}, headers=admin).json()
    assert len(failures) == 10 and "nope" not in str(failures)


def test_search_and_task_detail(
    client: TestClient, engine: Engine, receiver: Caduceus, tmp_path: Path
) -> None:
    send(
        receiver,
        tmp_path / "a",
        count=3,
        modality="CT",
        patient_name="Doe^Jane",
        patient_id="P1",
        accession_number="ACC1",
    )
    send(
        receiver,
        tmp_path / "b",
        count=2,
        modality="MR",
        patient_name="Roe^Richard",
        patient_id="P2",
        accession_number="ACC2",
    )
    archive = tmp_path / "archive"
    config = Config.model_validate(
        {
            "targets": {"archive": {"type": "folder", "path": str(archive)}},
            "rules": {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["archive"]}},
        }
    )
    router_for(receiver).run_pass(config, datetime.now(UTC) + timedelta(seconds=61))
    viewer = token_for(client, engine, "val", "viewer")

    def get(path: str, **params: Any) -> Any:
        answer = client.get(path, params=params, headers=viewer)
        assert answer.status_code == 200, answer.text
        return answer.json()

    [jane] = get("/api/series", patient_name="doe")
    assert (jane["modality"], jane["instances"], jane["patient_id"]) == ("CT", 3, "P1")
    assert jane["senders"] == ["STORESCU@127.0.0.1"]
    assert [s["patient_id"] for s in get("/api/series", modality="mr")] == ["P2"]
    assert [s["accession_number"] for s in get("/api/studies", accession_number="ACC2")] == ["ACC2"]
    [task] = get("/api/tasks", rule="ct", state="queued")
    assert get("/api/tasks", target="archive")[0]["id"] == task["id"]
    assert get("/api/tasks", accession_number="ACC1")[0]["id"] == task["id"]
    assert get("/api/tasks", accession_number="ACC2") == []
    detail = get(f"/api/tasks/{task['id']}")
    assert detail["targets_detail"][0]["target"] == "archive"
    assert detail["info"]["info"]["patient_name"] == "Doe^Jane"
    assert [e["kind"] for e in detail["events"]] == ["task.created"]
    assert {e["kind"] for e in get("/api/events", kind="series.")} >= {
        "series.complete",
        "series.discarded",
    }
    assert client.get("/api/tasks/nope", headers=viewer).status_code == 404
    assert client.get(f"/api/tasks/{task['id']}/logs/..%2Fin", headers=viewer).status_code == 404


def test_actions_restart_force_complete_and_outside_events(
    client: TestClient, engine: Engine, receiver: Caduceus, tmp_path: Path
) -> None:
    send(receiver, tmp_path / "a", count=2, modality="CT")
    operator = token_for(client, engine, "otto", "operator")
    admin = token_for(client, engine, "ada", "admin")
    document = {
        "targets": {"gone": {"type": "folder", "path": str(tmp_path / "missing")}},
        "rules": {
            "study": {"rule": "True", "trigger": "study", "targets": ["gone"]},
        },
        "settings": {"study_complete_trigger": 86400, "retry_max": 0},
    }
    assert client.put("/api/config", json=document, headers=admin).status_code == 200
    config = Config.model_validate(document)
    router_for(receiver).run_pass(config, datetime.now(UTC) + timedelta(seconds=61))
    assert client.get("/api/tasks", headers=operator).json() == []  # the study waits a day
    [study] = client.get("/api/studies", headers=operator).json()
    forced = client.post(f"/api/studies/{study['id']}/force-complete", headers=operator)
    assert forced.status_code == 200 and len(forced.json()["tasks"]) == 1
    again = client.post(f"/api/studies/{study['id']}/force-complete", headers=operator)
    assert again.status_code == 409

    task_id = forced.json()["tasks"][0]

    # A series can be completed before its quiet time, too; its rules run at once.
    send(receiver, tmp_path / "b", count=1, modality="MR")
    [mr] = client.get("/api/series?modality=MR", headers=operator).json()
    assert mr["state"] == "receiving"
    viewer = token_for(client, engine, "val", "viewer")
    assert client.post(f"/api/series/{mr['id']}/force-complete", headers=viewer).status_code == 403
    done = client.post(f"/api/series/{mr['id']}/force-complete", headers=operator)
    assert done.status_code == 200 and done.json()["completed"], done.text
    assert client.get(f"/api/series/{mr['id']}", headers=operator).json()["state"] == "complete"
    again = client.post(f"/api/series/{mr['id']}/force-complete", headers=operator)
    assert again.status_code == 409 and "not receiving" in again.text
    assert client.post("/api/series/999999/force-complete", headers=operator).status_code == 404

    refused = client.post(f"/api/tasks/{task_id}/restart", headers=operator)
    assert refused.status_code == 409 and "not in error" in refused.text

    made = client.post(
        "/api/events",
        json={"kind": "report.signed", "message": "signed by Dr X", "task_id": task_id},
        headers=operator,
    )
    assert made.status_code == 201
    kinds = [
        e["kind"] for e in client.get(f"/api/tasks/{task_id}", headers=operator).json()["events"]
    ]
    assert "external.report.signed" in kinds
    bad = client.post("/api/events", json={"kind": "../../x"}, headers=operator)
    assert bad.status_code == 422


def test_configuration_is_validated_and_secrets_stay_masked(
    client: TestClient, engine: Engine
) -> None:
    admin = token_for(client, engine, "ada", "admin")
    secret = "hunter2-but-longer"
    document = {
        "targets": {
            "web": {
                "type": "dicomweb",
                "url": "http://pacs/dicom-web",
                "username": "u",
                "password": secret,
            }
        }
    }
    saved = client.put("/api/config", json=document, headers=admin)
    assert saved.status_code == 200, saved.text
    shown = client.get("/api/config", headers=admin)
    assert secret not in shown.text and shown.json()["targets"]["web"]["password"] == "**********"
    # The masked document saved again keeps the secret.
    again = client.put("/api/config", json=shown.json(), headers=admin)
    assert again.status_code == 200
    bad = client.put(
        "/api/config",
        json={"rules": {"x": {"rule": "@Modality@ ==", "targets": []}}},
        headers=admin,
    )
    assert bad.status_code == 422 and "rules -> x -> rule" in bad.text
    versions = client.get("/api/config/versions", headers=admin).json()
    assert versions[0]["author"] == "ada"


def test_caduceus_run_serves_the_api(launch: Any) -> None:
    import httpx

    from tests.support.waiting import wait_for_port

    instance = launch("run")
    wait_for_port(instance.web_port, timeout=60)
    base = f"http://127.0.0.1:{instance.web_port}"
    assert httpx.get(f"{base}/api/health").status_code == 401
    first = (instance.home / "initial-admin-password").read_text().strip()
    with httpx.Client(base_url=base) as browser:
        answer = browser.post("/api/login", json={"username": "admin", "password": first})
        assert answer.status_code == 200 and answer.json()["must_change_password"] is True
        assert browser.get("/api/health").status_code == 403  # change the password first
    assert first not in instance.log()


def test_the_last_admin_stays_and_a_reset_ends_the_users_tokens(
    client: TestClient, engine: Engine
) -> None:
    admin = token_for(client, engine, "ada", "admin")
    users = {u["username"]: u["id"] for u in client.get("/api/users", headers=admin).json()}
    for change in ({"role": "viewer"}, {"disabled": True}):
        answer = client.patch(f"/api/users/{users['ada']}", json=change, headers=admin)
        assert answer.status_code == 409 and "no enabled admin" in answer.text
    olga = token_for(client, engine, "olga", "operator")
    users = {u["username"]: u["id"] for u in client.get("/api/users", headers=admin).json()}
    reset = client.patch(
        f"/api/users/{users['olga']}", json={"password": "a new secret 123"}, headers=admin
    )
    assert reset.status_code == 200
    assert client.get("/api/me", headers=olga).status_code == 401, "her tokens went too"


def test_guesses_spread_over_addresses_are_limited_per_user_name() -> None:
    """Past the name's limit, an address that failed itself is kept out of that name; one
    that has not failed may still try (the right password must get through)."""
    throttle = LoginThrottle(per_address=10, per_name=20)
    for n in range(20):
        assert not throttle.attempt(f"10.0.0.{n}", "Admin")
        throttle.finished(f"10.0.0.{n}", "Admin", failed=True)
    assert throttle.attempt("10.0.0.1", "admin")  # any case: blocked, it failed itself
    assert not throttle.attempt("10.9.9.9", "admin"), "a clean address still may try"
