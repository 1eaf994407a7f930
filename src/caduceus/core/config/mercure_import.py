"""Reading mercure's configuration file (mercure.json) into our model.

Everything that has a meaning here is carried over; everything else is reported by name, with
the reason, so that nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_MERCURE_MARKERS = {"incoming_folder", "router_scan_interval", "appliance_name", "dicom_receiver"}
_SETTINGS = {
    "series_complete_trigger",
    "study_complete_trigger",
    "study_forcecomplete_trigger",
    "offpeak_start",
    "offpeak_end",
    "retry_delay",
    "retry_max",
    "retention",
}
_BOOTSTRAP = {"port": "CADUCEUS_DICOM_PORT"}
# Keys that describe mercure's own machinery (folders, scan intervals, metrics endpoints, UI):
# caduceus has no counterpart, or a different one, so they are reported as not mapped.
_RULE_FIELDS = {
    "rule": "rule",
    "action": "action",
    "action_trigger": "trigger",
    "study_trigger_condition": "study_trigger_condition",
    "study_trigger_series": "required_series",
    "priority": "priority",
    "processing_retain_images": "retain_input_images",
    "disabled": "disabled",
    "fallback": "fallback",
    "comment": "comment",
    "dynamic_routing": "dynamic_routing",
    "conditional_alternate_target": "alternate_target",
}
_NOTIFICATION_FIELDS = {
    "notification_webhook": "webhook_url",
    "notification_payload": "webhook_payload",
    "notification_email_body": "email_body",
    "notification_trigger_reception": "on_reception",
    "notification_trigger_completion": "on_completion",
    "notification_trigger_completion_on_request": "on_completion_on_request",
    "notification_trigger_error": "on_error",
}
_IGNORED_EMPTY = {"contact", "tags", "notification_payload_body"}


@dataclass
class Report:
    """What the import could not carry over as it was, each field once, in three groups."""

    # mercure machinery caduceus does without (folders, scan intervals, bookkeeper...).
    not_needed: list[str] = field(default_factory=list)
    # Features caduceus does not have; the line says why.
    not_supported: list[str] = field(default_factory=list)
    # Carried over, but as something else; the line says what it became.
    changed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return (
            [f"not needed here: {line}" for line in self.not_needed]
            + [f"not supported: {line}" for line in self.not_supported]
            + [f"changed meaning: {line}" for line in self.changed]
        )


def looks_like_mercure(data: dict[str, Any]) -> bool:
    if _MERCURE_MARKERS & data.keys():
        return True
    rules = data.get("rules")
    return isinstance(rules, dict) and any(
        isinstance(r, dict) and ("action_trigger" in r or "target" in r) for r in rules.values()
    )


def _as_list(value: Any) -> list[Any]:
    if value in (None, "", [], {}):
        return []
    return list(value) if isinstance(value, list) else [value]


_DICOM = {
    "ip": "host",
    "port": "port",
    "aet_target": "called_aet",
    "aet_source": "calling_aet",
    "pass_sender_aet": "pass_sender_aet",
    "pass_receiver_aet": "pass_receiver_aet",
}
# mercure's field names per target type, and ours.
_TARGET_FIELDS: dict[str, dict[str, str]] = {
    "dicom": _DICOM,
    "dicomtls": {
        **_DICOM,
        "tls_key": "tls_key",
        "tls_cert": "tls_certificate",
        "ca_cert": "tls_ca_certificate",
    },
    "folder": {"folder": "path", "file_filter": "file_filter"},
    "sftp": {"host": "host", "user": "user", "password": "password", "folder": "folder"},
    "dicomweb": {
        "url": "url",
        "http_user": "username",
        "http_password": "password",
        "access_token": "token",
    },
    "s3": {
        "region": "region",
        "bucket": "bucket",
        "prefix": "prefix",
        "access_key_id": "access_key_id",
        "secret_access_key": "secret_access_key",
    },
}


def _target(name: str, raw: dict[str, Any], report: Report) -> dict[str, Any] | None:
    kind = raw.get("target_type", "dicom")
    where = f"targets -> {name}"
    fields = _TARGET_FIELDS.get(kind)
    if fields is None:
        report.not_supported.append(
            f"{where}: target type {kind!r} is not supported yet; target not imported"
        )
        return None
    target: dict[str, Any] = {"type": kind, "comment": raw.get("comment", "")}
    for theirs, ours in fields.items():
        if raw.get(theirs) not in (None, ""):
            target[ours] = raw[theirs]
    if "port" in target:
        target["port"] = int(target["port"] or 0)
    if kind == "sftp":
        # mercure does not check the server's host key; we do, once it is configured.
        target["accept_unknown_host_key"] = True
        report.changed.append(f"{where}: the SFTP server's host key is not verified; set host_key")
    known = {"target_type", "comment", *fields}
    for key in sorted(raw.keys() - known - _IGNORED_EMPTY):
        if raw[key] not in (None, "", [], {}, False):
            report.not_supported.append(f"{where} -> {key}: no equivalent, not imported")
    return target


def _module(name: str, raw: dict[str, Any], report: Report) -> dict[str, Any]:
    module = {
        "image": raw.get("docker_tag", ""),
        "settings": raw.get("settings") or {},
        "environment": {k: str(v) for k, v in (raw.get("environment") or {}).items()},
        "requires_root": bool(raw.get("requires_root", False)),
        "persistence": bool(raw.get("requires_persistence", False)),
        "network": bool(raw.get("network_enabled", False)),
        "comment": raw.get("comment", ""),
    }
    # mercure's additional_volumes: "host:container[:mode],..." in one string.
    volumes = [v.strip() for v in str(raw.get("additional_volumes") or "").split(",") if v.strip()]
    if volumes:
        module["volumes"] = volumes
    known = {
        "docker_tag",
        "settings",
        "environment",
        "requires_root",
        "requires_persistence",
        "network_enabled",
        "additional_volumes",
        "comment",
    }
    for key in sorted(raw.keys() - known - _IGNORED_EMPTY):
        if raw[key] not in (None, "", [], {}, False):
            report.not_supported.append(f"modules -> {name} -> {key}: no equivalent, not imported")
    return module


def _rule(name: str, raw: dict[str, Any], report: Report) -> dict[str, Any]:
    rule: dict[str, Any] = {
        ours: raw[theirs] for theirs, ours in _RULE_FIELDS.items() if theirs in raw
    }
    allowed = raw.get("dynamic_routing_allowed_targets")
    if allowed:
        rule["dynamic_routing_allowed_targets"] = _as_list(
            [t.strip() for t in allowed.split(",")] if isinstance(allowed, str) else allowed
        )
    if not rule.get("alternate_target"):
        rule.pop("alternate_target", None)
    rule["targets"] = _as_list(raw.get("target"))
    rule["modules"] = _as_list(raw.get("processing_module"))
    settings = raw.get("processing_settings")
    if isinstance(settings, dict):
        settings = [settings] if settings else []
    rule["module_settings"] = settings or []
    notification = {
        ours: raw[theirs] for theirs, ours in _NOTIFICATION_FIELDS.items() if theirs in raw
    }
    if str(raw.get("notification_email_type", "")).lower() in ("plain", "html"):
        notification["email_type"] = str(raw["notification_email_type"]).lower()
    if raw.get("notification_email"):
        notification["email"] = [
            a.strip() for a in str(raw["notification_email"]).split(",") if a.strip()
        ]
    rule["notification"] = notification
    known = (
        set(_RULE_FIELDS)
        | set(_NOTIFICATION_FIELDS)
        | {
            "target",
            "processing_module",
            "processing_settings",
            "notification_email",
            "notification_email_type",
            "dynamic_routing_allowed_targets",
        }
    )
    for key in sorted(raw.keys() - known - _IGNORED_EMPTY):
        if raw[key] not in (None, "", [], {}, False):
            report.not_supported.append(f"rules -> {name} -> {key}: no equivalent, not imported")
    return rule


def _settings(data: dict[str, Any], report: Report) -> dict[str, Any]:
    """The top-level fields of mercure's Config other than targets, modules and rules."""
    settings = {key: data[key] for key in _SETTINGS if key in data}
    for key, variable in _BOOTSTRAP.items():
        if key in data:
            report.changed.append(f"{key}: a bootstrap setting here; set {variable} instead")
    handled = _SETTINGS | set(_BOOTSTRAP) | {"targets", "modules", "rules"}
    for key in sorted(data.keys() - handled):
        if data[key] not in (None, "", [], {}):
            report.not_supported.append(f"{key}: no equivalent, not imported")
    return settings


def _targets(data: dict[str, Any], report: Report) -> dict[str, Any]:
    targets = {}
    for name, raw in (data.get("targets") or {}).items():
        target = _target(name, raw, report)
        if target is not None:
            targets[name] = target
    return targets


def _modules(data: dict[str, Any], report: Report) -> dict[str, Any]:
    return {name: _module(name, raw, report) for name, raw in (data.get("modules") or {}).items()}


def _rules(
    data: dict[str, Any], targets: dict[str, Any], modules: dict[str, Any], report: Report
) -> dict[str, Any]:
    rules = {}
    for name, raw in (data.get("rules") or {}).items():
        rule = _rule(name, raw, report)
        missing = [t for t in rule["targets"] if t not in targets]
        if missing:
            report.not_supported.append(
                f"rules -> {name}: refers to target(s) not imported ({', '.join(missing)}); "
                "rule not imported"
            )
            continue
        rules[name] = rule
    return rules


def from_mercure(data: dict[str, Any]) -> tuple[dict[str, Any], Report]:
    """Our configuration document for a mercure.json, and what could not be carried over as
    it was. Each part has its own function: settings, targets, modules, rules."""
    report = Report()
    settings = _settings(data, report)
    targets = _targets(data, report)
    modules = _modules(data, report)
    rules = _rules(data, targets, modules, report)
    return {"settings": settings, "targets": targets, "modules": modules, "rules": rules}, report
