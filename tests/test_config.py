"""Configuration: validated, versioned, imported from our format and from mercure.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from caduceus.core.config import files, store
from caduceus.core.config.models import parse_series_condition, series_condition_met
from caduceus.core.database import open_database
from caduceus.core.settings import Settings
from tests.support.mercure_config import MERCURE
from tests.support.processes import run

CADUCEUS = [sys.executable, "-m", "caduceus"]

GOOD = {
    "settings": {"series_complete_trigger": 30, "offpeak_start": "21:00"},
    "targets": {
        "pacs": {"type": "dicom", "host": "10.0.0.5", "port": 104, "called_aet": "PACS"},
        "archive": {"type": "folder", "path": "/srv/archive"},
    },
    "modules": {"anonymizer": {"image": "example/anonymizer:1.0", "settings": {"mode": "full"}}},
    "rules": {
        "ct_to_pacs": {"rule": "@Modality@ == 'CT'", "action": "route", "targets": ["pacs"]},
        "mr_ai": {
            "rule": "tags.Modality == 'MR' and 'HEAD' in @StudyDescription@.upper()",
            "action": "both",
            "trigger": "study",
            "targets": ["archive"],
            "modules": ["anonymizer"],
            "module_settings": [{"mode": "partial"}],
            "study_trigger_condition": "received_series",
            "required_series": "'T1' and ('T2' or 'FLAIR')",
            "priority": "urgent",
        },
    },
}


def write(tmp_path: Path, data: object, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return path


@pytest.fixture
def engine(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    # A home of its own: the key of the stored secrets is made there.
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    engine = open_database(settings, migrate=True)
    yield engine
    engine.dispose()


def test_versions_are_kept_and_restorable(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = files.load(write(tmp_path, GOOD)).config
    v1, changed = store.save(engine, first, "alice", "first")
    assert changed
    assert store.save(engine, first, "bob")[1] is False  # no change, no new version
    second = first.model_copy(deep=True)
    second.rules["ct_to_pacs"].disabled = True
    v2, _ = store.save(engine, second, "bob", "disable CT")
    assert store.current(engine) == (v2, second)
    v3 = store.restore(engine, v1, "carol")
    assert store.current(engine) == (v3, first)
    assert [(h["version"], h["author"]) for h in store.history(engine)] == [
        (v3, "carol"),
        (v2, "bob"),
        (v1, "alice"),
    ]
    assert store.history(engine)[0]["comment"] == f"restored version {v1}"


def test_round_trip_through_export(tmp_path: Path) -> None:
    config = files.load(write(tmp_path, GOOD)).config
    for fmt, name in (("yaml", "again.yaml"), ("json", "again.json")):
        path = tmp_path / name
        path.write_text(files.dump(config, fmt))
        assert files.load(path).config == config


@pytest.mark.parametrize(
    "change,expected",
    [
        (("rules", "ct_to_pacs", "rule", "@Modality@ == "), "rules -> ct_to_pacs -> rule"),
        (("rules", "ct_to_pacs", "rule", "@Modalty@ == 'CT'"), "Modalty"),
        (("rules", "ct_to_pacs", "targets", ["nowhere"]), "unknown target 'nowhere'"),
        (("rules", "ct_to_pacs", "colour", "red"), "rules -> ct_to_pacs -> colour"),
        (("targets", "pacs", "port", 70000), "targets -> pacs -> dicom -> port"),
        (("rules", "mr_ai", "required_series", "'T1' and ("), "rules -> mr_ai -> required_series"),
        (("rules", "ct_to_pacs", "action", "both"), "needs at least one module"),
    ],
)
def test_invalid_configuration_names_the_culprit(
    tmp_path: Path, change: tuple, expected: str
) -> None:  # type: ignore[type-arg]
    data = json.loads(json.dumps(GOOD))
    *path, key, value = change
    node = data
    for part in path:
        node = node[part]
    node[key] = value
    with pytest.raises(files.ConfigFileError) as error:
        files.load(write(tmp_path, data))
    assert expected in str(error.value)


def test_rule_error_reports_the_position(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["rules"]["ct_to_pacs"]["rule"] = "@Modality@ == 'CT' and and"
    with pytest.raises(files.ConfigFileError, match=r"position|column"):
        files.load(write(tmp_path, data))


def test_mercure_json_is_imported_and_the_rest_reported(tmp_path: Path) -> None:
    loaded = files.load(write(tmp_path, MERCURE, "mercure.json"))
    config = loaded.config
    assert loaded.source_format == "mercure"
    assert config.settings.series_complete_trigger == 45
    assert config.settings.retry_max == 3
    assert str(config.settings.offpeak_start) == "22:00:00"
    pacs = config.targets["pacs"]
    assert (pacs.type, pacs.host, pacs.port, pacs.called_aet, pacs.calling_aet) == (  # type: ignore[union-attr]
        "dicom",
        "10.0.0.5",
        104,
        "PACS",
        "MERCURE",
    )
    assert config.targets["share"].path == "/mnt/share"  # type: ignore[union-attr]
    assert config.modules["ai"].image == "vendor/ai:2"
    assert config.modules["ai"].volumes == ["/models:/models:ro"]
    assert config.modules["ai"].environment == {"MODEL": "large"}
    brain = config.rules["brain"]
    assert (brain.action, brain.trigger, brain.modules, brain.module_settings) == (
        "both",
        "study",
        ["ai"],
        [{"threshold": 0.7}],
    )
    assert brain.notification.webhook_url == "https://hooks.example/x"
    assert brain.notification.on_error
    assert brain.notification.email_type == "html"
    report = "\n".join(loaded.not_mapped)
    for name in (
        "changed meaning: targets -> remote -> host:",
        "incoming_folder",
        "router_scan_interval",
        "graphite_ip",
        "appliance_name",
    ):
        assert name in report, name
    assert "offsite" in config.rules and config.targets["remote"].type == "xnat"
    drop, web, tls = config.targets["drop"], config.targets["web"], config.targets["tls"]
    assert drop.type == "sftp" and drop.password.get_secret_value() == "p"
    assert "changed meaning: targets -> drop: security check off" in report
    assert web.type == "dicomweb" and web.username == "u"
    assert tls.type == "dicomtls" and (tls.port, tls.tls_certificate) == (2762, "/etc/c.pem")


def test_required_series_conditions() -> None:
    tree = parse_series_condition("'T1' and ('T2' or 'FLAIR')")
    assert series_condition_met(tree, ["t1_mprage", "flair_tra"])
    assert series_condition_met(tree, ["T1 SE", "T2 TSE"])
    assert not series_condition_met(tree, ["T1 SE", "DWI"])
    assert not series_condition_met(tree, ["FLAIR"])
    assert series_condition_met(parse_series_condition("not 'SCOUT'"), ["T1"])
    for bad in ("'T1' and", "('T1'", "T1", "'T1' 'T2'"):
        with pytest.raises(ValueError, match="position"):
            parse_series_condition(bad)


def test_config_commands(tmp_path: Path, sqlite_url: str) -> None:
    env = {
        "CADUCEUS_HOME": str(tmp_path / "home"),
        "CADUCEUS_DATABASE_URL": sqlite_url,
        "PATH": "/usr/bin:/bin",
    }
    good = write(tmp_path, GOOD)
    assert (
        "valid (caduceus format): 2 rules, 2 targets, 1 modules"
        in run([*CADUCEUS, "config", "validate", str(good)], env=env).stdout
    )
    result = run([*CADUCEUS, "config", "import", str(good), "--author", "tester"], env=env)
    assert result.returncode == 0 and "configuration version 1" in result.stdout
    exported = yaml.safe_load(run([*CADUCEUS, "config", "export"], env=env).stdout)
    assert exported["rules"]["ct_to_pacs"]["targets"] == ["pacs"]
    mercure = run(
        [*CADUCEUS, "config", "import", str(write(tmp_path, MERCURE, "mercure.json"))], env=env
    )
    assert mercure.returncode == 0 and "changed meaning: targets -> drop" in mercure.stderr
    history = json.loads(run([*CADUCEUS, "config", "history", "--json"], env=env).stdout)
    assert [h["version"] for h in history] == [2, 1]
    assert run([*CADUCEUS, "config", "restore", "1"], env=env).returncode == 0
    bad = write(tmp_path, {"rules": {"x": {"rule": "@Modality@ ==", "targets": []}}}, "bad.yaml")
    invalid = run([*CADUCEUS, "config", "validate", str(bad)], env=env)
    assert invalid.returncode == 1 and "rules -> x -> rule" in invalid.stderr


SECRET = "pa55-w0rd!never-shown"
WITH_SECRETS = {
    "targets": {
        "web": {
            "type": "dicomweb",
            "url": "http://pacs.example/dicom-web",
            "username": "router",
            "password": SECRET,
        },
        "box": {
            "type": "sftp",
            "host": "sftp.example",
            "user": "drop",
            "password": SECRET + "2",
            "folder": "/in",
            "accept_unknown_host_key": True,
        },
    },
}


def test_secrets_are_masked_in_every_output_and_kept_on_reimport(
    tmp_path: Path, sqlite_url: str
) -> None:
    env = {
        "CADUCEUS_HOME": str(tmp_path / "home"),
        "CADUCEUS_DATABASE_URL": sqlite_url,
        "PATH": "/usr/bin:/bin",
    }
    source = write(tmp_path, WITH_SECRETS)
    outputs = [run([*CADUCEUS, "config", "import", str(source)], env=env)]
    outputs.append(run([*CADUCEUS, "config", "export"], env=env))
    outputs.append(run([*CADUCEUS, "config", "export", "--format", "json"], env=env))
    outputs.append(run([*CADUCEUS, "targets", "list"], env=env))
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert SECRET not in result.stdout + result.stderr
    exported = yaml.safe_load(outputs[1].stdout)
    assert exported["targets"]["web"]["password"] == "**********"

    # The masked export, edited and imported again, keeps the stored passwords.
    exported["targets"]["web"]["batch_size"] = 10
    masked = write(tmp_path, exported, "masked.yaml")
    assert run([*CADUCEUS, "config", "import", str(masked)], env=env).returncode == 0
    engine = open_database(Settings(home=tmp_path / "home", database_url=sqlite_url))
    current = store.current_or_default(engine)
    engine.dispose()
    web = current.targets["web"]
    assert web.type == "dicomweb" and web.batch_size == 10
    assert web.password.get_secret_value() == SECRET
    assert current.targets["box"].password.get_secret_value() == SECRET + "2"  # type: ignore[union-attr]

    # Secrets are exported only into a private file, on request, even over a readable one.
    assert run([*CADUCEUS, "config", "export", "--with-secrets"], env=env).returncode == 2
    private = tmp_path / "full.yaml"
    private.write_text("old")
    private.chmod(0o644)
    run([*CADUCEUS, "config", "export", "--with-secrets", "-o", str(private)], env=env)
    assert SECRET in private.read_text() and private.stat().st_mode & 0o777 == 0o600

    # A target pointed elsewhere does not take its old password along.
    exported["targets"]["web"]["url"] = "http://elsewhere.example/dicom-web"
    moved = run([*CADUCEUS, "config", "import", str(write(tmp_path, exported, "m.yaml"))], env=env)
    assert moved.returncode == 1 and "now points elsewhere" in moved.stderr

    # A masked secret with nothing stored to keep is refused, naming the target.
    other = {**env, "CADUCEUS_HOME": str(tmp_path / "fresh")}
    other["CADUCEUS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'fresh.db'}"
    refused = run([*CADUCEUS, "config", "import", str(masked)], env=other)
    assert refused.returncode == 1
    assert "target 'web': password is masked" in refused.stderr


def test_a_masked_secret_is_not_kept_when_the_server_check_is_loosened() -> None:
    """Turning off an SFTP host-key check or a DICOMweb certificate check could hand the old
    password to another server: the masked password must then be given again."""
    from caduceus.core.config.models import MASK, Config
    from caduceus.core.config.store import keep_secrets

    stored = Config.model_validate(
        {
            "targets": {
                "sftp": {
                    "type": "sftp",
                    "host": "archive.example",
                    "user": "router",
                    "password": "s3cret-sftp",
                    "folder": "/in",
                    "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBz",
                },
                "web": {
                    "type": "dicomweb",
                    "url": "https://pacs.example/dicom-web",
                    "token": "s3cret-token",
                },
                "bucket": {
                    "type": "s3",
                    "bucket": "archive",
                    "access_key_id": "AKIAOLD",
                    "secret_access_key": "s3cret-key",
                },
            }
        }
    )
    masked = stored.model_dump(mode="json")
    assert masked["targets"]["sftp"]["password"] == MASK
    same = keep_secrets(Config.model_validate(masked), stored)
    assert same.targets["sftp"].password.get_secret_value() == "s3cret-sftp"  # type: ignore[union-attr]

    for name, change in (
        ("sftp", {"accept_unknown_host_key": True}),
        ("web", {"verify_tls": False}),
        ("bucket", {"access_key_id": "AKIANEW"}),  # the old key's secret is not the new one's
    ):
        loosened = stored.model_dump(mode="json")
        loosened["targets"][name].update(change)
        with pytest.raises(ValueError, match="now points elsewhere"):
            keep_secrets(Config.model_validate(loosened), stored)
