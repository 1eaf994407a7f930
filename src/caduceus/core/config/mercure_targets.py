"""mercure's targets (mercure.json's "targets"), field by field, into ours.

Every field of every mercure target type (app/common/types.py: DicomTarget, DicomTLSTarget,
SftpTarget, RsyncTarget, XnatTarget, DicomWebTarget, S3Target, FolderTarget, DummyTarget, and
the fields all share) is mapped here with mercure's defaults and meaning, or reported in one of
three groups: not needed here, not supported (with why), changed meaning (with what it became).
A security check that is off after the import is reported as a changed meaning, never silent.
A target that cannot be imported is reported and left out; the rest of the file still imports.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from pydantic import TypeAdapter, ValidationError

from caduceus.core.config.models import Target

Group = Literal["not needed here", "not supported", "changed meaning"]


class Finding(NamedTuple):
    """One report line: where in mercure.json, which group, and what became of it."""

    where: str
    group: Group
    text: str

    def line(self) -> str:
        return f"{self.where}: {self.group}: {self.text}"


_TARGET = TypeAdapter(Target)
# mercure's defaults (dispatch/target_types/builtin.py): port 104 when empty; DCMTK's own AE
# titles when none is given.
_DICOM_PORT = 104
_DEFAULT_CALLED_AET = "ANY-SCP"
_COMMON = {"target_type", "contact", "comment", "direction"}


def target_from_mercure(name: str, raw: Any) -> tuple[dict[str, Any] | None, list[Finding]]:
    """Our settings for one of mercure's targets (None when it cannot be imported), and the
    report. The settings are validated here, so that one bad target never fails the file."""
    where = f"targets -> {name}"
    if not isinstance(raw, dict):
        return None, [Finding(where, "not supported", "not a mapping; target not imported")]
    kind = raw.get("target_type") or "dicom"  # mercure: a target without a type is DICOM
    mapper = _MAPPERS.get(str(kind))
    if mapper is None:
        text = f"target type {kind!r} is unknown; target not imported"
        return None, [Finding(where, "not supported", text)]
    findings: list[Finding] = []
    target, known = mapper(raw, where, findings)
    if target is None:
        return None, findings
    target["type"] = target.get("type", kind)
    target["comment"] = _comment(raw)
    findings += _direction(raw, where)
    for key in sorted(raw.keys() - known - _COMMON):
        if raw[key] not in (None, "", [], {}, False):
            findings.append(
                Finding(f"{where} -> {key}", "not supported", "no such field in mercure 0.4")
            )
    try:
        _TARGET.validate_python(target)
    except ValidationError as exc:
        problems = "; ".join(
            f"{' -> '.join(str(p) for p in e['loc'][1:]) or 'settings'}: {e['msg']}"
            for e in exc.errors()
        )
        findings.append(Finding(where, "not supported", f"{problems}; target not imported"))
        return None, findings
    return target, findings


def _comment(raw: dict[str, Any]) -> str:
    """mercure's comment, with its contact (which our targets have no field of) kept in it."""
    comment = str(raw.get("comment") or "")
    contact = str(raw.get("contact") or "")
    if contact:
        comment = f"{comment} (contact: {contact})" if comment else f"contact: {contact}"
    return comment


def _direction(raw: dict[str, Any], where: str) -> list[Finding]:
    direction = raw.get("direction") or "push"
    if direction == "push":
        return []
    return [
        Finding(
            f"{where} -> direction",
            "not supported",
            f"{direction!r}: caduceus does not query or retrieve from targets (mercure's "
            "query tool); the target is imported for sending only",
        )
    ]


def _set(target: dict[str, Any], ours: str, value: Any) -> None:
    if value not in (None, ""):
        target[ours] = value


def _dicom(
    raw: dict[str, Any], where: str, findings: list[Finding]
) -> tuple[dict[str, Any], set[str]]:
    target: dict[str, Any] = {}
    ip = str(raw.get("ip") or "")
    if ip == "sender":
        # mercure: send back to the address the series came from (dcmsend to the sender).
        target["send_to_sender"] = True
        if raw.get("target_type") == "dicomtls":
            findings.append(
                Finding(
                    f"{where} -> ip",
                    "changed meaning",
                    "mercure's DICOM+TLS target would call a host named 'sender'; here the "
                    "series is sent back to its sender, over TLS",
                )
            )
    else:
        _set(target, "host", ip)
    try:
        target["port"] = int(raw.get("port") or _DICOM_PORT)
    except (TypeError, ValueError):
        target["port"] = raw.get("port")  # refused by validation, with the reason
    called = str(raw.get("aet_target") or "")
    if not called:
        called = _DEFAULT_CALLED_AET
        findings.append(
            Finding(
                f"{where} -> aet_target",
                "changed meaning",
                f"empty; the target is called as {called} (DCMTK's default called AE title)",
            )
        )
    target["called_aet"] = called
    if raw.get("aet_source"):
        target["calling_aet"] = raw["aet_source"]
    else:
        findings.append(
            Finding(
                f"{where} -> aet_source",
                "changed meaning",
                "empty; caduceus calls the target as CADUCEUS (set calling_aet to change it)",
            )
        )
    target["pass_sender_aet"] = bool(raw.get("pass_sender_aet"))
    target["pass_receiver_aet"] = bool(raw.get("pass_receiver_aet"))
    known = {"ip", "port", "aet_target", "aet_source", "pass_sender_aet", "pass_receiver_aet"}
    return target, known


def _dicomtls(
    raw: dict[str, Any], where: str, findings: list[Finding]
) -> tuple[dict[str, Any], set[str]]:
    target, known = _dicom(raw, where, findings)
    _set(target, "tls_key", raw.get("tls_key"))
    _set(target, "tls_certificate", raw.get("tls_cert"))
    _set(target, "tls_ca_certificate", raw.get("ca_cert"))
    findings.append(
        Finding(
            where,
            "changed meaning",
            "the target's certificate must also name its host (verify_hostname: true); "
            "mercure (DCMTK's storescu) checks only that the CA signed it. Set "
            "verify_hostname: false for a certificate that does not name the host",
        )
    )
    return target, known | {"tls_key", "tls_cert", "ca_cert"}


def _exclude(value: Any) -> list[str]:
    """mercure's file_filter: comma-separated patterns of files NOT to copy."""
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


def _excludes_dicom(patterns: list[str], where: str) -> list[Finding]:
    if any(fnmatch.fnmatchcase("1.2.3.dcm", p) for p in patterns):
        text = (
            f"{', '.join(patterns)} leaves out every DICOM file (*.dcm): the target receives "
            "only the completion marker, as in mercure"
        )
        return [Finding(f"{where} -> file_filter", "changed meaning", text)]
    return []


def _folder(
    raw: dict[str, Any], where: str, findings: list[Finding]
) -> tuple[dict[str, Any], set[str]]:
    target: dict[str, Any] = {}
    _set(target, "path", raw.get("folder"))
    exclude = _exclude(raw.get("file_filter"))
    if exclude:
        target["exclude"] = exclude
        findings += _excludes_dicom(exclude, where)
    return target, {"folder", "file_filter"}


def _ssh(
    raw: dict[str, Any], where: str, findings: list[Finding], what: str
) -> tuple[dict[str, Any] | None, set[str]]:
    known = {"host", "user", "password", "folder"}
    if not raw.get("password"):
        # mercure then logs in with its own account's default SSH key (~/.ssh/id_*), which
        # caduceus does not guess.
        text = (
            "no password: mercure logs in with its account's default SSH key; set "
            "private_key_file (a key file on the dispatcher's machine); target not imported"
        )
        findings.append(Finding(where, "not supported", text))
        return None, known
    target: dict[str, Any] = {"accept_unknown_host_key": True}
    for key in ("host", "user", "password", "folder"):
        _set(target, key, raw.get(key))
    findings.append(
        Finding(
            where,
            "changed meaning",
            f"security check off: the {what} server's host key is not verified ({_HOST_KEYS[what]}"
            "); set host_key (a line of `ssh-keyscan HOST`) and accept_unknown_host_key: false",
        )
    )
    return target, known


_HOST_KEYS = {
    "SFTP": "mercure runs sftp with StrictHostKeyChecking=no",
    "rsync": "mercure trusts the key it sees first, StrictHostKeyChecking=accept-new; here any "
    "key is accepted until one is set",
}


def _sftp(
    raw: dict[str, Any], where: str, findings: list[Finding]
) -> tuple[dict[str, Any] | None, set[str]]:
    target, known = _ssh(raw, where, findings, "SFTP")
    if target is not None:
        # Not in mercure 0.4's SftpTarget; taken with the folder target's meaning if present.
        exclude = _exclude(raw.get("file_filter"))
        if exclude:
            target["exclude"] = exclude
            findings += _excludes_dicom(exclude, where)
    return target, known | {"file_filter"}


def _rsync(
    raw: dict[str, Any], where: str, findings: list[Finding]
) -> tuple[dict[str, Any] | None, set[str]]:
    target, known = _ssh(raw, where, findings, "rsync")
    if target is not None:
        target["run_on_complete"] = bool(raw.get("run_on_complete"))
    return target, known | {"run_on_complete"}


def _xnat(
    raw: dict[str, Any], where: str, findings: list[Finding]
) -> tuple[dict[str, Any], set[str]]:
    host = str(raw.get("host") or "")
    if host and "://" not in host:
        findings.append(
            Finding(
                f"{where} -> host",
                "changed meaning",
                f"{host!r} has no scheme; imported as https://{host} (set url to change it)",
            )
        )
        host = f"https://{host}"
    target: dict[str, Any] = {}
    _set(target, "url", host)
    for key in ("project_id", "user", "password"):
        _set(target, key, raw.get(key))
    return target, {"host", "project_id", "user", "password"}


def _dicomweb(
    raw: dict[str, Any], where: str, findings: list[Finding]
) -> tuple[dict[str, Any], set[str]]:
    target: dict[str, Any] = {}
    _set(target, "url", raw.get("url"))
    for prefix in ("stow_url_prefix", "qido_url_prefix", "wado_url_prefix"):
        _set(target, prefix, raw.get(prefix))
    user, password, token = raw.get("http_user"), raw.get("http_password"), raw.get("access_token")
    if str(raw.get("url") or "").startswith("file://"):
        credentials = [k for k in ("http_user", "http_password", "access_token") if raw.get(k)]
        if credentials:
            text = "a file:// target writes into a local folder; no login is used"
            findings.append(
                Finding(f"{where} -> {', '.join(credentials)}", "not needed here", text)
            )
    elif user and password:
        # mercure logs in with basic authentication when both are set, else with the token.
        target["username"], target["password"] = user, password
        if token:
            text = "not used: mercure logs in with http_user and http_password when both are set"
            findings.append(Finding(f"{where} -> access_token", "not needed here", text))
    elif token:
        target["token"] = token
        if user or password:
            half = "http_user" if user else "http_password"
            text = "not used: mercure logs in with the access token unless both are set"
            findings.append(Finding(f"{where} -> {half}", "not needed here", text))
    elif user or password:
        half = "http_user" if user else "http_password"
        text = "not used: mercure logs in only when both http_user and http_password are set"
        findings.append(Finding(f"{where} -> {half}", "not needed here", text))
    known = {
        "url",
        "stow_url_prefix",
        "qido_url_prefix",
        "wado_url_prefix",
        "http_user",
        "http_password",
        "access_token",
    }
    return target, known


def _s3(
    raw: dict[str, Any], where: str, findings: list[Finding]
) -> tuple[dict[str, Any], set[str]]:
    fields = ("region", "bucket", "prefix", "access_key_id", "secret_access_key")
    target: dict[str, Any] = {}
    for key in fields:
        _set(target, key, raw.get(key))
    return target, set(fields)


def _dummy(
    raw: dict[str, Any], where: str, findings: list[Finding]
) -> tuple[dict[str, Any], set[str]]:
    return {}, set()


_Mapper = Callable[[dict[str, Any], str, list[Finding]], tuple[dict[str, Any] | None, set[str]]]
_MAPPERS: dict[str, _Mapper] = {
    "dicom": _dicom,
    "dicomtls": _dicomtls,
    "folder": _folder,
    "sftp": _sftp,
    "rsync": _rsync,
    "xnat": _xnat,
    "dicomweb": _dicomweb,
    "s3": _s3,
    "dummy": _dummy,
}
