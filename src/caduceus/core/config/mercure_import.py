"""Reading mercure's configuration file (mercure.json) into our model.

Everything that has a meaning here is carried over; everything else is reported by name, with
the reason, so that nothing is dropped silently.
"""

from __future__ import annotations

from typing import Any

from caduceus.core.config.mercure_modules import module_from_mercure

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
    "local_time",  # the zone the web shows times in (server_time is not needed: all is UTC)
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


def _target(name: str, raw: dict[str, Any], report: list[str]) -> dict[str, Any] | None:
    kind = raw.get("target_type", "dicom")
    where = f"targets -> {name}"
    fields = _TARGET_FIELDS.get(kind)
    if fields is None:
        report.append(f"{where}: target type {kind!r} is not supported yet; target not imported")
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
        report.append(f"{where}: the SFTP server's host key is not verified; set host_key")
    known = {"target_type", "comment", *fields}
    for key in sorted(raw.keys() - known - _IGNORED_EMPTY):
        if raw[key] not in (None, "", [], {}, False):
            report.append(f"{where} -> {key}: no equivalent, not imported")
    return target


def _rule(name: str, raw: dict[str, Any], report: list[str]) -> dict[str, Any]:
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
            report.append(f"rules -> {name} -> {key}: no equivalent, not imported")
    return rule


def _modules(raw_modules: dict[str, Any], report: list[str], allow_root: bool) -> dict[str, Any]:
    """mercure's modules (mapped in mercure_modules.py); those that cannot run are reported."""
    modules = {}
    for name, raw in raw_modules.items():
        module = module_from_mercure(name, raw, report, allow_root=allow_root)
        if module is not None:
            modules[name] = module
    return modules


def from_mercure(
    data: dict[str, Any], *, allow_root_modules: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """Our configuration document for a mercure.json, and what could not be carried over.

    allow_root_modules: the processor's CADUCEUS_PROCESSOR_ALLOW_ROOT; without it a module's
    root-only docker_arguments are left out (reported)."""
    report: list[str] = []
    settings = {key: data[key] for key in _SETTINGS if key in data}
    targets = {}
    for name, raw in (data.get("targets") or {}).items():
        target = _target(name, raw, report)
        if target is not None:
            targets[name] = target
    modules = _modules(data.get("modules") or {}, report, allow_root_modules)
    rules = {}
    for name, raw in (data.get("rules") or {}).items():
        rule = _rule(name, raw, report)
        missing = [t for t in rule["targets"] if t not in targets]
        if missing:
            report.append(
                f"rules -> {name}: refers to target(s) not imported ({', '.join(missing)}); "
                "rule not imported"
            )
            continue
        rules[name] = rule
    for key, variable in _BOOTSTRAP.items():
        if key in data:
            report.append(f"{key}: a bootstrap setting here; set {variable} instead")
    handled = _SETTINGS | set(_BOOTSTRAP) | {"targets", "modules", "rules"}
    for key in sorted(data.keys() - handled):
        if data[key] not in (None, "", [], {}):
            report.append(f"{key}: no equivalent, not imported")
    return {"settings": settings, "targets": targets, "modules": modules, "rules": rules}, report
