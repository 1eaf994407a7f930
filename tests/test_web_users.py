"""The Users page and one's API tokens on the account page: what an admin does with users,
what the users then see, and that nobody else can do it."""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from caduceus.core.db.models import USERS
from caduceus.web import auth
from tests.support.browser import assert_no_errors, browser_login, shot
from tests.support.web import PASSWORD, add_user, as_role, log_in

FIRST_PASSWORD = "given-by-the-admin"


def user_id(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(USERS.c.id).where(USERS.c.username == name)).scalar_one())


def second_client(web: TestClient) -> TestClient:
    return TestClient(web.app, base_url="http://testserver")


def test_an_admin_creates_a_user_who_must_choose_a_password(
    web: TestClient, web_engine: Engine
) -> None:
    admin = as_role(web, web_engine, "admin")
    page = web.get("/users")
    assert page.status_code == 200
    assert 'data-api="POST /api/users"' in page.text and 'name="username"' in page.text
    # What the page's form sends.
    made = web.post(
        "/api/users",
        json={"username": "nora", "role": "operator", "password": FIRST_PASSWORD},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    listed = web.get("/users").text
    row = listed[listed.index(">nora<") :].split("</tr>")[0]
    assert "must change password" in row and 'value="operator" selected' in row

    nora = second_client(web)
    answer = nora.post("/api/login", json={"username": "nora", "password": FIRST_PASSWORD})
    assert answer.status_code == 200 and answer.json()["must_change_password"] is True
    sent = nora.get("/queue", follow_redirects=False)
    assert sent.status_code == 303 and sent.headers["location"] == "/account/password"
    changed = nora.post(
        "/api/me/password",
        json={"current_password": FIRST_PASSWORD, "new_password": PASSWORD},
        headers={auth.CSRF_HEADER: answer.json()["csrf_token"]},
    )
    assert changed.status_code == 200
    log_in(nora, "nora")
    assert nora.get("/queue").status_code == 200
    assert "must change password" not in web.get("/users").text


def test_demoting_a_user_ends_their_session_at_once(web: TestClient, web_engine: Engine) -> None:
    admin = as_role(web, web_engine, "admin")
    add_user(web_engine, "ben", "admin")
    ben = second_client(web)
    log_in(ben, "ben")
    assert ben.get("/users").status_code == 200
    demoted = web.patch(
        f"/api/users/{user_id(web_engine, 'ben')}", json={"role": "viewer"}, headers=admin
    )
    assert demoted.status_code == 200, demoted.text
    gone = ben.get("/users", follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"].startswith("/login?next=")
    log_in(ben, "ben")
    assert ben.get("/users").status_code == 403
    assert 'href="/users"' not in ben.get("/").text


def test_viewers_and_operators_cannot_see_or_change_users(
    web: TestClient, web_engine: Engine
) -> None:
    add_user(web_engine, "target", "viewer")
    target = user_id(web_engine, "target")
    for role in ("viewer", "operator"):
        client = second_client(web)
        headers = as_role(client, web_engine, role)
        page = client.get("/users")
        assert page.status_code == 403 and "needs the admin role" in page.text
        assert client.get("/api/users").status_code == 403
        new = {"username": f"x{role}", "role": "admin", "password": FIRST_PASSWORD}
        assert client.post("/api/users", json=new, headers=headers).status_code == 403
        patch = client.patch(f"/api/users/{target}", json={"role": "admin"}, headers=headers)
        assert patch.status_code == 403
        assert client.delete(f"/api/users/{target}", headers=headers).status_code == 403
    with web_engine.connect() as conn:
        roles = dict(conn.execute(select(USERS.c.username, USERS.c.role)).all())
    assert roles["target"] == "viewer" and "xviewer" not in roles and "xoperator" not in roles


def test_disable_reset_and_remove_from_the_page(web: TestClient, web_engine: Engine) -> None:
    admin = as_role(web, web_engine, "admin")
    add_user(web_engine, "carl", "operator")
    carl_id = user_id(web_engine, "carl")
    page = web.get("/users").text
    assert f'data-action="PATCH /api/users/{carl_id}"' in page
    assert f'data-action="DELETE /api/users/{carl_id}"' in page
    carl = second_client(web)
    log_in(carl, "carl")

    disabled = web.patch(f"/api/users/{carl_id}", json={"disabled": True}, headers=admin)
    assert disabled.status_code == 200
    assert carl.get("/", follow_redirects=False).status_code == 303
    assert (
        carl.post("/api/login", json={"username": "carl", "password": PASSWORD}).status_code == 401
    )
    assert "disabled" in web.get("/users").text
    web.patch(f"/api/users/{carl_id}", json={"disabled": False}, headers=admin)

    reset = web.patch(f"/api/users/{carl_id}", json={"password": FIRST_PASSWORD}, headers=admin)
    assert reset.status_code == 200
    again = carl.post("/api/login", json={"username": "carl", "password": FIRST_PASSWORD})
    assert again.status_code == 200 and again.json()["must_change_password"] is True

    # The page offers no way to disable or remove oneself, and the API keeps the last admin.
    me = user_id(web_engine, "admin-user")
    assert f'data-action="DELETE /api/users/{me}"' not in web.get("/users").text
    last = web.patch(f"/api/users/{me}", json={"role": "viewer"}, headers=admin)
    assert last.status_code == 409 and "no enabled admin" in last.text

    removed = web.delete(f"/api/users/{carl_id}", headers=admin)
    assert removed.status_code == 200
    assert ">carl<" not in web.get("/users").text


def test_user_names_are_escaped(web: TestClient, web_engine: Engine) -> None:
    # The API refuses such a name; one made another way must still be harmless.
    add_user(web_engine, "<script>alert(1)</script>", "viewer")
    as_role(web, web_engine, "admin")
    page = web.get("/users").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_own_api_tokens_on_the_account_page(web: TestClient, web_engine: Engine) -> None:
    headers = as_role(web, web_engine, "viewer")
    page = web.get("/account")
    assert page.status_code == 200 and "You have no API tokens" in page.text
    assert 'id="token-form"' in page.text and "tokens.js" in page.text
    made = web.post("/api/tokens", json={"name": "<b>grafana</b>"}, headers=headers)
    assert made.status_code == 201
    token = made.json()["token"]
    page = web.get("/account").text
    assert "&lt;b&gt;grafana&lt;/b&gt;" in page and "<b>grafana</b>" not in page
    assert token not in page, "a token is shown once, when it is made"
    bearer = {"Authorization": f"Bearer {token}"}
    assert web.get("/api/me", headers=bearer).status_code == 200
    token_id = re.search(r'data-action="DELETE /api/tokens/(\d+)"', page)
    assert token_id is not None
    revoked = web.delete(f"/api/tokens/{token_id.group(1)}", headers=headers)
    assert revoked.status_code == 200
    assert web.get("/api/me", headers=bearer).status_code == 401
    page = web.get("/account").text
    assert "revoked" in page and 'data-action="DELETE /api/tokens/' not in page
    # Someone else's token cannot be revoked.
    other = second_client(web)
    other_headers = as_role(other, web_engine, "admin")
    kept = other.post("/api/tokens", json={"name": "kept"}, headers=other_headers).json()
    listed = other.get("/api/tokens").json()
    assert web.delete(f"/api/tokens/{listed[0]['id']}", headers=headers).status_code == 404
    assert (
        web.get("/api/me", headers={"Authorization": f"Bearer {kept['token']}"}).status_code == 200
    )


def test_users_and_tokens_in_a_browser(served: str, web_engine: Engine, page: Any) -> None:
    add_user(web_engine, "ada", "admin")
    browser_login(page, served, "ada", "/users")
    page.fill("#new-username", "nora")
    page.select_option("#new-role", "operator")
    page.fill("#new-password", FIRST_PASSWORD)
    page.click("#new-user button[type=submit]")
    page.get_by_role("cell", name="nora", exact=True).wait_for()
    nora = user_id(web_engine, "nora")
    page.select_option(f"#role-{nora}", "viewer")
    page.locator(f"#role-{nora}").locator("xpath=..").locator("button").click()
    page.wait_for_load_state("load")
    page.locator(f"#role-{nora} option[value=viewer][selected]").wait_for(state="attached")
    with web_engine.connect() as conn:
        row = conn.execute(select(USERS).where(USERS.c.id == nora)).one()
    assert row.role == "viewer" and row.must_change_password
    shot(page, "users")

    page.goto(served + "/account")
    page.fill("#token-name", "monitoring")
    page.click("#token-form button[type=submit]")
    page.locator("#token-created").wait_for()
    token = page.locator("#token-value").inner_text()
    assert token.startswith(auth.TOKEN_PREFIX)
    shot(page, "account-token-created")
    page.click("#token-created a.button")
    page.get_by_role("cell", name="monitoring", exact=True).wait_for()
    assert token not in page.content()
    assert_no_errors(page)


NEW_PASSWORD = "a fresh one 2024"


def _token(web: TestClient, headers: dict[str, str], name: str) -> dict[str, str]:
    made = web.post("/api/tokens", json={"name": name}, headers=headers)
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['token']}"}


def test_ones_own_password_change_revokes_the_tokens_unless_asked_not_to(
    web: TestClient, web_engine: Engine
) -> None:
    """A password change may follow a leak: by default the user's API tokens go with the old
    password (they survived it before; only an admin's reset revoked them)."""
    headers = as_role(web, web_engine, "operator")
    bearer = _token(web, headers, "script")
    changed = web.post(
        "/api/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    assert web.get("/api/me", headers=bearer).status_code == 401, "the old token is revoked"
    headers = log_in(web, "operator-user", NEW_PASSWORD)
    assert all(t["revoked"] for t in web.get("/api/tokens").json())

    bearer = _token(web, headers, "kept")
    kept = web.post(
        "/api/me/password",
        json={"current_password": NEW_PASSWORD, "new_password": PASSWORD, "revoke_tokens": False},
        headers=headers,
    )
    assert kept.status_code == 200, kept.text
    assert web.get("/api/me", headers=bearer).json()["username"] == "operator-user"
    assert web.get("/api/me").status_code == 401, "the sessions end all the same"


def test_the_password_change_is_throttled(web: TestClient, web_engine: Engine) -> None:
    """A stolen session must not become a way to guess the password: after five wrong
    current passwords the change answers 429, the right one too, until the window passes."""
    headers = as_role(web, web_engine, "viewer")
    for n in range(5):  # CADUCEUS_WEB_PASSWORD_CHANGE_FAILURES
        wrong = web.post(
            "/api/me/password",
            json={"current_password": f"guess number {n}", "new_password": NEW_PASSWORD},
            headers=headers,
        )
        assert wrong.status_code == 403, wrong.text
    blocked = web.post(
        "/api/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
    assert web.get("/api/me").status_code == 200, "nothing changed: the session still works"


def test_the_password_form_asks_whether_to_revoke_tokens(
    served: str, web_engine: Engine, page: Any
) -> None:
    """In Chromium: the box is ticked by default; unticked, the token outlives the change."""
    add_user(web_engine, "vera", "viewer")
    browser_login(page, served, "vera", "/account/password")
    assert page.is_checked("#revoke_tokens")
    token = auth.create_token(web_engine, user_id(web_engine, "vera"), "dashboard")
    page.fill("#current_password", PASSWORD)
    page.fill("#new_password", NEW_PASSWORD)
    page.fill("#repeat_password", NEW_PASSWORD)
    page.uncheck("#revoke_tokens")
    shot(page, "password-change")
    page.click("#password-form button[type=submit]")
    page.wait_for_url(served + "/login?changed=1")
    answer = httpx.get(f"{served}/api/me", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, "kept, as asked"
    assert_no_errors(page)
