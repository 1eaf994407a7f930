"""Configuration files: our own format (YAML or JSON), and mercure's mercure.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from caduceus.core.config.docker_arguments import ALLOW_ROOT_KEY
from caduceus.core.config.mercure_import import from_mercure, looks_like_mercure
from caduceus.core.config.models import Config


class ConfigFileError(ValueError):
    """A file that cannot be used; the message names the rule, target or field at fault."""


@dataclass
class Loaded:
    config: Config
    source_format: str  # "caduceus" or "mercure"
    not_mapped: list[str] = field(default_factory=list)


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigFileError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from exc


def parse_text(text: str, origin: str = "the file") -> Any:
    """A YAML (or JSON) text as plain values; a mapping at the top, or ConfigFileError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{origin} is not valid YAML or JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigFileError(f"{origin}: the top level must be a mapping")
    return data


def describe(error: ValidationError) -> str:
    """One line per problem, each naming where it is (rules -> NAME -> field)."""
    lines = []
    for problem in error.errors():
        where = " -> ".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"{where}: {problem['msg']}")
    return "\n".join(lines)


def parse(data: Any, origin: str = "configuration", *, allow_root_modules: bool = False) -> Loaded:
    """The configuration in data (ours, or a mercure.json). allow_root_modules is the host's
    CADUCEUS_PROCESSOR_ALLOW_ROOT: without it a module's root-only docker_arguments are
    refused here, when the configuration is saved, and dropped (reported) from an import."""
    if not isinstance(data, dict):
        raise ConfigFileError(f"{origin}: the top level must be a mapping")
    source_format, not_mapped = "caduceus", list[str]()
    if looks_like_mercure(data):
        data, report = from_mercure(data, allow_root_modules=allow_root_modules)
        not_mapped = report.lines()
        source_format = "mercure"
    try:
        config = Config.model_validate(data, context={ALLOW_ROOT_KEY: allow_root_modules})
    except ValidationError as exc:
        raise ConfigFileError(f"{origin} is not valid:\n{describe(exc)}") from exc
    return Loaded(config, source_format, not_mapped)


def load(path: Path, *, allow_root_modules: bool = False) -> Loaded:
    return parse(_read(path), str(path), allow_root_modules=allow_root_modules)


def dump(config: Config, fmt: str = "yaml", with_secrets: bool = False) -> str:
    """The configuration as a file; secrets are masked unless asked for."""
    content = config.model_dump(mode="json", context={"reveal_secrets": with_secrets})
    if fmt == "json":
        return json.dumps(content, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(content, sort_keys=False, allow_unicode=True)
