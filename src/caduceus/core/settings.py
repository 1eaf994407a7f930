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

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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
        default=1024, ge=0, description="Refuse instances when free space falls below this."
    )
    receiver_allowed_calling_aets: list[str] = Field(
        default_factory=list,
        description="If non-empty, only these calling AE titles may associate. An entry "
        "'AET@host' also pins the peer address.",
    )
    receiver_check_called_aet: bool = True
    receiver_accept_private_sop_classes: bool = True
    receiver_network_timeout: float = Field(default=60.0, gt=0)
    dispatcher_lease_seconds: int = Field(
        default=600,
        ge=2,
        description="A dispatcher holds a task this long unless it renews; when it dies, "
        "another one takes the task over after this time.",
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

    @field_validator("ae_title")
    @classmethod
    def _ae_title_chars(cls, value: str) -> str:
        if not value.strip() or any(ord(c) < 0x20 or ord(c) > 0x7E or c == "\\" for c in value):
            raise ValueError("an AE title is 1-16 printable ASCII characters without backslash")
        return value.strip()

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
