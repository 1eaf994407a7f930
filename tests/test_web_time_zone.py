"""The web's times in the configured zone (mercure's `local_time`), the UTC time on hover,
and the API in UTC whatever the zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine, insert, update

from caduceus.core.config import store
from caduceus.core.config.models import STORED, Config, Settings
from caduceus.core.db.models import CONFIG_VERSIONS, USERS
from caduceus.core.time_zones import zone_named
from caduceus.web.pages.charts import bar_chart
from tests.support.browser import assert_no_errors, browser_login, shot
from tests.support.web import as_role

# 10:00 UTC in July: 12:00 in Berlin (summer time), 19:00 in Tokyo (no summer time).
JULY = datetime(2026, 7, 1, 10, 0, 0, tzinfo=UTC)


def set_zone(engine: Engine, name: str) -> None:
    store.save(engine, Config(settings=Settings(local_time=name)), "test", "zone")


def created_on(engine: Engine, name: str, at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(update(USERS).where(USERS.c.username == name).values(created_at=at))


def test_zone_names_are_checked() -> None:
    assert Settings().local_time == "UTC", "mercure's default"
    assert str(zone_named("Europe/Berlin")) == "Europe/Berlin"
    for wrong in ("Mars/Olympus", "", "../../etc/passwd", "/etc/localtime", "Europe/Berlin\0"):
        with pytest.raises(ValidationError, match="not a time zone this system knows"):
            Settings(local_time=wrong)
    # A stored version whose zone this system does not know still loads (the web shows UTC).
    stored = Settings.model_validate({"local_time": "Mars/Olympus"}, context=STORED)
    assert stored.local_time == "Mars/Olympus"


def test_pages_show_the_zone_and_the_api_stays_utc(web: TestClient, web_engine: Engine) -> None:
    as_role(web, web_engine, "admin")
    created_on(web_engine, "admin-user", JULY)
    page = web.get("/users").text
    assert "Created (UTC)" in page, "UTC until a zone is chosen"
    assert (
        '<time datetime="2026-07-01T10:00:00Z" title="2026-07-01 10:00:00 UTC">'
        "2026-07-01 10:00:00</time>" in page
    )

    set_zone(web_engine, "Europe/Berlin")
    page = web.get("/users").text
    assert "Created (Europe/Berlin)" in page
    assert (
        '<time datetime="2026-07-01T10:00:00Z" title="2026-07-01 10:00:00 UTC">'
        "2026-07-01 12:00:00</time>" in page
    )
    assert 'data-time-zone="Europe/Berlin"' in page, "for the times a script shows"
    # Winter: one hour less.
    created_on(web_engine, "admin-user", datetime(2026, 1, 15, 10, 0, tzinfo=UTC))
    assert 'title="2026-01-15 10:00:00 UTC">2026-01-15 11:00:00</time>' in web.get("/users").text

    # The API answers in UTC whatever the zone.
    created_on(web_engine, "admin-user", JULY)
    [user] = web.get("/api/users").json()
    assert datetime.fromisoformat(user["created_at"]).astimezone(UTC) == JULY
    assert datetime.fromisoformat(user["created_at"]).utcoffset() in (None, JULY.utcoffset())
    settings = web.get("/api/config").json()["settings"]
    assert settings["local_time"] == "Europe/Berlin"


def test_a_wrong_zone_is_refused_and_a_lost_one_shows_utc(
    web: TestClient, web_engine: Engine
) -> None:
    headers = as_role(web, web_engine, "admin")
    settings = web.get("/api/config").json()["settings"]
    refused = web.put(
        "/api/config/settings",
        json={"settings": {**settings, "local_time": "Mars/Olympus"}},
        headers=headers,
    )
    assert refused.status_code == 422
    assert "not a time zone this system knows" in refused.text
    assert store.current(web_engine) is None, "nothing was saved"
    saved = web.put(
        "/api/config/settings",
        json={"settings": {**settings, "local_time": "Asia/Tokyo"}},
        headers=headers,
    )
    assert saved.status_code == 200, saved.text
    created_on(web_engine, "admin-user", JULY)
    assert ">2026-07-01 19:00:00</time>" in web.get("/users").text

    # A version stored with a zone this system does not know (tzdata changed): UTC, not 500.
    with web_engine.begin() as conn:
        document = Config().model_dump(mode="json")
        document["settings"]["local_time"] = "Mars/Olympus"
        conn.execute(
            insert(CONFIG_VERSIONS).values(
                created_at=JULY, author="test", comment="", content=document
            )
        )
    page = web.get("/users")
    assert page.status_code == 200
    assert "Created (UTC)" in page.text and ">2026-07-01 10:00:00</time>" in page.text


def test_chart_ticks_fall_on_the_zones_whole_hours() -> None:
    bucket = timedelta(minutes=10)
    starts = [datetime(2026, 7, 1, 6, 40, tzinfo=UTC) + n * bucket for n in range(36)]
    counts = [1] * 36
    berlin = bar_chart("x", "X", "instances", starts, counts, bucket, zone_named("Europe/Berlin"))
    assert [t.label for t in berlin.time_ticks] == [f"{h:02d}:00" for h in range(9, 15)]
    assert berlin.bars[0].start.strftime("%H:%M") == "08:40"
    # Half an hour off UTC: ticks on whole local hours, half a slot from the UTC ones.
    india = bar_chart("x", "X", "instances", starts, counts, bucket, zone_named("Asia/Kolkata"))
    utc = bar_chart("x", "X", "instances", starts, counts, bucket)
    assert [t.label for t in india.time_ticks] == [f"{h:02d}:00" for h in range(13, 19)]
    assert india.time_ticks[0].at - utc.time_ticks[0].at == pytest.approx(
        3 * (utc.bars[1].x - utc.bars[0].x), abs=0.05
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_local_times_and_utc_on_hover_in_a_browser(
    served: str, web_engine: Engine, web: TestClient, page: Any, tmp_path: Path
) -> None:
    as_role(web, web_engine, "admin")
    browser_login(page, served, "admin-user", "/configuration/settings")
    page.fill("#f-settings-local_time", "Mars/Olympus")
    page.click("#settings-form button[type=submit]")
    error = page.locator("#settings-form .form-error")
    error.wait_for()
    assert "not a time zone this system knows" in error.inner_text()
    assert store.current(web_engine) is None
    page.failed.clear()  # the 422 that said so

    page.fill("#f-settings-local_time", "Asia/Tokyo")
    page.click("#settings-form button[type=submit]")
    page.wait_for_load_state("load")
    page.locator("#f-settings-local_time[value='Asia/Tokyo']").wait_for(state="attached")
    found = store.current(web_engine)
    assert found is not None and found[1].settings.local_time == "Asia/Tokyo"

    created_on(web_engine, "admin-user", JULY)
    page.goto(served + "/users")
    assert "Created (Asia/Tokyo)" in page.inner_text("main")
    shown = page.locator("main time").first
    assert shown.inner_text() == "2026-07-01 19:00:00"
    shown.hover()
    hovered = page.evaluate(
        "() => { const t = [...document.querySelectorAll(':hover')].pop();"
        " return [t.tagName, t.title, t.dateTime]; }"
    )
    assert hovered == ["TIME", "2026-07-01 10:00:00 UTC", "2026-07-01T10:00:00Z"]
    shot(page, "time-zone-users")
    assert_no_errors(page)


def test_mercures_local_time_is_imported() -> None:
    from caduceus.core.config import files

    mercure = {"appliance_name": "site", "local_time": "America/New_York", "server_time": "UTC"}
    loaded = files.parse({**mercure, "targets": {}, "rules": {}, "modules": {}}, "mercure.json")
    assert loaded.config.settings.local_time == "America/New_York"
    assert not any(line.startswith("local_time") for line in loaded.not_mapped)
    # An unknown zone does not fail the whole file: that field is left out, with a line.
    loaded = files.parse({**mercure, "local_time": "Mars/Olympus"}, "mercure.json")
    assert loaded.config.settings.local_time == "UTC"
    assert (
        "not supported: local_time: 'Mars/Olympus' is not a time zone this system knows; "
        "the web shows UTC" in loaded.not_mapped
    )


def test_log_lines_keep_their_milliseconds_and_odd_text_is_escaped() -> None:
    from caduceus.web.pages.times import ShownZone, shown_in, when

    with shown_in(ShownZone("Asia/Tokyo", zone_named("Asia/Tokyo"))):
        assert str(when("2026-07-01T10:00:00.123+00:00", precise=True)) == (
            '<time datetime="2026-07-01T10:00:00.123000Z" title="2026-07-01 10:00:00.123 UTC">'
            "2026-07-01 19:00:00.123</time>"
        )
        assert str(when("<b>not a time</b>")) == "&lt;b&gt;not a time&lt;/b&gt;"
        assert str(when(None)) == ""
