"""The mercure import: every field of mercure's Config and Rule models is mapped or reported
once; mercure's own files (tests/data/mercure/) validate and import from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from caduceus.core.config import files
from caduceus.core.config.mercure_import import from_mercure
from tests.support.processes import run

CADUCEUS = [sys.executable, "-m", "caduceus"]
MERCURE_FILES = Path(__file__).parent / "data" / "mercure"

# Every field of mercure's Config model (app/common/types.py), set to a value a site could have.
CONFIG_FIELDS: dict[str, Any] = {
    "appliance_name": "master",
    "appliance_color": "#FFF",
    "port": 104,
    "accept_compressed_images": False,
    "incoming_folder": "/opt/mercure/data/incoming",
    "studies_folder": "/opt/mercure/data/studies",
    "outgoing_folder": "/opt/mercure/data/outgoing",
    "success_folder": "/opt/mercure/data/success",
    "error_folder": "/opt/mercure/data/error",
    "discard_folder": "/opt/mercure/data/discard",
    "processing_folder": "/opt/mercure/data/processing",
    "jobs_folder": "/opt/mercure/data/jobs",
    "router_scan_interval": 1,
    "dispatcher_scan_interval": 1,
    "cleaner_scan_interval": 60,
    "retention": 86400,
    "emergency_clean_percentage": 85,
    "retry_delay": 600,
    "retry_max": 3,
    "series_complete_trigger": 30,
    "study_complete_trigger": 600,
    "study_forcecomplete_trigger": 3600,
    "dicom_receiver": {"additional_tags": {"00091001": "PrivateThing"}},
    "graphite_ip": "10.1.1.1",
    "graphite_port": 2003,
    "influxdb_host": "",
    "influxdb_token": "",
    "influxdb_org": "",
    "influxdb_bucket": "",
    "bookkeeper": "0.0.0.0:8080",
    "offpeak_start": "21:00",
    "offpeak_end": "05:30",
    "targets": {"pacs": {"ip": "10.0.0.5", "port": "104", "aet_target": "PACS"}},
    "rules": {},  # below
    "modules": {"ai": {"docker_tag": "vendor/ai:2", "environment": '{"MODE": "fast"}'}},
    "process_runner": "nomad",
    "processing_runtime": "nvidia",
    "bookkeeper_api_key": "secret",
    "features": {"dummy_target": True},
    "processing_logs": {"discard_logs": False, "logs_file_store": None},
    "email_notification_from": "mercure@hospital.example",
    "support_root_modules": True,
    "webhook_certificate_location": "/etc/ssl/site-ca.pem",
    "phi_notifications": True,
    "server_time": "UTC",
    "local_time": "Europe/Berlin",
    "dicom_retrieve": {"dicom_nodes": [{"name": "pacs"}], "destination_folders": []},
    "store_sample_dicom_tags": True,
}

# Every field of mercure's Rule model.
RULE_FIELDS: dict[str, Any] = {
    "rule": "@Modality@ == 'MR'",
    "target": ["pacs"],
    "disabled": False,
    "fallback": False,
    "contact": "dr.who@hospital.example",
    "comment": "brain MR to the AI",
    "tags": "research,mr",
    "action": "both",
    "action_trigger": "study",
    "study_trigger_condition": "received_series",
    "study_force_completion_action": "proceed",
    "study_trigger_series": "'T1' and 'FLAIR'",
    "priority": "urgent",
    "processing_module": ["ai"],
    "processing_settings": [{"threshold": 0.7}],
    "processing_retain_images": True,
    "notification_email": "a@hospital.example, b@hospital.example",
    "notification_webhook": "https://hooks.example/x",
    "notification_payload": '{"text": "{{ body }}"}',
    "notification_payload_body": "Rule {{ rule }}: {{ event }}",
    "notification_email_body": "Rule {{ rule }} triggered {{ event }}",
    "notification_email_type": "html",
    "notification_trigger_reception": False,
    "notification_trigger_completion": True,
    "notification_trigger_completion_on_request": True,
    "notification_trigger_error": False,
}


def every_field() -> dict[str, Any]:
    data = json.loads(json.dumps(CONFIG_FIELDS))
    data["rules"] = {"brain": json.loads(json.dumps(RULE_FIELDS))}
    return data


def test_every_config_and_rule_field_is_mapped_or_reported_once() -> None:
    document, report = from_mercure(every_field())
    loaded = files.parse(every_field())
    settings, rule = loaded.config.settings, loaded.config.rules["brain"]
    mapped_settings = {
        "series_complete_trigger": settings.series_complete_trigger == 30,
        "study_complete_trigger": settings.study_complete_trigger == 600,
        "study_forcecomplete_trigger": settings.study_forcecomplete_trigger == 3600,
        "retention": settings.retention == 86400,
        "retry_delay": settings.retry_delay == 600,
        "retry_max": settings.retry_max == 3,
        "offpeak_start": str(settings.offpeak_start) == "21:00:00",
        "offpeak_end": str(settings.offpeak_end) == "05:30:00",
        "emergency_clean_percentage": settings.disk_high_water == 85,
        "phi_notifications": settings.notifications_include_phi is True,
        "email_notification_from": settings.smtp.sender == "mercure@hospital.example",
        "webhook_certificate_location": settings.webhook_ca_bundle == "/etc/ssl/site-ca.pem",
        "targets": list(loaded.config.targets) == ["pacs"],
        "modules": loaded.config.modules["ai"].environment == {"MODE": "fast"},
        "rules": list(loaded.config.rules) == ["brain"],
        "local_time": settings.local_time == "Europe/Berlin",
    }
    assert all(mapped_settings.values()), mapped_settings
    lines = report.lines()
    for key in CONFIG_FIELDS.keys() - mapped_settings.keys():
        # Named in exactly one line, as a field (not as part of another word).
        naming = [line for line in lines if any(f" {key}{c}" in line for c in ":, ")]
        assert len(naming) == 1, (key, naming)
    for phrase in (
        "changed meaning: port: the receiver's port is the environment setting",
        "changed meaning: support_root_modules: the environment setting "
        "CADUCEUS_PROCESSOR_ALLOW_ROOT",
        "not supported: graphite_ip, graphite_port, influxdb_host",  # a host is set
        "not supported: dicom_retrieve",
        "not supported: processing_runtime: 'nvidia'",
    ):
        assert any(line.startswith(phrase) for line in lines), phrase

    mapped_rule = {
        "rule": rule.rule == "@Modality@ == 'MR'",
        "target": rule.targets == ["pacs"],
        "disabled": rule.disabled is False,
        "fallback": rule.fallback is False,
        "contact": rule.contact == "dr.who@hospital.example",
        "comment": rule.comment == "brain MR to the AI",
        "tags": rule.tags == "research,mr",
        "action": rule.action == "both",
        "action_trigger": rule.trigger == "study",
        "study_trigger_condition": rule.study_trigger_condition == "received_series",
        "study_force_completion_action": rule.study_force_completion_action == "proceed",
        "study_trigger_series": rule.required_series == "'T1' and 'FLAIR'",
        "priority": rule.priority == "urgent",
        "processing_module": rule.modules == ["ai"],
        "processing_settings": rule.module_settings == [{"threshold": 0.7}],
        "processing_retain_images": rule.retain_input_images is True,
        "notification_email": rule.notification.email
        == ["a@hospital.example", "b@hospital.example"],
        "notification_webhook": rule.notification.webhook_url == "https://hooks.example/x",
        "notification_payload": rule.notification.webhook_payload == '{"text": "{{ body }}"}',
        "notification_payload_body": rule.notification.webhook_payload_body
        == "Rule {{ rule }}: {{ event }}",
        "notification_email_body": rule.notification.email_body
        == "Rule {{ rule }} triggered {{ event }}",
        "notification_email_type": rule.notification.email_type == "html",
        "notification_trigger_reception": rule.notification.on_reception is False,
        "notification_trigger_completion": rule.notification.on_completion is True,
        "notification_trigger_completion_on_request": rule.notification.on_completion_on_request
        is True,
        "notification_trigger_error": rule.notification.on_error is False,
    }
    assert set(mapped_rule) == set(RULE_FIELDS)
    assert all(mapped_rule.values()), mapped_rule
    assert not [line for line in lines if "rules -> brain" in line]
    assert document["rules"]["brain"]["notification"]["webhook_url"] == "https://hooks.example/x"


def test_a_webhook_rule_without_triggers_gets_mercures_defaults() -> None:
    data = every_field()
    data["rules"] = {
        "hook": {"rule": "True", "action": "notification", "notification_webhook": "https://h.x/"}
    }
    rule = files.parse(data).config.rules["hook"]
    notification = rule.notification
    assert (
        notification.on_reception,
        notification.on_completion,
        notification.on_completion_on_request,
        notification.on_error,
    ) == (True, True, False, True)
    assert rule.study_force_completion_action == "discard"  # mercure's default


def test_references_to_what_was_not_imported_are_dropped_not_the_file() -> None:
    data = every_field()
    data["targets"]["remote"] = {"target_type": "carrier-pigeon", "loft": "roof"}
    data["rules"] = {
        "both": {"rule": "True", "target": ["pacs", "remote"]},
        "only_remote": {"rule": "True", "target": "remote"},
        "ai_missing": {"rule": "True", "action": "process", "processing_module": "gone"},
        "broken": {"rule": "@Modality@ ==", "target": "pacs"},
    }
    loaded = files.parse(data)
    report = "\n".join(loaded.not_mapped)
    assert loaded.config.rules["both"].targets == ["pacs"]
    assert "changed meaning: rules -> both: remote not imported; left out of targets" in report
    for name in ("only_remote", "ai_missing", "broken"):
        assert name not in loaded.config.rules
        assert f"not supported: rules -> {name}: not imported:" in report, name
    assert "not supported: targets -> remote: target type 'carrier-pigeon' is unknown" in report


def test_mercures_stock_configuration_gives_a_short_correct_report() -> None:
    loaded = files.load(MERCURE_FILES / "default_mercure.json")
    settings = loaded.config.settings
    assert (settings.series_complete_trigger, settings.study_forcecomplete_trigger) == (60, 5400)
    assert (settings.disk_high_water, settings.retention) == (90, 259200)
    assert all(
        line.startswith("not needed here: ") or "accept_compressed_images" in line
        for line in loaded.not_mapped
    ), loaded.not_mapped
    assert len(loaded.not_mapped) <= 6, loaded.not_mapped


def test_mercures_test_configuration_imports(tmp_path: Path, sqlite_url: str) -> None:
    """mercure's app/tests/data/test_config.json: JSON-in-string environment, a target without
    target_type, negative completion triggers; validated and imported from the command line."""
    env = {
        "CADUCEUS_HOME": str(tmp_path / "home"),
        "CADUCEUS_DATABASE_URL": sqlite_url,
        "PATH": "/usr/bin:/bin",
    }
    for name in ("default_mercure.json", "test_config.json"):
        path = str(MERCURE_FILES / name)
        validated = run([*CADUCEUS, "config", "validate", path], env=env)
        assert validated.returncode == 0 and "valid (mercure format)" in validated.stdout
        assert "Traceback" not in validated.stderr
        imported = run([*CADUCEUS, "config", "import", path], env=env)
        assert imported.returncode == 0, imported.stderr
    config = files.load(MERCURE_FILES / "test_config.json").config
    assert config.targets["test_target_2"].type == "dicom"
    assert config.targets["test_target_2"].port == 11113  # type: ignore[union-attr]
    assert config.modules["test_module"].image == "alpine:3.11"
    assert config.settings.series_complete_trigger == 1


ODD_VALUES: list[Any] = [None, "", "x", "{", -1, 0, 1.5, True, [], ["a"], {}, {"a": 1}]


def test_odd_values_anywhere_give_a_clear_answer_never_a_traceback() -> None:
    """Every field of the Config, of a rule, a target and a module set in turn to values of the
    wrong kind: the file imports with a report, or is refused with ConfigFileError naming the
    field; nothing else is raised (the web answered 500 on such files)."""
    base = every_field()
    places: list[tuple[list[str], str]] = [([], key) for key in base]
    places += [(["rules", "brain"], key) for key in RULE_FIELDS]
    places += [(["targets", "pacs"], key) for key in ("ip", "port", "aet_target", "target_type")]
    places += [(["modules", "ai"], key) for key in ("docker_tag", "environment", "settings")]
    places += [(["modules", "ai"], "additional_volumes"), (["rules"], "bad/name")]
    for path, key in places:
        for value in ODD_VALUES:
            data = every_field()
            node = data
            for part in path:
                node = node[part]
            node[key] = value
            try:
                files.parse(data)
            except files.ConfigFileError as exc:
                assert str(exc), (path, key, value)
