"""Partial secrets (a DICOMweb URL's query string, an S3 access key id, secret module
settings) never reach viewers and operators, against a real `caduceus web`; an admin's edit
that sends the masked values back keeps the stored ones."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from caduceus.core.config import store
from caduceus.core.config.models import Config, DicomWebTarget, S3Target
from caduceus.web import auth
from tests.conftest import Launch
from tests.support.processes import Caduceus
from tests.support.waiting import wait_for_port

PASSWORD = "correct horse battery"
APIKEY = "QueryApiKey-44120"
KEY_ID = "AKIAKEYID00112233"
LICENCE = "module-Licence-60606"
TOKEN = "rule-Token-88123"
ENV_TOKEN = "env-Token-30307"
HOOK_TOKEN = "HookPathToken5521"
HOOK = f"https://hooks.example/services/{HOOK_TOKEN}"
SHOWN_NOWHERE = (APIKEY, KEY_ID, LICENCE, TOKEN, ENV_TOKEN, HOOK_TOKEN)

CONFIG = {
    "targets": {
        "web": {
            "type": "dicomweb",
            "url": f"https://pacs.example/dicomweb?apikey={APIKEY}",
        },
        "bucket": {
            "type": "s3",
            "bucket": "images",
            "access_key_id": KEY_ID,
            "secret_access_key": "s3-Secret-Access-55671",
        },
    },
    "modules": {
        "ai": {
            "image": "example/ai:1",
            "settings": {"licence": LICENCE, "threshold": 0.5},
            "secret_settings": ["licence"],
            "environment": {"API_TOKEN": ENV_TOKEN},
        },
    },
    "rules": {
        "r": {
            "rule": "True",
            "action": "both",
            "modules": ["ai"],
            "module_settings": [{"api_token": TOKEN, "threshold": 0.7}],
            "targets": ["web"],
            "notification": {"webhook_url": HOOK, "on_error": True},
        }
    },
}

PATHS = (
    "/api/targets",
    "/api/targets/web",
    "/api/targets/bucket",
    "/api/modules",
    "/api/modules/ai",
    "/api/rules",
    "/api/rules/r",
    "/api/config",
    "/api/config/versions/1",
    "/targets",
    "/targets/web",
    "/targets/bucket",
    "/modules",
    "/modules/ai",
    "/rules/r",
    "/configuration",
    "/configuration/export",
)


@pytest.fixture
def web(launch: Launch) -> Caduceus:
    instance = launch("web")
    assert instance.process is not None
    wait_for_port(instance.web_port, process=instance.process)
    engine = instance.engine()
    try:
        store.save(engine, Config.model_validate(CONFIG), "test")
        for role in ("viewer", "operator", "admin"):
            auth.create_user(engine, f"{role}-user", PASSWORD, role)
    finally:
        engine.dispose()
    return instance


def _client(instance: Caduceus, role: str) -> httpx.Client:
    client = httpx.Client(base_url=f"http://127.0.0.1:{instance.web_port}", timeout=30)
    answer = client.post("/api/login", json={"username": f"{role}-user", "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers[auth.CSRF_HEADER] = answer.json()["csrf_token"]
    return client


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_viewers_and_operators_see_no_partial_secret(web: Caduceus, role: str) -> None:
    with closing(_client(web, role)) as client:
        for path in PATHS:
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.status_code)
            leaked = [secret for secret in SHOWN_NOWHERE if secret in answer.text]
            assert leaked == [], path
        # What is masked is still told: where the URL points, that a key id is set.
        target = client.get("/api/targets/web").json()
        assert target["settings"]["url"] == "https://pacs.example/dicomweb?**********"
        assert target["where"] == "https://pacs.example/dicomweb?**********"
        assert client.get("/api/modules/ai").json()["settings"]["settings"] == {
            "licence": "**********",
            "threshold": 0.5,
        }
    listed = web.cli("targets", "list").stdout
    assert APIKEY not in listed and "pacs.example/dicomweb" in listed


def _stored(instance: Caduceus) -> Config:
    engine: Engine = instance.engine()
    try:
        return store.current_or_default(engine)
    finally:
        engine.dispose()


def test_an_admin_edit_with_the_masked_values_keeps_the_stored_ones(web: Caduceus) -> None:
    with closing(_client(web, "admin")) as client:
        target = client.get("/api/targets/web").json()["settings"]
        assert APIKEY not in str(target)
        changed = client.put("/api/targets/web", json={**target, "comment": "edited"})
        assert changed.status_code == 200, changed.text

        bucket = client.get("/api/targets/bucket").json()["settings"]
        assert bucket["access_key_id"] == "**********"
        changed = client.put("/api/targets/bucket", json={**bucket, "comment": "edited"})
        assert changed.status_code == 200, changed.text

        module = client.get("/api/modules/ai").json()["settings"]
        changed = client.put("/api/modules/ai", json={**module, "comment": "edited"})
        assert changed.status_code == 200, changed.text

        document = client.get("/api/config").json()
        # Admins too: a secret-named environment variable, a webhook's path and query.
        assert [secret for secret in SHOWN_NOWHERE if secret in str(document)] == []
        document["rules"]["r"]["comment"] = "edited"
        changed = client.put("/api/config", json=document)
        assert changed.status_code == 200, changed.text

        # Pointing the URL elsewhere with its query still masked is refused, not guessed.
        moved = {**target, "url": "https://elsewhere.example/dicomweb?**********"}
        refused = client.put("/api/targets/web", json=moved)
        assert refused.status_code == 422 and "masked" in refused.text

    config = _stored(web)
    web_target, bucket_target = config.targets["web"], config.targets["bucket"]
    assert isinstance(web_target, DicomWebTarget) and isinstance(bucket_target, S3Target)
    assert web_target.url == f"https://pacs.example/dicomweb?apikey={APIKEY}"
    assert web_target.comment == "edited"
    assert bucket_target.access_key_id == KEY_ID
    assert bucket_target.secret_access_key.get_secret_value() == "s3-Secret-Access-55671"
    assert config.modules["ai"].settings == {"licence": LICENCE, "threshold": 0.5}
    assert config.modules["ai"].comment == "edited"
    assert config.rules["r"].module_settings == [{"api_token": TOKEN, "threshold": 0.7}]
    assert config.rules["r"].comment == "edited"
    assert config.modules["ai"].environment == {"API_TOKEN": ENV_TOKEN}
    assert config.rules["r"].notification.webhook_url == HOOK


def test_web_log_holds_no_partial_secret(web: Caduceus, tmp_path: Path) -> None:
    with closing(_client(web, "viewer")) as client:
        for path in PATHS:
            client.get(path)
    logs = "".join(p.read_text() for p in (web.home / "logs").glob("*.log"))
    assert [s for s in SHOWN_NOWHERE if s in logs + web.log()] == []
