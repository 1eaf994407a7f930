"""Reading mercure's configuration file (mercure.json) into our model.

Everything that has a meaning here is carried over; everything else is reported by name, with
the reason, so that nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import TypeAdapter, ValidationError

from caduceus.core.config.docker_arguments import ALLOW_ROOT_KEY
from caduceus.core.config.mercure_modules import module_from_mercure
from caduceus.core.config.mercure_report import Report
from caduceus.core.config.mercure_targets import target_from_mercure
from caduceus.core.config.models import NAME, Module, Rule, Target

_MERCURE_MARKERS = {"incoming_folder", "router_scan_interval", "appliance_name", "dicom_receiver"}
# mercure's Config fields that are ours under the same name and meaning.
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
# ... under another name (ours is in settings:, the smtp sender one level down).
_RENAMED_SETTINGS = {
    "emergency_clean_percentage": "disk_high_water",
    "phi_notifications": "notifications_include_phi",
    "webhook_certificate_location": "webhook_ca_bundle",
}
# mercure's machinery that caduceus does without: reported once per group, with the reason.
_NOT_NEEDED = {
    "caduceus keeps its data under CADUCEUS_HOME": (
        "incoming_folder",
        "studies_folder",
        "outgoing_folder",
        "success_folder",
        "error_folder",
        "discard_folder",
        "processing_folder",
        "jobs_folder",
        "persistence_folder",
    ),
    "caduceus' services are woken through the database, nothing scans folders": (
        "router_scan_interval",
        "dispatcher_scan_interval",
        "cleaner_scan_interval",
    ),
    "caduceus records every event in its own database; there is no bookkeeper service": (
        "bookkeeper",
        "bookkeeper_api_key",
    ),
    "the web's name and look are caduceus' own": ("appliance_name", "appliance_color"),
    "caduceus has no feature switches": ("features",),
    "caduceus keeps module logs with the task": ("processing_logs",),
    "caduceus stores and answers times in UTC": ("server_time",),
    "caduceus keeps the tags of every received series": ("store_sample_dicom_tags",),
}
_METRICS = (
    "graphite_ip",
    "graphite_port",
    "influxdb_host",
    "influxdb_token",
    "influxdb_org",
    "influxdb_bucket",
)
# Kept in the environment here (bootstrap settings), not in the versioned configuration.
_BOOTSTRAP = {"port": "CADUCEUS_DICOM_PORT"}
_CADUCEUS_DICOM_PORT = 11112  # caduceus.core.settings.Settings.dicom_port's default
# mercure's Rule fields and ours.
_RULE_FIELDS = {
    "rule": "rule",
    "action": "action",
    "action_trigger": "trigger",
    "study_trigger_condition": "study_trigger_condition",
    "study_trigger_series": "required_series",
    "study_force_completion_action": "study_force_completion_action",
    "priority": "priority",
    "processing_retain_images": "retain_input_images",
    "disabled": "disabled",
    "fallback": "fallback",
    "comment": "comment",
    "contact": "contact",
    "tags": "tags",
    # mercure's newer releases: a module's result may choose the targets.
    "dynamic_routing": "dynamic_routing",
    "conditional_alternate_target": "alternate_target",
}
_NOTIFICATION_FIELDS = {
    "notification_webhook": "webhook_url",
    "notification_payload": "webhook_payload",
    "notification_payload_body": "webhook_payload_body",
    "notification_email_body": "email_body",
    "notification_trigger_reception": "on_reception",
    "notification_trigger_completion": "on_completion",
    "notification_trigger_completion_on_request": "on_completion_on_request",
    "notification_trigger_error": "on_error",
}
# mercure's Rule defaults where ours differ (a missing field means mercure's default).
_RULE_DEFAULTS = {
    "rule": "False",
    "study_force_completion_action": "discard",
    "notification_trigger_reception": True,
    "notification_trigger_completion": True,
    "notification_trigger_completion_on_request": False,
    "notification_trigger_error": True,
}
_IGNORED_EMPTY = {"contact", "tags", "notification_payload_body"}  # targets and modules


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


def _target(name: str, raw: dict[str, Any], report: Report) -> dict[str, Any] | None:
    """One target, mapped in mercure_targets.py; its findings go into the report's groups."""
    target, findings = target_from_mercure(name, raw)
    groups = {
        "not needed here": report.not_needed,
        "not supported": report.not_supported,
        "changed meaning": report.changed,
    }
    for finding in findings:
        groups[finding.group].append(f"{finding.where}: {finding.text}")
    return target


def _names(value: Any, where: str, report: Report) -> list[str]:
    """A name or a list of names (mercure's target, processing_module); what is not a name is
    left out with a line."""
    names = []
    for item in _as_list(value):
        if isinstance(item, str) and item.strip():
            names.append(item.strip())
        else:
            report.not_supported.append(f"{where}: {item!r} is not a name; left out")
    return names


def json_in_string(value: Any, where: str, report: Report) -> Any:
    """mercure keeps some mappings as JSON text in a string field (a module's environment and
    additional_volumes, say): the parsed value; "" or a broken text gives None (reported)."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        report.not_supported.append(f"{where}: not valid JSON ({exc.msg}); not imported")
        return None


def _rule(name: str, raw: dict[str, Any], report: Report) -> dict[str, Any]:
    where = f"rules -> {name}"
    raw = {**_RULE_DEFAULTS, **raw}
    rule: dict[str, Any] = {
        ours: raw[theirs] for theirs, ours in _RULE_FIELDS.items() if theirs in raw
    }
    # mercure's rules see every tag as text ('3', 'A\\B'): so do they here, to mean the same.
    rule["tag_values"] = "text"
    if rule.get("trigger") not in (None, "series", "study"):
        report.not_supported.append(
            f"{where} -> action_trigger: {rule['trigger']!r} is not one of mercure's; "
            "read as series"
        )
        rule["trigger"] = "series"
    allowed = raw.get("dynamic_routing_allowed_targets")
    if allowed:
        rule["dynamic_routing_allowed_targets"] = _names(
            allowed.split(",") if isinstance(allowed, str) else allowed,
            f"{where} -> dynamic_routing_allowed_targets",
            report,
        )
    if not rule.get("alternate_target"):
        rule.pop("alternate_target", None)
    rule["targets"] = _names(raw.get("target"), f"{where} -> target", report)
    rule["modules"] = _names(raw.get("processing_module"), f"{where} -> processing_module", report)
    settings = json_in_string(
        raw.get("processing_settings"), f"{where} -> processing_settings", report
    )
    if isinstance(settings, dict):
        settings = [settings] if settings else []
    if settings and not (
        isinstance(settings, list) and all(isinstance(one, dict) for one in settings)
    ):
        report.not_supported.append(
            f"{where} -> processing_settings: neither an object nor a list of objects; not imported"
        )
        settings = []
    rule["module_settings"] = settings or []
    notification = {
        ours: raw[theirs] for theirs, ours in _NOTIFICATION_FIELDS.items() if theirs in raw
    }
    email_type = str(raw.get("notification_email_type") or "plain").lower()
    if email_type in ("plain", "html"):
        notification["email_type"] = email_type
    else:
        report.not_supported.append(
            f"{where} -> notification_email_type: {email_type!r} is neither plain nor html; "
            "mails are sent as plain text"
        )
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
    for key in sorted(raw.keys() - known):
        if raw[key] not in (None, "", [], {}, False):
            report.not_supported.append(
                f"{where} -> {key}: not a field of mercure's rules; ignored"
            )
    return rule


def _trigger_seconds(data: dict[str, Any], key: str, report: Report) -> Any:
    """A completion trigger: mercure's test configuration uses zero or negative values (no
    wait); ours waits at least a second."""
    try:
        value = int(data[key])
    except (TypeError, ValueError):
        return data[key]  # not a number: the validation names the field
    if value < 1:
        report.changed.append(f"{key}: {value} seconds becomes 1 second, the shortest wait here")
        return 1
    return value


def _known_zone(name: Any) -> bool:
    try:
        ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _settings(data: dict[str, Any], report: Report) -> dict[str, Any]:
    """The top-level fields of mercure's Config other than targets, modules and rules."""
    settings = {key: data[key] for key in _SETTINGS if key in data}
    if "local_time" in settings and not _known_zone(settings["local_time"]):
        report.not_supported.append(
            f"local_time: {settings.pop('local_time')!r} is not a time zone this system knows; "
            "the web shows UTC"
        )
    for key in ("series_complete_trigger", "study_complete_trigger", "study_forcecomplete_trigger"):
        if key in settings:
            settings[key] = _trigger_seconds(data, key, report)
    for theirs, ours in _RENAMED_SETTINGS.items():
        if data.get(theirs) not in (None, ""):
            settings[ours] = data[theirs]
    high = settings.get("disk_high_water")
    if isinstance(high, int) and not isinstance(high, bool):
        # mercure cleans until use is below its percentage; ours stops at a low-water mark.
        settings["disk_low_water"] = max(0, min(80, high - 10))
    if data.get("email_notification_from"):
        settings["smtp"] = {"sender": data["email_notification_from"]}
    handled = (
        _SETTINGS
        | set(_RENAMED_SETTINGS)
        | {"targets", "modules", "rules", "email_notification_from"}
    )
    handled |= _environment_settings(data, report)
    handled |= _not_needed(data, report)
    handled |= _not_supported_settings(data, report)
    for key in sorted(data.keys() - handled):
        report.not_supported.append(f"{key}: not a field of mercure's configuration; ignored")
    return settings


def _environment_settings(data: dict[str, Any], report: Report) -> set[str]:
    """Fields that are environment (bootstrap) settings here; reported only where the value
    differs from ours, since the configuration file cannot carry them."""
    port = str(data.get("port", "")).strip()
    if port and port != str(_CADUCEUS_DICOM_PORT):
        report.changed.append(
            f"port: the receiver's port is the environment setting "
            f"CADUCEUS_DICOM_PORT; set CADUCEUS_DICOM_PORT={port}"
        )
    if data.get("support_root_modules"):
        report.changed.append(
            "support_root_modules: the environment setting CADUCEUS_PROCESSOR_ALLOW_ROOT; "
            "set CADUCEUS_PROCESSOR_ALLOW_ROOT=true"
        )
    runner = data.get("process_runner") or ""
    if runner == "nomad":
        report.changed.append(
            "process_runner: modules run in containers (CADUCEUS_PROCESSOR_RUNNER=container or "
            "kubernetes); under Nomad, run caduceus itself as a Nomad job (deploy/nomad)"
        )
    if data.get("accept_compressed_images") is False:
        # mercure then proposes only uncompressed syntaxes; caduceus accepts both by default.
        report.changed.append(
            "accept_compressed_images: the environment setting "
            "CADUCEUS_RECEIVER_ACCEPT_COMPRESSED_IMAGES; set "
            "CADUCEUS_RECEIVER_ACCEPT_COMPRESSED_IMAGES=false to refuse compressed images as "
            "this mercure did"
        )
    return {"port", "support_root_modules", "process_runner", "accept_compressed_images"}


def _not_needed(data: dict[str, Any], report: Report) -> set[str]:
    handled: set[str] = set()
    for why, keys in _NOT_NEEDED.items():
        present = [k for k in keys if k in data]
        if present:
            report.not_needed.append(f"{', '.join(present)}: {why}")
            handled.update(present)
    metrics = [k for k in _METRICS if k in data]
    if metrics:
        pushing = data.get("graphite_ip") or data.get("influxdb_host")
        line = (
            f"{', '.join(metrics)}: caduceus does not push metrics; "
            "it serves them in Prometheus format at /metrics"
        )
        (report.not_supported if pushing else report.not_needed).append(line)
        handled.update(metrics)
    return handled


def _not_supported_settings(data: dict[str, Any], report: Report) -> set[str]:
    receiver = data.get("dicom_receiver") or {}
    extra_tags = receiver.get("additional_tags") if isinstance(receiver, dict) else None
    if extra_tags:
        report.not_supported.append(
            "dicom_receiver -> additional_tags: rules read every attribute of the file, "
            'private ones as tags["(gggg,eeee)"] or by creator and element; the names '
            f"{', '.join(sorted(extra_tags))} are not defined here"
        )
    retrieve = data.get("dicom_retrieve") or {}
    if isinstance(retrieve, dict) and any(retrieve.values()):
        report.not_supported.append(
            "dicom_retrieve: caduceus does not query or retrieve from DICOM nodes"
        )
    if data.get("processing_runtime") not in (None, "", "runc"):
        report.not_supported.append(
            f"processing_runtime: {data['processing_runtime']!r}: modules run with the "
            "container engine's default runtime; a module that needs a GPU sets gpu: true"
        )
    return {
        "processing_runtime",
        "dicom_receiver",
        "dicom_retrieve",
    }


# mercure tells a target's type by which type's fields it has, when target_type is missing
# (its Target.validate tries each in turn); a target with an address is DICOM.
_TYPE_BY_FIELDS = (
    ("dicom", ("ip", "port", "aet_target")),
    ("dicomweb", ("url",)),
    ("xnat", ("project_id", "host", "user")),
    ("s3", ("bucket",)),
    ("sftp", ("folder", "user", "host")),
    ("folder", ("folder",)),
)


def _target_type(raw: dict[str, Any]) -> str:
    if raw.get("target_type"):
        return str(raw["target_type"])
    for kind, needed in _TYPE_BY_FIELDS:
        if all(key in raw for key in needed):
            return kind
    return "dicom"


def _valid(
    model: Any,
    document: dict[str, Any],
    where: str,
    report: Report,
    context: dict[str, Any] | None = None,
) -> bool:
    """Whether one target, module or rule is valid here; an invalid one is left out with the
    reason, so that the rest of the file still imports."""
    try:
        TypeAdapter(model).validate_python(document, context=context)
    except ValidationError as exc:
        problems = "; ".join(
            (" -> ".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "") + e["msg"]
            for e in exc.errors()
        )
        report.not_supported.append(f"{where}: not imported: {problems}")
        return False
    return True


class _Failed:
    def __init__(self) -> None:
        self.failed = False

    def __bool__(self) -> bool:
        return self.failed


@contextmanager
def _unreadable(where: str, report: Report) -> Iterator[_Failed]:
    """A target, module or rule whose fields have values of the wrong kind (a port "x") is left
    out with a line, not the whole file. The message names the kind of error only: the value
    could be a password."""
    outcome = _Failed()
    try:
        yield outcome
    except (TypeError, ValueError, AttributeError) as exc:
        outcome.failed = True
        report.not_supported.append(
            f"{where}: a field holds a value of the wrong kind ({type(exc).__name__}); not imported"
        )


def _entries(data: dict[str, Any], part: str, report: Report) -> list[tuple[str, dict[str, Any]]]:
    """The named entries of targets, modules or rules that can be read at all: a name that is
    not one here, or an entry that is not a mapping, is left out with a line."""
    found = data.get(part) or {}
    if not isinstance(found, dict):
        report.not_supported.append(f"{part}: not a mapping of names; nothing imported")
        return []
    entries = []
    for name, raw in found.items():
        if not isinstance(name, str) or not re.match(NAME, name):
            report.not_supported.append(
                f"{part} -> {name}: a name here has up to 64 letters, digits, spaces, '_', "
                "'.' or '-', starting with a letter or digit; not imported"
            )
        elif not isinstance(raw, dict):
            report.not_supported.append(f"{part} -> {name}: not a mapping; not imported")
        else:
            entries.append((name, raw))
    return entries


def _targets(data: dict[str, Any], report: Report) -> dict[str, Any]:
    targets = {}
    for name, raw in _entries(data, "targets", report):
        mark = len(report.changed)
        with _unreadable(f"targets -> {name}", report) as failed:
            target = _target(name, {**raw, "target_type": _target_type(raw)}, report)
        if failed or target is None:
            del report.changed[mark:]
            continue
        if _valid(Target, target, f"targets -> {name}", report):
            targets[name] = target
        else:
            del report.changed[mark:]  # what it would have become: moot, it is left out
    return targets


def _modules(data: dict[str, Any], report: Report, allow_root: bool) -> dict[str, Any]:
    """mercure's modules, each mapped in mercure_modules.py; one that cannot run here, or is
    not valid here, is left out with the reason."""
    modules = {}
    for name, raw in _entries(data, "modules", report):
        mark = len(report.changed)
        with _unreadable(f"modules -> {name}", report) as failed:
            module = module_from_mercure(name, raw, report, allow_root=allow_root)
        if failed or module is None:
            del report.changed[mark:]
        elif _valid(Module, module, f"modules -> {name}", report, {ALLOW_ROOT_KEY: allow_root}):
            modules[name] = module
        else:
            del report.changed[mark:]
    return modules


def _drop_missing(
    rule: dict[str, Any], key: str, known: dict[str, Any], where: str, report: Report
) -> None:
    kept = [n for n in rule.get(key, []) if n in known]
    dropped = [n for n in rule.get(key, []) if n not in known]
    if dropped:
        rule[key] = kept
        report.changed.append(f"{where}: {', '.join(dropped)} not imported; left out of {key}")


def _rules(
    data: dict[str, Any], targets: dict[str, Any], modules: dict[str, Any], report: Report
) -> dict[str, Any]:
    """The rules, each referring only to what was imported; a rule that cannot work without
    what was left out (a route rule with no target left, say) is left out with the reason."""
    rules = {}
    for name, raw in _entries(data, "rules", report):
        where = f"rules -> {name}"
        with _unreadable(where, report) as failed:
            rule = _rule(name, raw, report)
        if failed:
            continue
        # The settings belong to the module at the same position: keep them paired.
        settings = rule["module_settings"] + [{}] * (
            len(rule["modules"]) - len(rule["module_settings"])
        )
        pairs = list(zip(rule["modules"], settings, strict=False))
        _drop_missing(rule, "targets", targets, where, report)
        _drop_missing(rule, "dynamic_routing_allowed_targets", targets, where, report)
        if rule.get("alternate_target") and rule["alternate_target"] not in targets:
            report.changed.append(
                f"{where}: alternate target {rule['alternate_target']} not imported; left out"
            )
            del rule["alternate_target"]
        dropped = [m for m, _ in pairs if m not in modules]
        if dropped:
            report.changed.append(
                f"{where}: {', '.join(dropped)} not imported; left out of modules"
            )
            kept = [(m, s) for m, s in pairs if m in modules]
            rule["modules"] = [m for m, _ in kept]
            rule["module_settings"] = [s for _, s in kept]
            while rule["module_settings"] and not rule["module_settings"][-1]:
                rule["module_settings"].pop()
        if _valid(Rule, rule, where, report):
            rules[name] = rule
    return rules


def from_mercure(
    data: dict[str, Any], *, allow_root_modules: bool = False
) -> tuple[dict[str, Any], Report]:
    """Our configuration document for a mercure.json, and what could not be carried over as
    it was. Each part has its own function: settings, targets, modules, rules.

    allow_root_modules: the processor's CADUCEUS_PROCESSOR_ALLOW_ROOT; without it a module's
    root-only docker_arguments are left out (reported)."""
    report = Report()
    settings = _settings(data, report)
    targets = _targets(data, report)
    modules = _modules(data, report, allow_root_modules)
    rules = _rules(data, targets, modules, report)
    return {"settings": settings, "targets": targets, "modules": modules, "rules": rules}, report
