"""Validated configuration models.

Names and meanings follow mercure's configuration where a field exists there, so that an
existing mercure.json maps onto them (see mercure_import.py). Every model forbids unknown fields:
a misspelt option is an error, not silently ignored.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from caduceus.core.config import docker_arguments
from caduceus.core.rules import RuleError, parse_rule
from caduceus.core.time_zones import DEFAULT_ZONE, zone_named

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63}$"
Name = Annotated[str, Field(pattern=NAME)]
AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]+$")]


class Strict(BaseModel):
    # Errors never quote the input: it may hold a password.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)


MASK = "**********"
# Validation context of a version read back from the database (see Rule._expression_parses).
STORED_KEY = "stored"
STORED = {STORED_KEY: True}

SEALED = "$sealed"  # caduceus.core.secret_keys.SEALED: the store encrypts what it marks

# Settings of a module whose names say they hold a secret are treated as one, marked or not.
SECRET_NAME = re.compile(r"key|token|password|passwd|secret|credential", re.IGNORECASE)


def _context(info: SerializationInfo) -> dict[str, Any]:
    return info.context if isinstance(info.context, dict) else {}


def shown_secret(value: Any, info: SerializationInfo, masked: Any = MASK) -> Any:
    """How a secret value is written out: in clear only where it must be (an export the
    administrator asked to include them in), marked for encryption where it is stored (the
    configuration database), and masked everywhere else."""
    context = _context(info)
    if value in ("", None) or masked == value:
        return value
    if context.get("reveal_secrets"):
        return value
    if context.get("seal"):
        return {SEALED: value}
    return masked


def _reveal(value: SecretStr, info: SerializationInfo) -> Any:
    return shown_secret(value.get_secret_value(), info)


Secret = Annotated[SecretStr, PlainSerializer(_reveal, return_type=Any)]


def checked_url(url: str, info: ValidationInfo) -> str:
    """An http(s) URL that can be taken apart (a masked copy of it is shown). A stored version
    from before this check still loads: masked_url then shows only the mask."""
    if (info.context or {}).get(STORED_KEY) or not url:
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL with a host")
    return url


URL_PREFIX = r"^[A-Za-z0-9_.~\-/]*$"


def file_folder(url: str) -> str:
    """The folder of a file:///absolute/path URL; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ValueError("a file URL names a folder on this machine: file:///path/to/folder")
    if not parts.path.startswith("/") or "/../" in f"{parts.path}/":
        raise ValueError("a file URL needs an absolute path without '..': file:///path/to/folder")
    return parts.path


def masked_url(url: str) -> str:
    """The URL without what may be a credential: its query string (?apikey=...), fragment
    and the password of user information. Never raises: a URL that cannot be taken apart is
    all mask."""
    try:
        return _masked_url(url)
    except ValueError:
        return MASK


def masked_webhook(url: str) -> str:
    """A webhook URL as shown: Slack and Teams put their token in the path, so only the scheme
    and the host (and port) are left."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return MASK
    return f"{parts.scheme}://{host}/{MASK}"


def _masked_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username}:{MASK}@{host}")
    if parts.query:
        parts = parts._replace(query=MASK)
    if parts.fragment:
        parts = parts._replace(fragment=MASK)
    return parts.geturl()


def _url_shown(value: str, info: SerializationInfo) -> Any:
    return shown_secret(value, info, masked_url(value))


def _webhook_shown(value: str, info: SerializationInfo) -> Any:
    return shown_secret(value, info, masked_webhook(value))


def _key_id_shown(value: str, info: SerializationInfo) -> Any:
    return shown_secret(value, info)


class DicomTarget(Strict):
    type: Literal["dicom"] = "dicom"
    host: str = ""
    port: int = Field(ge=1, le=65535)
    called_aet: AETitle
    calling_aet: AETitle = "CADUCEUS"
    # Like mercure: send back to the address that sent the series; call the target with the
    # sender's AE title, or with the AE title the sender called us by.
    send_to_sender: bool = False
    pass_sender_aet: bool = False
    pass_receiver_aet: bool = False
    associations: int = Field(default=1, ge=1, le=8, description="parallel associations")
    comment: str = ""

    @model_validator(mode="after")
    def _host_unless_sender(self) -> DicomTarget:
        if not self.host and not self.send_to_sender:
            raise ValueError("a DICOM target needs a host (or send_to_sender: true)")
        return self


class DicomTlsTarget(DicomTarget):
    """DICOM over TLS. Paths are files on the dispatcher's machine."""

    type: Literal["dicomtls"] = "dicomtls"  # type: ignore[assignment]
    tls_ca_certificate: str = Field(min_length=1, description="CA that signed the target's")
    # Ours, for targets that ask for a client certificate (mutual TLS); both or neither.
    tls_certificate: str = Field(default="", description="our certificate (PEM file)")
    tls_key: str = Field(default="", description="our private key (PEM file)")
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _certificate_with_key(self) -> DicomTlsTarget:
        if bool(self.tls_certificate) != bool(self.tls_key):
            raise ValueError("tls_certificate and tls_key go together: give both or neither")
        return self


# Patterns (fnmatch: * ? [..]) of file names a folder or SFTP target does not send: mercure's
# folder target's file_filter (comma-separated there) means this.
Exclude = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]],
    Field(max_length=100, description="names of files not to send, e.g. *.txt"),
]


class FolderTarget(Strict):
    type: Literal["folder"] = "folder"
    path: str = Field(min_length=1)
    # Only files whose names match this pattern are written (the opposite of mercure's
    # file_filter, which is `exclude` here).
    file_filter: str = ""
    exclude: Exclude = Field(default_factory=list)
    # Delivered folders are 700 and files 600 (private to caduceus's account); with this on,
    # 750 and 640, for another account in the folder's group (an importer) to read them.
    group_access: bool = False
    comment: str = ""


class DicomWebTarget(Strict):
    """DICOMweb STOW-RS: instances are POSTed to <url>/studies in batches."""

    type: Literal["dicomweb"] = "dicomweb"
    url: Annotated[str, PlainSerializer(_url_shown, return_type=Any)] = Field(
        min_length=1, pattern=r"^(https?|file)://"
    )

    @field_validator("url")
    @classmethod
    def _url_checked(cls, url: str, info: ValidationInfo) -> str:
        if url.startswith("file://"):
            # Like mercure (dicomweb-client's DICOMfileClient): a folder on this machine that
            # takes the instances as a file-based DICOMweb store.
            file_folder(url)
            return url
        return checked_url(url, info)

    # Put between the URL and the resource, as dicomweb-client does (<url>/<prefix>/studies):
    # for servers whose STOW-RS and QIDO-RS services live under different paths.
    stow_url_prefix: str = Field(default="", pattern=URL_PREFIX)
    qido_url_prefix: str = Field(default="", pattern=URL_PREFIX)
    # Only for retrieving, which caduceus does not do; kept so that an imported target says
    # where its WADO-RS service is.
    wado_url_prefix: str = Field(default="", pattern=URL_PREFIX)

    username: str = ""
    password: Secret = SecretStr("")
    token: Secret = Field(default=SecretStr(""), description="bearer token")
    tls_ca_certificate: str = ""
    verify_tls: bool = True
    batch_size: int = Field(default=50, ge=1, le=1000, description="instances per request")
    timeout_seconds: float = Field(default=120.0, gt=0)
    comment: str = ""

    @field_validator("token")
    @classmethod
    def _token_is_one_word(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token != MASK and any(not 0x21 <= ord(c) <= 0x7E for c in token):
            raise ValueError("a bearer token is printable ASCII without spaces or line breaks")
        return value

    @model_validator(mode="after")
    def _one_kind_of_auth(self) -> DicomWebTarget:
        if self.token.get_secret_value() and (self.username or self.password.get_secret_value()):
            raise ValueError("use either basic auth (username, password) or a token, not both")
        return self


class S3Target(Strict):
    type: Literal["s3"] = "s3"
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-]+[a-z0-9]$")
    prefix: str = ""
    region: str = "us-east-1"
    endpoint_url: str = Field(default="", description="for S3-compatible stores")
    access_key_id: Annotated[str, PlainSerializer(_key_id_shown, return_type=Any)] = ""
    secret_access_key: Secret = SecretStr("")
    comment: str = ""


class _SshTarget(Strict):
    """What an SFTP and an rsync target need to log in over SSH."""

    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1)
    password: Secret = SecretStr("")
    private_key_file: str = ""
    folder: str = Field(min_length=1)
    # The server's public key ("ssh-ed25519 AAAA..."): an unverified server could be anyone.
    host_key: str = Field(
        default="", pattern=r"^$|^(\S+ )?(ssh|ecdsa|sk)-[\w@.\-]+ [A-Za-z0-9+/]+={0,3}( .*)?$"
    )
    accept_unknown_host_key: bool = False
    comment: str = ""

    @model_validator(mode="after")
    def _credentials_and_host_key(self) -> _SshTarget:
        kind = "an SFTP" if getattr(self, "type", "") == "sftp" else "an rsync"
        if not self.password.get_secret_value() and not self.private_key_file:
            raise ValueError(f"{kind} target needs a password or a private_key_file")
        if not self.host_key and not self.accept_unknown_host_key:
            raise ValueError(
                f"{kind} target needs the server's host_key (or accept_unknown_host_key: true)"
            )
        return self


class SftpTarget(_SshTarget):
    type: Literal["sftp"] = "sftp"
    exclude: Exclude = Field(default_factory=list)


class RsyncTarget(_SshTarget):
    """rsync over SSH into <folder>/<task id>, published whole like the SFTP target."""

    type: Literal["rsync"] = "rsync"
    # Like mercure: once published, run <folder>/mercure_complete.sh on the server with the
    # published folder and "rsync" as its arguments.
    run_on_complete: bool = False


class XnatTarget(Strict):
    """XNAT: each task uploaded as a zip through XNAT's image session import service."""

    type: Literal["xnat"] = "xnat"
    url: Annotated[
        str,
        Field(min_length=1, pattern=r"^https?://"),
        AfterValidator(checked_url),
        PlainSerializer(_url_shown, return_type=Any),
    ]
    project_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    user: str = Field(min_length=1)
    password: Secret = SecretStr("")
    tls_ca_certificate: str = ""
    verify_tls: bool = True
    timeout_seconds: float = Field(default=600.0, gt=0)
    comment: str = ""


class DummyTarget(Strict):
    """Accepts everything and keeps nothing: for trying rules out."""

    type: Literal["dummy"] = "dummy"
    comment: str = ""


TargetSettings = (
    DicomTarget
    | DicomTlsTarget
    | FolderTarget
    | DicomWebTarget
    | S3Target
    | SftpTarget
    | RsyncTarget
    | XnatTarget
    | DummyTarget
)
Target = Annotated[TargetSettings, Field(discriminator="type")]


# Capabilities an administrator may grant a module's container: the engines' usual defaults
# and two that GPU and real-time workloads ask for. Never the ones that reach the host
# (SYS_ADMIN, SYS_PTRACE, SYS_MODULE, DAC_READ_SEARCH, NET_ADMIN, BPF, ...).
GRANTABLE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "IPC_LOCK",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
        "SYS_NICE",
    }
)


# One plain folder name: never a path, never hidden, never "..".
PERSISTENCE_FOLDER = r"^$|^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


NODE_LABEL_KEY = re.compile(
    r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
)
NODE_LABEL_VALUE = re.compile(r"^$|^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


class Module(Strict):
    """A processing module: a container image or, without a container engine, a command."""

    image: str = ""
    command: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)
    # Settings shown masked, kept encrypted; names with key, token, password or secret in
    # them are secret without being listed.
    secret_settings: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    network: bool = False
    requires_root: bool = False
    persistence: bool = False
    memory_mb: int = Field(default=4096, ge=16)
    cpus: float = Field(default=1.0, gt=0)
    timeout_seconds: int = Field(default=3600, ge=1, le=7 * 86400)
    gpu: bool = False
    # Extra bind mounts "HOST:CONTAINER[:ro]"; HOST must lie in the administrator's allow-listed
    # folder (CADUCEUS_PROCESSOR_VOLUME_ROOT).
    volumes: list[str] = Field(default_factory=list)
    pull: Literal["missing", "always"] = "missing"
    # A local command runs in a bubblewrap sandbox where bwrap is installed, unless this is off.
    sandbox: bool = True
    # Linux capabilities the administrator grants this module's container (none by default),
    # from GRANTABLE_CAPABILITIES only; e.g. ["NET_BIND_SERVICE"].
    capabilities: list[str] = Field(default_factory=list)
    # mercure's docker_arguments: more options for the container, from an allow-list
    # (core/config/docker_arguments.py); the root-only ones need requires_root and
    # CADUCEUS_PROCESSOR_ALLOW_ROOT.
    docker_arguments: dict[str, Any] = Field(default_factory=dict)
    # Kubernetes placement: the labels a node must carry to run this module's pods.
    node_selector: dict[str, str] = Field(default_factory=dict)
    # mercure's persistence_folder_name: modules naming the same folder share it
    # (persistence/<name> under the data root); empty: the module's own name.
    persistence_folder_name: str = Field(default="", pattern=PERSISTENCE_FOLDER)
    contact: str = ""
    comment: str = ""

    def is_secret(self, setting: str) -> bool:
        return setting in self.secret_settings or bool(SECRET_NAME.search(setting))

    @field_serializer("settings")
    def _settings_shown(self, settings: dict[str, Any], info: SerializationInfo) -> Any:
        return {
            key: shown_secret(value, info) if self.is_secret(key) else value
            for key, value in settings.items()
        }

    @field_serializer("environment")
    def _environment_shown(self, environment: dict[str, str], info: SerializationInfo) -> Any:
        # The same rule as settings: API_TOKEN and the like are masked and kept encrypted.
        return {
            key: shown_secret(value, info) if SECRET_NAME.search(key) else value
            for key, value in environment.items()
        }

    @model_validator(mode="after")
    def _image_or_command(self) -> Module:
        if bool(self.image) == bool(self.command):
            raise ValueError("a module has either an image or a command, not both or neither")
        return self

    @field_validator("capabilities")
    @classmethod
    def _grantable(cls, names: list[str]) -> list[str]:
        granted: list[str] = []
        for name in names:
            plain = name.strip().upper().removeprefix("CAP_")
            if plain not in GRANTABLE_CAPABILITIES:
                raise ValueError(
                    f"capability {name!r} cannot be granted to a module; one of "
                    + ", ".join(sorted(GRANTABLE_CAPABILITIES))
                )
            if plain not in granted:
                granted.append(plain)
        return granted

    @model_validator(mode="after")
    def _capabilities_for_containers(self) -> Module:
        if self.capabilities and not self.image:
            raise ValueError("capabilities apply to a module's container; a command has none")
        return self

    @model_validator(mode="after")
    def _docker_arguments_allowed(self, info: ValidationInfo) -> Module:
        """Checked against the allow-list; root-only options only where the context says the
        administrator allows root modules (a stored version loads as it was: the runner
        checks again before each run)."""
        if not self.docker_arguments:
            return self
        if not self.image:
            raise ValueError("docker_arguments apply to a module's container; a command has none")
        context = info.context or {}
        checked, problems = docker_arguments.check(
            self.docker_arguments,
            requires_root=self.requires_root,
            allow_root=bool(context.get(docker_arguments.ALLOW_ROOT_KEY)),
        )
        if problems and not context.get(STORED_KEY):
            raise ValueError("; ".join(problems))
        if not problems:
            # validate_assignment would run this validator again: set the field directly.
            self.__dict__["docker_arguments"] = checked
        return self

    @field_validator("node_selector")
    @classmethod
    def _node_labels(cls, selector: dict[str, str]) -> dict[str, str]:
        for key, value in selector.items():
            if not NODE_LABEL_KEY.match(key) or not NODE_LABEL_VALUE.match(value):
                raise ValueError(
                    f"node_selector {key!r}: a Kubernetes label ([prefix/]name = value; "
                    "letters, digits, - _ . and at most 63 each)"
                )
        return selector

    @model_validator(mode="after")
    def _node_selector_for_containers(self) -> Module:
        if self.node_selector and not self.image:
            raise ValueError("node_selector places a container's pod; a command has none")
        return self

    @model_validator(mode="after")
    def _persistence_folder_needs_persistence(self) -> Module:
        if self.persistence_folder_name and not self.persistence:
            raise ValueError("persistence_folder_name needs persistence: true")
        return self


class Notification(Strict):
    """Per rule, like mercure: a webhook and/or a mail on reception, completion, error, or when
    a module asks. Payload, subject and body are Jinja2 templates rendered in a sandbox."""

    # Shown as its scheme and host only, kept encrypted (see masked_webhook).
    webhook_url: Annotated[str, PlainSerializer(_webhook_shown, return_type=Any)] = Field(
        default="", pattern=r"^$|^https?://"
    )
    webhook_payload: str = ""
    # mercure's notification_payload_body: a template rendered first, its text offered to the
    # payload template as {{ body }} (JSON-escaped, to go inside a JSON string).
    webhook_payload_body: str = ""
    # A PEM file of the CAs that may sign the webhook server's certificate (a site's own CA);
    # empty: the global setting webhook_ca_bundle, then the system's trust store.
    webhook_ca_bundle: str = ""
    email: list[str] = Field(default_factory=list)
    email_subject: str = ""
    email_body: str = ""
    email_type: Literal["plain", "html"] = "plain"
    on_reception: bool = False
    on_completion: bool = False
    on_completion_on_request: bool = False
    on_error: bool = False

    @field_validator("webhook_url")
    @classmethod
    def _url_checked(cls, url: str, info: ValidationInfo) -> str:
        return checked_url(url, info)


Action = Literal["route", "process", "both", "discard", "notification"]


class Rule(Strict):
    rule: str = Field(min_length=1, description="Expression over the series' DICOM tags.")
    action: Action = "route"
    trigger: Literal["series", "study", "patient"] = "series"
    targets: list[Name] = Field(default_factory=list)
    modules: list[Name] = Field(default_factory=list)
    # Per module, in the order of `modules`: merged over the module's own settings.
    module_settings: list[dict[str, Any]] = Field(default_factory=list)
    retain_input_images: bool = False
    priority: Literal["normal", "urgent", "offpeak"] = "normal"
    disabled: bool = False
    fallback: bool = False
    series_complete_trigger: int | None = Field(default=None, ge=1)
    # Study completion: after a quiet period ("timeout"), or once the series named by
    # `required_series` have arrived ("received_series").
    study_trigger_condition: Literal["timeout", "received_series"] = "timeout"
    required_series: str = ""
    # What a study forced complete (study_forcecomplete_trigger) does when its required series
    # did not all arrive; empty: the global setting study_forcecomplete_action. Like mercure's
    # per-rule study_force_completion_action (the import sets mercure's default, discard).
    study_force_completion_action: Literal["proceed", "discard", "ignore"] | None = None
    # "text": the rule sees every tag as its DICOM text, as mercure's rules do (@SeriesNumber@
    # is '3', a multi-valued @ImageType@ is 'ORIGINAL\\PRIMARY'); rules imported from a
    # mercure.json say so, to keep their meaning. "typed": numbers and lists.
    tag_values: Literal["typed", "text"] = "typed"
    notification: Notification = Field(default_factory=Notification)
    # Like mercure: the last module's result.json may choose the targets ("__mercure_routing":
    # {"target": [...]}, {"discard": true} or {"use_alternate_target": true}), when allowed here.
    dynamic_routing: bool = False
    dynamic_routing_allowed_targets: list[Name] = Field(default_factory=list)
    alternate_target: Name | None = None
    comment: str = ""
    # Kept and shown, as in mercure: who to ask about the rule, and free-form labels.
    contact: str = ""
    tags: str = ""

    @field_serializer("module_settings")
    def _module_settings_shown(
        self, settings: list[dict[str, Any]], info: SerializationInfo
    ) -> Any:
        # Names that say they are secret; those a module marks are the Config's to mask.
        return [
            {
                key: shown_secret(value, info) if SECRET_NAME.search(key) else value
                for key, value in one.items()
            }
            for one in settings
        ]

    @field_validator("rule")
    @classmethod
    def _expression_parses(cls, value: str, info: ValidationInfo) -> str:
        try:
            parse_rule(value)
        except RuleError as exc:
            # A stored version may hold a rule an earlier release accepted (a regular
            # expression with lookahead, say): it still loads, and the router reports the
            # rule as an error each time it would evaluate it, until an admin changes it.
            if not (info.context or {}).get(STORED_KEY):
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("required_series")
    @classmethod
    def _series_condition_parses(cls, value: str) -> str:
        if value:
            parse_series_condition(value)
        return value

    @model_validator(mode="after")
    def _action_needs(self) -> Rule:
        if self.action in ("route", "both") and not self.targets:
            raise ValueError(f"action {self.action!r} needs at least one target")
        if self.action in ("process", "both") and not self.modules:
            raise ValueError(f"action {self.action!r} needs at least one module")
        if self.study_trigger_condition == "received_series" and not self.required_series:
            raise ValueError("study_trigger_condition 'received_series' needs required_series")
        if len(self.module_settings) > len(self.modules):
            raise ValueError("more module_settings than modules")
        return self


class SmtpSettings(Strict):
    """The mail server notifications are sent through."""

    host: str = ""
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str = ""
    password: Secret = SecretStr("")
    sender: str = "caduceus@localhost"

    # A login over an unencrypted connection only on purpose (a relay on this host).
    allow_login_in_clear: bool = False

    @model_validator(mode="after")
    def _no_login_in_clear(self) -> SmtpSettings:
        if self.security == "none" and self.username and not self.allow_login_in_clear:
            raise ValueError(
                "a login needs security 'starttls' or 'tls' (or allow_login_in_clear: true)"
            )
        return self


class Settings(Strict):
    """Orchestrator settings that live in the versioned configuration."""

    series_complete_trigger: int = Field(default=60, ge=1, description="seconds of quiet")
    study_complete_trigger: int = Field(default=900, ge=1)
    study_forcecomplete_trigger: int = Field(default=5400, ge=1)
    study_forcecomplete_action: Literal["proceed", "discard", "ignore"] = "proceed"
    patient_complete_trigger: int = Field(default=3600, ge=1)
    offpeak_start: time = time(22, 0)
    offpeak_end: time = time(6, 0)
    retry_delay: int = Field(default=900, ge=1, description="first retry after this many seconds")
    retry_max: int = Field(default=5, ge=0)
    retention: int = Field(default=3 * 86400, ge=0, description="keep finished work (seconds)")
    discard_retention: int = Field(default=3 * 86400, ge=0)
    error_retention: int = Field(default=14 * 86400, ge=0)
    # Emergency cleaning: past the high-water mark (percent of the disk used), finished work is
    # removed oldest first, retention or not, until use falls below the low-water mark.
    disk_high_water: int = Field(default=90, ge=1, le=100)
    disk_low_water: int = Field(default=80, ge=0, le=99)
    clean_offpeak_only: bool = False
    # Instances the receiver refused, kept in quarantine/ for inspection: removed after the
    # retention, and oldest first beyond either cap, whatever their age.
    quarantine_retention: int = Field(default=14 * 86400, ge=0, description="seconds")
    quarantine_max_mb: int = Field(default=1024, ge=0)
    quarantine_max_files: int = Field(default=10_000, ge=0)
    # Notifications carry patient names, IDs and accession numbers only when this is on.
    notifications_include_phi: bool = False
    # A PEM file of CAs for every rule's webhook without its own webhook_ca_bundle (mercure's
    # webhook_certificate_location); empty: the system's trust store.
    webhook_ca_bundle: str = ""
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    # How long the history (events, finished tasks, received series) is kept, in days.
    history_retention_days: int = Field(default=365, ge=1)
    # The zone the web interface shows times in (mercure's local_time, with its default);
    # stored times, logs and the API stay UTC.
    local_time: str = Field(
        default=DEFAULT_ZONE,
        max_length=64,
        description="time zone of the times the web shows (an IANA name: Europe/Berlin, UTC)",
    )

    @field_validator("local_time")
    @classmethod
    def _known_zone(cls, value: str, info: ValidationInfo) -> str:
        # A stored version still loads where the zone went missing (the web then shows UTC).
        if not (info.context or {}).get(STORED_KEY):
            zone_named(value)
        return value

    @model_validator(mode="after")
    def _water_marks(self) -> Settings:
        if self.disk_low_water >= self.disk_high_water:
            raise ValueError("disk_low_water must be below disk_high_water")
        return self


class Config(Strict):
    settings: Settings = Field(default_factory=Settings)
    rules: dict[Name, Rule] = Field(default_factory=dict)
    targets: dict[Name, Target] = Field(default_factory=dict)
    modules: dict[Name, Module] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _marked_settings_shown(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> Any:
        """A rule's settings for a module are secret where the module marks them so."""
        dumped = handler(self)
        if not isinstance(dumped, dict) or not isinstance(dumped.get("rules"), dict):
            return dumped
        for name, rule in self.rules.items():
            shown = dumped["rules"].get(name)
            if not isinstance(shown, dict):
                continue
            for index, module_name in enumerate(rule.modules[: len(rule.module_settings)]):
                module = self.modules.get(module_name)
                if module is None:
                    continue
                one = shown["module_settings"][index]
                for key in module.secret_settings:
                    if key in one and not SECRET_NAME.search(key):
                        one[key] = shown_secret(one[key], info)
        return dumped

    @model_validator(mode="after")
    def _references_exist(self) -> Config:
        problems = []
        for name, rule in self.rules.items():
            problems += [
                f"rule {name!r}: unknown target {t!r}"
                for t in rule.targets
                if t not in self.targets
            ]
            problems += [
                f"rule {name!r}: unknown module {m!r}"
                for m in rule.modules
                if m not in self.modules
            ]
            problems += [
                f"rule {name!r}: unknown target {t!r} for dynamic routing"
                for t in [*rule.dynamic_routing_allowed_targets, rule.alternate_target]
                if t is not None and t not in self.targets
            ]
        if problems:
            raise ValueError("; ".join(problems))
        return self


_SERIES_TOKEN = re.compile(r"\s*(?:(\()|(\))|(and\b)|(or\b)|(not\b)|'([^']*)'|\"([^\"]*)\")")


def parse_series_condition(text: str) -> Any:
    """Parse a required-series expression such as `'T1' and ('T2' or 'FLAIR')`.

    Returns a small tree: ("and"|"or", left, right), ("not", x) or a string to look for in the
    series descriptions. Raises ValueError with the position of the first error.
    """
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _SERIES_TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"unexpected text at position {pos + 1}: {text[pos : pos + 10]!r}")
        kind = next(i for i, group in enumerate(match.groups()) if group is not None)
        value = match.group(kind + 1)
        tokens.append(
            (("(", ")", "and", "or", "not", "str", "str")[kind], value, match.start(kind + 1))
        )
        pos = match.end()

    def expect_end(index: int) -> None:
        if index != len(tokens):
            raise ValueError(f"unexpected {tokens[index][1]!r} at position {tokens[index][2] + 1}")

    def parse_or(i: int) -> tuple[Any, int]:
        left, i = parse_and(i)
        while i < len(tokens) and tokens[i][0] == "or":
            right, i = parse_and(i + 1)
            left = ("or", left, right)
        return left, i

    def parse_and(i: int) -> tuple[Any, int]:
        left, i = parse_not(i)
        while i < len(tokens) and tokens[i][0] == "and":
            right, i = parse_not(i + 1)
            left = ("and", left, right)
        return left, i

    def parse_not(i: int) -> tuple[Any, int]:
        if i < len(tokens) and tokens[i][0] == "not":
            inner, i = parse_not(i + 1)
            return ("not", inner), i
        return parse_atom(i)

    def parse_atom(i: int) -> tuple[Any, int]:
        if i >= len(tokens):
            raise ValueError(f"expression ends too early at position {len(text) + 1}")
        kind, value, at = tokens[i]
        if kind == "str":
            return value, i + 1
        if kind == "(":
            inner, i = parse_or(i + 1)
            if i >= len(tokens) or tokens[i][0] != ")":
                raise ValueError(f"missing ')' for '(' at position {at + 1}")
            return inner, i + 1
        raise ValueError(f"unexpected {value!r} at position {at + 1}")

    tree, index = parse_or(0)
    expect_end(index)
    return tree


def series_condition_met(tree: Any, descriptions: list[str]) -> bool:
    """Whether the series descriptions satisfy a parsed required-series expression."""
    if isinstance(tree, str):
        needle = tree.lower()
        return any(needle in d.lower() for d in descriptions)
    if tree[0] == "not":
        return not series_condition_met(tree[1], descriptions)
    left = series_condition_met(tree[1], descriptions)
    right = series_condition_met(tree[2], descriptions)
    return (left and right) if tree[0] == "and" else (left or right)
