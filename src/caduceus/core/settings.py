"""Bootstrap settings: where data lives, which database, which ports.

They come, highest priority first, from environment variables (``CADUCEUS_*``), then from a TOML
settings file (``CADUCEUS_SETTINGS_FILE``, or ``caduceus.toml`` inside ``CADUCEUS_HOME``), then
from the embedded defaults. Everything else (rules, targets, ...) lives in the database.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The disk reserve cannot go below this: with no room left, SQLite and the router's task.json
# writes fail, nothing moves, and the cleaner finds nothing finished it may remove.
DISK_RESERVE_FLOOR_MB = 32


def _settings_file() -> Path:
    explicit = os.environ.get("CADUCEUS_SETTINGS_FILE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CADUCEUS_HOME", "caduceus-data")) / "caduceus.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADUCEUS_", extra="forbid")

    home: Path = Field(default=Path("caduceus-data"), description="Data root and default DB.")
    database_url: str = Field(default="", description="SQLAlchemy URL; default SQLite in home.")

    ae_title: str = Field(default="CADUCEUS", min_length=1, max_length=16)
    dicom_host: str = "0.0.0.0"  # noqa: S104 - a DICOM receiver listens on the network
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    web_port: int = Field(default=8000, ge=1, le=65535)

    receiver_workers: int = Field(
        default=0, ge=0, le=64, description="Receiver processes; 0 means one per CPU core."
    )
    receiver_max_pdu: int = Field(default=4 * 1024 * 1024, ge=0)
    receiver_disk_reserve_mb: int = Field(
        default=1024,
        description="Refuse instances when free space falls below this (MB, at least "
        f"{DISK_RESERVE_FLOOR_MB}): the space below it is kept for the database and the "
        "pipeline's own files, so that work already received can still be delivered and "
        "cleaned. The cleaner frees delivered work when free space falls below twice this.",
    )
    receiver_allowed_calling_aets: list[str] = Field(
        default_factory=list,
        description="If non-empty, only these calling AE titles may associate. An entry "
        "'AET@host' also pins the peer address.",
    )
    receiver_check_called_aet: bool = True
    receiver_accept_private_sop_classes: bool = True
    receiver_network_timeout: float = Field(default=60.0, gt=0)
    receiver_max_inflated_mb: int = Field(
        default=4096,
        ge=1,
        description="Refuse (A701) a deflated dataset that inflates to more than this; it is "
        "inflated into a temporary file for the check, never into memory.",
    )
    receiver_association_request_timeout: float = Field(
        default=30.0,
        gt=0,
        description="ARTIM: seconds a new connection has to send its whole association "
        "request before it is closed.",
    )
    receiver_max_connections: int = Field(
        default=512,
        ge=1,
        description="Connections the receiver holds at once, over all its workers; more are "
        "closed at once.",
    )
    receiver_max_connections_per_address: int = Field(
        default=16,
        ge=1,
        description="Connections one peer address may hold at once, over all workers; more "
        "are closed at once. A worker serves its share of receiver_max_connections (at least "
        "twice this) before it answers busy, so one address cannot make a worker busy.",
    )
    receiver_summary_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds over which connections dropped before associating, and repeated "
        "rejections, are summarised into one event per peer address.",
    )
    receiver_accept_compressed_images: bool = Field(
        default=True,
        description="Accept compressed transfer syntaxes (JPEG, JPEG 2000, JPEG-LS, RLE...). "
        "Off (mercure's accept_compressed_images: false): only uncompressed ones (implicit and "
        "explicit VR little endian, explicit big endian, deflated) are accepted, so modules get "
        "raw pixels and a sender must decompress or fail. On by default, so a site keeps "
        "receiving what its modalities send.",
    )
    receiver_tls_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port for DICOM over TLS (a second listening socket); 0: off.",
    )
    receiver_tls_certificate: Path | None = Field(
        default=None, description="PEM certificate (chain) of the TLS port."
    )
    receiver_tls_key: Path | None = Field(
        default=None, description="PEM private key of the TLS port (unencrypted)."
    )
    receiver_tls_ca_certificate: Path | None = Field(
        default=None,
        description="If set, a TLS peer must present a client certificate signed by a CA in "
        "this PEM file; if not, client certificates are not asked for.",
    )
    dispatcher_lease_seconds: int = Field(
        default=600,
        ge=2,
        description="A dispatcher holds a task this long unless it renews; when it dies, "
        "another one takes the task over after this time.",
    )
    rules_cpu_seconds: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="CPU time one evaluation of a rule may take (router, web test, command "
        "line); a rule that needs more is an evaluation error, not a match.",
    )
    rules_max_steps: int = Field(
        default=10_000,
        ge=100,
        le=10_000_000,
        description="Steps one evaluation of a rule may take: each part of the rule, each "
        "value of a multi-valued tag gone through; beyond it, an evaluation error.",
    )
    rules_match_max_chars: int = Field(
        default=10_000,
        ge=64,
        le=100_000,
        description="Longest text match() searches (the router reads texts up to 4,096 "
        "characters); a longer one does not match.",
    )
    rules_max_text: int = Field(
        default=100_000,
        ge=1_000,
        le=10_000_000,
        description="Longest text one operation of a rule may make (repetition, replace(), "
        "join(), format(), str() of a list...); beyond it, an evaluation error.",
    )
    rules_max_items: int = Field(
        default=10_000,
        ge=100,
        le=1_000_000,
        description="Most items a list, set, dict, tuple or comprehension made by a rule may "
        "hold (list(range(...)), repetition, sorted()...); beyond it, an evaluation error.",
    )
    rules_max_produced: int = Field(
        default=1_000_000,
        ge=10_000,
        le=100_000_000,
        description="Characters and items all operations of one evaluation may make "
        "together, which bounds its memory; beyond it, an evaluation error.",
    )
    web_rule_tests_parallel: int = Field(
        default=2,
        ge=1,
        le=32,
        description="Rule tests (POST /api/rules/test) the web evaluates at once, off its "
        "event loop; as many more may wait, further ones get 429.",
    )
    processor_docker_url: str = Field(
        default="",
        description="Docker Engine API of the container engine (Docker or Podman), e.g. "
        "unix:///run/podman/podman.sock; empty: DOCKER_HOST or the engine's default socket.",
    )
    processor_allow_root: bool = Field(
        default=False, description="Let modules that ask for it run as root in their container."
    )
    processor_volume_root: Path | None = Field(
        default=None, description="The only folder whose subfolders modules may mount."
    )
    processor_parallel: int = Field(default=1, ge=1, le=64, description="Modules run at once.")
    processor_sandbox_paths: list[Path] = Field(
        default_factory=list,
        description="Folders a sandboxed local command may read besides the system (/usr...): "
        "where module programs and their interpreters live, e.g. /opt/modules.",
    )
    processor_lease_seconds: int = Field(default=600, ge=2)
    queue_idle_wait_seconds: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="How long an idle dispatcher or processor worker waits before it asks the "
        "queue again: how soon a new task is taken up, against a few queries a second per "
        "worker on the database.",
    )
    processor_runner: Literal["container", "kubernetes"] = Field(
        default="container",
        description="Where modules with an image run: the container engine, or a Kubernetes "
        "Job each (docs/kubernetes.md). Modules with a command always run locally.",
    )
    processor_kubernetes_namespace: str = Field(
        default="", description="Namespace of the module Jobs; empty: the processor's own."
    )
    processor_kubernetes_data_claim: str = Field(
        default="",
        description="PersistentVolumeClaim of the shared data root, mounted by the processor "
        "at CADUCEUS_HOME and by each module Job.",
    )
    processor_kubernetes_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        default="IfNotPresent",
        description="imagePullPolicy of module Jobs (a module with pull: always gets Always).",
    )
    processor_kubernetes_job_ttl_seconds: int = Field(
        default=3600,
        ge=0,
        description="The cluster removes a finished module Job after this long, should its "
        "processor die before deleting it.",
    )
    web_host: str = "0.0.0.0"  # noqa: S104 - the interface is for the network
    web_secure_cookies: bool = Field(
        default=False,
        description="Mark the session cookie Secure even on plain HTTP (set it behind an HTTPS "
        "proxy); requests that arrive over HTTPS always get it.",
    )
    web_trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; empty: none, the socket's peer is the client.",
    )
    web_login_failures_per_address: int = Field(
        default=10,
        ge=1,
        description="Failed logins from one address (any user names; IPv6 per /64) within "
        "the login window, after which its logins answer 429.",
    )
    web_login_failures_per_name: int = Field(
        default=20,
        ge=1,
        description="Failed logins for one user name from anywhere within the window, after "
        "which that name answers 429 to addresses that are failing themselves.",
    )
    web_login_concurrent_per_address: int = Field(
        default=2,
        ge=1,
        description="Logins from one address checked at once; more answer 429 at once.",
    )
    web_login_window_seconds: int = Field(
        default=300, ge=1, description="How long a failed login (or password check) counts."
    )
    web_password_change_failures: int = Field(
        default=5,
        ge=1,
        description="Wrong current passwords on a password change per user within the "
        "window, after which the change answers 429.",
    )
    web_throttle_max_entries: int = Field(
        default=100_000,
        ge=100,
        description="Addresses and user names the login throttle remembers at most; beyond, "
        "those that failed longest ago are forgotten.",
    )
    web_password_workers: int = Field(
        default=2, ge=1, le=64, description="Password hashes (argon2, 64 MiB each) at once."
    )
    web_password_queue: int = Field(
        default=32,
        ge=0,
        description="Logins and password changes that may wait for a hash worker; more "
        "answer 503 at once.",
    )
    web_anonymous_body_bytes: int = Field(
        default=8192,
        ge=1024,
        description="Largest request body read from a sender that is not a known user, and "
        "from every login.",
    )
    secrets_key_file: Path | None = Field(
        default=None,
        description="The key that encrypts the configuration's secrets in the database; "
        "empty: secret.key in CADUCEUS_HOME, created at first start. Keep it apart from the "
        "database's backups; every machine sharing the database needs the same file.",
    )
    file_group_access: bool = Field(
        default=False,
        description="Let caduceus's group read the data root, the database, the logs and "
        "folder-target outputs (0750/0640 instead of 0700/0600).",
    )
    fsync: bool = Field(
        default=True,
        description="Flush each received file, its folder and each database commit to disk "
        "before acknowledging. Turn off only where losing recent data on power loss is fine.",
    )
    database_busy_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How long a statement waits for SQLite's lock before it fails (and the "
        "service retries its pass); PostgreSQL ignores it.",
    )
    lease_owner_silent_seconds: int = Field(
        default=60,
        ge=15,
        description="A task leased by a dispatcher or processor on another host whose heartbeat "
        "has been silent this long (on the database's clock) is taken over at once, not after "
        "its lease, by a worker that has itself reached the database this long without a "
        "break. One on this host is taken over as soon as its process is gone.",
    )
    cleaner_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds between the cleaner's passes: how soon a full disk is noticed and "
        "an expired folder removed.",
    )
    notifier_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description="Seconds between the notifier's passes: how soon an event becomes a "
        "notification and a due one is sent.",
    )
    supervisor_start_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="`caduceus run` restarts a service that ran at least this long at once; "
        "one that dies sooner is failing at start and restarted ever more slowly (to 30 s).",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae_title_chars(cls, value: str) -> str:
        if not value.strip() or any(ord(c) < 0x20 or ord(c) > 0x7E or c == "\\" for c in value):
            raise ValueError("an AE title is 1-16 printable ASCII characters without backslash")
        return value.strip()

    @field_validator("receiver_disk_reserve_mb")
    @classmethod
    def _reserve_floor(cls, value: int) -> int:
        if value < DISK_RESERVE_FLOOR_MB:
            raise ValueError(
                f"receiver_disk_reserve_mb must be at least {DISK_RESERVE_FLOOR_MB} (MB): the "
                "database and the pipeline need that room to deliver what was received and "
                "free its space on a full disk"
            )
        return value

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        if self.receiver_tls_port:
            if not (self.receiver_tls_certificate and self.receiver_tls_key):
                raise ValueError(
                    "receiver_tls_port needs receiver_tls_certificate and receiver_tls_key"
                )
            if self.receiver_tls_port == self.dicom_port:
                raise ValueError("receiver_tls_port must differ from dicom_port")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_settings_file()),
        )

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Users write the libpq form; SQLAlchemy needs to be told to use psycopg 3.
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            return url
        return f"sqlite:///{(self.home / 'caduceus.db').resolve()}"

    @property
    def secrets_key_path(self) -> Path:
        return self.secrets_key_file or self.home / "secret.key"

    @property
    def folder_mode(self) -> int:
        return 0o750 if self.file_group_access else 0o700

    @property
    def file_mode(self) -> int:
        return 0o640 if self.file_group_access else 0o600

    @property
    def effective_receiver_workers(self) -> int:
        return self.receiver_workers or os.cpu_count() or 1

    def public_dict(self) -> dict[str, Any]:
        """The settings as shown to a user: the database password is masked."""
        data = self.model_dump(mode="json")
        data["database_url"] = _mask_password(self.resolved_database_url)
        return data


def _mask_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
