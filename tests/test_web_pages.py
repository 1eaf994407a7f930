"""The web interface's frame: every page behind a login, the login itself, the first
password change, error pages and the security headers."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from caduceus.web import auth
from caduceus.web.app import OPEN_ROUTES, all_routes
from tests.support.web import PASSWORD, as_role, log_in


def page_routes(client: TestClient) -> list[str]:
    return [
        path
        for method, path in all_routes(client.app)  # type: ignore[arg-type]
        if method == "GET" and not path.startswith("/api") and path != "/metrics"
    ]


def test_every_page_sends_a_visitor_to_the_login(web: TestClient) -> None:
    pages = page_routes(web)
    assert {"/", "/queue", "/rules", "/targets", "/users", "/logs", "/selftest"} <= set(pages)
    for route in pages:
        if ("GET", route) in OPEN_ROUTES:
            continue
        path = re.sub(r"\{[^}]+\}", "1", route)
        answer = web.get(path, follow_redirects=False)
        assert answer.status_code == 303, f"{route}: {answer.status_code}"
        assert answer.headers["location"].startswith("/login?next="), route
    login = web.get("/login")
    assert login.status_code == 200 and 'id="login-form"' in login.text
    assert "Overview" not in login.text, "no menu before the login"


def test_pages_carry_a_strict_content_security_policy(web: TestClient) -> None:
    answer = web.get("/login")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["cache-control"] == "no-store"
    assert web.get("/static/app.js").status_code == 200


def test_the_first_login_leads_to_the_password_change(web: TestClient, web_engine: Engine) -> None:
    auth.create_user(web_engine, "newbie", PASSWORD, "operator", must_change=True)
    log_in(web, "newbie")
    answer = web.get("/queue", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/account/password"
    page = web.get("/account/password")
    assert page.status_code == 200 and "Choose your own password" in page.text


def test_menu_and_pages_follow_the_role(web: TestClient, web_engine: Engine) -> None:
    as_role(web, web_engine, "viewer")
    overview = web.get("/")
    assert overview.status_code == 200
    assert 'href="/queue"' in overview.text and 'href="/users"' not in overview.text
    refused = web.get("/users")
    assert refused.status_code == 403 and "needs the admin role" in refused.text
    missing = web.get("/no-such-page")
    assert missing.status_code == 404 and "Not found" in missing.text


def test_a_page_address_with_a_malformed_id_is_a_missing_page(
    web: TestClient, web_engine: Engine
) -> None:
    as_role(web, web_engine, "viewer")
    for path in ("/series/abc", "/studies/1x", "/configuration/versions/latest"):
        answer = web.get(path)
        assert answer.status_code == 404, path
        assert "text/html" in answer.headers["content-type"] and "No such page" in answer.text
    # The API keeps answering in JSON, saying which parameter was wrong.
    answer = web.get("/api/series/abc")
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][-1] == "series_id"


def test_the_api_reference_is_drawn_here_under_the_same_policy(
    web: TestClient, web_engine: Engine
) -> None:
    assert web.get("/api/docs").status_code == 401
    as_role(web, web_engine, "viewer")
    answer = web.get("/api/docs")
    assert answer.status_code == 200
    assert "POST</strong> /api/tasks/{task_id}/restart" in answer.text
    assert "Processing resumes at the failed step" in answer.text  # the route's docstring
    # Nothing from another site, and no exemption from the policy.
    assert "cdn." not in answer.text and "<script>" not in answer.text
    assert "script-src 'self'" in answer.headers["content-security-policy"]
