"""Hardening of the web interface: the login never leads to another site, a huge request body
is refused before anyone reads it, a study queued for a removed target ends in a visible
error, and floods of logins or huge bodies from anyone who reaches the port neither stall the
service nor lock a user out."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.db.models import USERS
from caduceus.web import auth
from caduceus.web.body_limit import MAX_BODY_BYTES
from caduceus.web.password_work import Busy, PasswordWork
from caduceus.web.throttle import LoginThrottle
from tests.support.browser import browser_login
from tests.support.clock import later
from tests.support.dispatching import run_dispatcher
from tests.support.processes import Caduceus
from tests.support.routing import router_for
from tests.support.rows import tasks
from tests.support.sending import send
from tests.support.waiting import wait_for_port
from tests.support.web import (
    PASSWORD,
    WebProcess,
    add_user,
    as_role,
    client_from,
    web_client,
)


@pytest.mark.parametrize("bad", ["/%09/example.com/", "/%0A/example.com/", "/%5C/example.com/"])
def test_the_login_never_leads_to_another_site(
    served: str, page: Any, web_engine: Engine, bad: str
) -> None:
    """A link to /login?next=... from a phishing mail must land on caduceus itself: browsers
    drop tabs and newlines from addresses and read a backslash as a slash, so "/<tab>/evil"
    would become "//evil", another site."""
    add_user(web_engine, "viewer-user", "viewer")
    page.goto(f"{served}/login?next={bad}")
    page.fill("#username", "viewer-user")
    page.fill("#password", PASSWORD)
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(served) else elsewhere.append(r.url))
    page.click("#login-form button[type=submit]")
    # Gone elsewhere, the wait fails (nothing answers there): the assertion says where.
    with contextlib.suppress(Exception):
        page.wait_for_url(f"{served}/", timeout=10_000)
    assert elsewhere == [] and page.url == f"{served}/", (page.url, elsewhere)


def test_a_path_on_this_site_is_kept_after_the_login(
    served: str, page: Any, web_engine: Engine
) -> None:
    add_user(web_engine, "viewer-user", "viewer")
    browser_login(page, served, "viewer-user", "/queue?tab=failed")
    assert page.url == f"{served}/queue?tab=failed"


def _chunks(total: int, size: int = 1024 * 1024) -> Iterator[bytes]:
    """A JSON document of about `total` bytes, sent without a declared length."""
    yield b'{"comment": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


def test_a_huge_body_is_refused_before_anyone_reads_it(web: TestClient) -> None:
    """Nobody logged in: the body must not be read and parsed before the login check."""
    too_much = MAX_BODY_BYTES + 1024 * 1024
    declared = web.post(
        "/api/login",
        content=b"x" * too_much,
        headers={"Content-Type": "application/json"},
    )
    assert declared.status_code == 413, declared.text
    chunked = web.put(
        "/api/config", content=_chunks(too_much), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413, chunked.text
    small = web.put("/api/config", json={"comment": "x" * 1000})
    assert small.status_code == 401, "a body within the limit reaches the login check"


def test_a_removed_target_leaves_its_queued_task_in_error_not_done(
    receiver: Caduceus, database_url: str, tmp_path: Path
) -> None:
    """An admin moves a rule to another target and removes the old one while a study waits
    for it: the study must end as a visible error (restartable once the target is back),
    never as done."""
    old = tmp_path / "old"
    old.mkdir()
    engine = receiver.engine()
    before = Config.model_validate(
        {
            "settings": {"retry_delay": 10, "retry_max": 1},
            "targets": {"old": {"type": "folder", "path": str(old)}},
            "rules": {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["old"]}},
        }
    )
    store.save(engine, before, "tester")
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    router_for(receiver).run_pass(before, later(61))
    [task] = tasks(receiver)

    web = web_client(receiver.home, database_url, engine)
    csrf = as_role(web, engine, "admin")
    assert web.delete("/api/rules/ct", headers=csrf).status_code == 200
    assert web.delete("/api/targets/old", headers=csrf).status_code == 200
    after = store.current_or_default(engine)

    assert run_dispatcher(receiver, after, later(62)) == ["dispatching"]
    assert run_dispatcher(receiver, after, later(10_000)) == ["error"]  # retry_max 1
    [task] = tasks(receiver)
    assert task["state"] == "error"
    assert "target 'old' is no longer configured" in task["error"]
    assert list(old.iterdir()) == [], "nothing was sent"
    page = web.get(f"/tasks/{task['id']}")
    assert "is no longer configured" in page.text

    # The target is back: a restart sends the study.
    store.save(engine, before, "tester")
    assert web.post(f"/api/tasks/{task['id']}/restart", headers=csrf).status_code == 200
    assert run_dispatcher(receiver, before, later(10_001)) == ["done"]
    assert len(list((old / task["id"]).glob("*.dcm"))) == 2


# -- unauthenticated load: floods of logins, huge bodies (issue 14, points 5 and 6) ----------

FLOOD = 200
T = TypeVar("T")


def in_own_loop(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine in a thread's own event loop: Playwright's sync API keeps one running
    in the main thread once a browser test has run in the session."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, work).result()


def set_password(engine: Engine, name: str, password: str = PASSWORD) -> None:
    """The user's password, set as the user would (the first admin's generated one too)."""
    with engine.connect() as conn:
        user_id = conn.execute(select(USERS.c.id).where(USERS.c.username == name)).scalar_one()
    auth.change_password(engine, user_id, password)


async def _flood_and_log_in(url: str) -> tuple[list[httpx.Response], httpx.Response, float, int]:
    """FLOOD logins with throwaway names at once from 127.0.0.1 (each claiming another address
    in X-Forwarded-For, which must not be believed); meanwhile `admin` logs in from 127.0.0.2
    and someone opens the login page. Returns the flood's answers, the admin's answer, the
    seconds it took, and the login page's status."""
    limits = httpx.Limits(max_connections=FLOOD, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as flood,
        httpx.AsyncClient(
            base_url=url,
            transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"),
            timeout=30,
        ) as user,
    ):
        guesses = [
            asyncio.create_task(
                flood.post(
                    "/api/login",
                    json={"username": f"nobody-{n}", "password": "a guess"},
                    headers={"X-Forwarded-For": f"10.1.{n // 250}.{n % 250}"},
                )
            )
            for n in range(FLOOD)
        ]
        await asyncio.sleep(0.3)  # the flood is on its way
        started = time.monotonic()
        answer = await user.post("/api/login", json={"username": "admin", "password": PASSWORD})
        took = time.monotonic() - started
        login_page = (await user.get("/login")).status_code
        return await asyncio.gather(*guesses), answer, took, login_page


def test_a_flood_of_throwaway_names_is_throttled_and_others_still_log_in(
    web_process: WebProcess,
) -> None:
    """200 logins at once with throwaway names from one address each cost an argon2 hash and
    froze the service for 36 s. Now the address is throttled across user names (429 with
    Retry-After) and the hashing runs a few at a time off the event loop, so a user at
    another address logs in at once and the login page answers during the flood."""
    set_password(web_process.engine, "admin")
    flood, answer, took, login_page = in_own_loop(_flood_and_log_in(web_process.url))
    statuses = Counter(r.status_code for r in flood)
    assert answer.status_code == 200, (answer.status_code, answer.text, took)
    assert login_page == 200
    assert statuses[429] >= FLOOD - 10, statuses  # CADUCEUS_WEB_LOGIN_FAILURES_PER_ADDRESS
    assert set(statuses) <= {401, 429, 503}, statuses
    assert all(int(r.headers["Retry-After"]) >= 1 for r in flood if r.status_code == 429)
    print(f"admin's login from 127.0.0.2 during the flood: {took:.2f} s; flood {statuses}")


def test_admin_cannot_be_locked_out_from_elsewhere(web_process: WebProcess) -> None:
    """Failures for `admin` from other addresses, past the limit for the name, do not keep
    the right password from an address that is not failing."""
    set_password(web_process.engine, "admin")
    wrong = {"username": "admin", "password": "not the password"}
    seen: Counter[int] = Counter()
    for address in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
        with client_from(address, web_process.url, timeout=30) as attacker:
            for _ in range(12):
                seen[attacker.post("/api/login", json=wrong).status_code] += 1
    # 10 from .3, 10 from .4 (each address's own limit), then .5 once: 21 failures for admin.
    assert seen == {401: 21, 429: 15}, seen
    with client_from("127.0.0.5", web_process.url, timeout=30) as attacker:
        again = attacker.post("/api/login", json={"username": "admin", "password": PASSWORD})
        assert again.status_code == 429, "an address that is failing stays out"
    with client_from("127.0.0.2", web_process.url, timeout=30) as admin:
        answer = admin.post("/api/login", json={"username": "admin", "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        assert admin.get("/api/me").json()["username"] == "admin"


def _flat_json(size: int) -> bytes:
    """A flat JSON array of about `size` bytes: cheap to send, costly to parse (each 0 becomes
    a Python object)."""
    return b"[" + b"0," * (size // 2 - 1) + b"0]"


def _sample_rss(web: WebProcess, until: threading.Event) -> int:
    """The web process's largest resident memory (KiB), sampled every 10 ms until told."""
    peak = web.rss_kib()
    while not until.wait(0.01):
        peak = max(peak, web.rss_kib())
    return peak


def test_huge_login_bodies_are_refused_at_once_with_flat_memory(
    web_process: WebProcess,
) -> None:
    """A 9.9 MiB JSON body to /api/login took 4.8 s and 500 MiB before any check (six at
    once: 1 GiB), and the 422 echoed it back. Now a login body over a few kB is refused
    (413) before it is read, whether its length is declared or it comes in chunks."""
    body = _flat_json(int(9.9 * 1024 * 1024))
    # Not VmHWM: the start-up's own argon2 hash (the first admin's) set a peak already.
    before = web_process.rss_kib()

    def declared() -> httpx.Response:
        return httpx.post(
            f"{web_process.url}/api/login",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )

    def chunked() -> httpx.Response:
        step = 64 * 1024
        return httpx.post(
            f"{web_process.url}/api/login",
            content=(body[i : i + step] for i in range(0, len(body), step)),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )

    with ThreadPoolExecutor(7) as pool:
        sampled = pool.submit(_sample_rss, web_process, until := threading.Event())
        answers = list(pool.map(lambda send: send(), [declared, chunked] * 3))
        until.set()
        peak = sampled.result()
    print(f"web RSS {before // 1024} MiB before, at most {peak // 1024} MiB under 6 x 9.9 MiB")
    for answer in answers:
        assert answer.status_code == 413, answer.text[:200]
        assert len(answer.content) < 1000 and b"0,0,0" not in answer.content
    assert peak - before < 50 * 1024, (before, peak)


def test_validation_errors_never_echo_the_input(web: TestClient, web_engine: Engine) -> None:
    """A 422 says where and why, never what was sent (a password in the wrong field, a
    large document)."""
    secret = "Secret-Passw0rd-typed-here"
    answers = [
        web.post("/api/login", json={"username": secret * 3, "password": "x"}),
        web.post("/api/login", json={"username": "ada", "password": {secret: 1}}),
        web.post("/api/login", json=[secret]),
        web.post(
            "/api/login",
            content=f'{{"username": "{secret}", '.encode(),
            headers={"Content-Type": "application/json"},
        ),
    ]
    csrf = as_role(web, web_engine, "admin")
    answers.append(web.post("/api/users", json={"username": secret, "role": secret}, headers=csrf))
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert secret not in answer.text, answer.text
        assert answer.json()["detail"][0]["loc"][0] == "body"


def _fail(throttle: LoginThrottle, address: str, name: str) -> bool:
    """One failed login if the throttle lets it be tried; whether it did."""
    if throttle.attempt(address, name):
        return False
    throttle.finished(address, name, failed=True)
    return True


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    """An attacker with many addresses cannot grow the tables without end; IPv6 addresses
    count per /64, so one subscriber's many addresses are one."""
    throttle = LoginThrottle(per_address=3, per_name=1000, max_keys=1000)
    for n in range(20_000):
        _fail(throttle, f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", f"name-{n}")
    assert len(throttle.addresses.keys) <= 1000 and len(throttle.names.keys) <= 1000
    assert throttle.running == {}
    tried = [_fail(throttle, f"2001:db8:1:2::{n:x}", "someone") for n in range(1, 6)]
    assert tried == [True, True, True, False, False]
    assert _fail(throttle, "2001:db8:1:3::1", "someone"), "another /64 is another client"


def test_a_right_password_gives_the_attackers_of_a_name_no_more_guesses() -> None:
    """A success from a clean address used to take back a count from a user name at its
    limit: each of the owner's logins gave the failing addresses one more guess."""
    throttle = LoginThrottle(per_address=3, per_name=4)
    attackers = [f"10.0.1.{n}" for n in range(1, 5)]
    assert [_fail(throttle, address, "admin") for address in attackers] == [True] * 4
    for n in range(3):
        owner = f"10.0.2.{n}"
        assert not throttle.attempt(owner, "Admin"), "a clean address may still try the name"
        throttle.finished(owner, "Admin", failed=False)
        for address in attackers:
            assert throttle.attempt(address, "admin"), f"{address} guessed after success {n}"
    assert not throttle.attempt("10.0.3.1", "admin"), "another clean address may still try"
    throttle.finished("10.0.3.1", "admin", failed=False)
    assert throttle.running == {} and throttle.pending == {}


def test_logins_from_one_address_are_checked_two_at_a_time() -> None:
    """A burst from one address gets two password checks at once; the rest 429 at once."""
    throttle = LoginThrottle(per_address=10, in_flight=2)
    waits = [throttle.attempt("10.0.0.1", f"name-{n}") for n in range(5)]
    assert [bool(w) for w in waits] == [False, False, True, True, True]
    assert not throttle.attempt("10.0.0.2", "name-0"), "another address is not held up"
    throttle.finished("10.0.0.1", "name-0", failed=True)
    assert not throttle.attempt("10.0.0.1", "name-5")


def test_password_work_refuses_beyond_its_queue() -> None:
    """At most `workers` hashes run and `queue` wait; one more is refused at once."""
    release = threading.Event()

    async def scenario() -> list[str]:
        work = PasswordWork(workers=1, queue=1)
        running = [asyncio.create_task(work.run(release.wait, 30)) for _ in range(2)]
        await asyncio.sleep(0.2)
        try:
            await work.run(release.wait, 30)
            third = "ran"
        except Busy:
            third = "busy"
        release.set()
        return [str(await task) for task in running] + [third]

    assert in_own_loop(scenario()) == ["True", "True", "busy"]


def test_a_large_body_is_read_only_from_a_known_user(web: TestClient, web_engine: Engine) -> None:
    """Past the anonymous limit, a body needs a valid token or session before it is read."""
    document = {"comment": "x" * 100_000}
    assert web.put("/api/config", json=document).status_code == 413
    bogus = {"Authorization": "Bearer cdc_not-a-token"}
    assert web.put("/api/config", json=document, headers=bogus).status_code == 413
    chunked = web.put(
        "/api/config",
        content=_chunks(200_000, size=10_000),
        headers={"Content-Type": "application/json", **bogus},
    )
    assert chunked.status_code == 413
    csrf = as_role(web, web_engine, "admin")
    known = web.put("/api/config", json=document, headers=csrf)
    assert known.status_code == 422, "read, and judged on its content"
    login = web.post("/api/login", json={"username": "x", "password": "y" * 10_000})
    assert login.status_code == 413, "a login's body is small whoever sends it"


def test_forwarded_addresses_count_only_from_a_trusted_proxy(launch: Any) -> None:
    """With 127.0.0.1 named as a trusted proxy, X-Forwarded-For decides whose failures count:
    one client's failures do not throttle another behind the same proxy."""
    instance = launch("web", CADUCEUS_WEB_TRUSTED_PROXIES='["127.0.0.1"]')
    wait_for_port(instance.web_port, process=instance.process)
    url = f"http://127.0.0.1:{instance.web_port}"
    wrong = {"username": "someone", "password": "wrong"}
    with httpx.Client(base_url=url, timeout=30) as proxy:
        first = [
            proxy.post("/api/login", json=wrong, headers={"X-Forwarded-For": "10.0.0.1"})
            for _ in range(11)
        ]
        other = proxy.post("/api/login", json=wrong, headers={"X-Forwarded-For": "10.0.0.2"})
    assert [a.status_code for a in first] == [401] * 10 + [429]
    assert other.status_code == 401, "another client behind the proxy is not throttled"
