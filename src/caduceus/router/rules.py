"""Which configured rules match a set of tags, with rule parsing done once per rule text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from caduceus.core.config.models import Config
from caduceus.core.rules import Rule as Expression
from caduceus.core.rules import parse_rule


@lru_cache(maxsize=1024)
def compiled(text: str) -> Expression:
    return parse_rule(text)


@dataclass(frozen=True)
class Matches:
    by_level: dict[str, list[str]]  # level -> names of matching rules, config order
    fallback: bool  # the matches are fallback rules (no other rule matched)

    @property
    def any(self) -> bool:
        return any(self.by_level.values())


def match(config: Config, tags: Mapping[str, Any]) -> Matches:
    """Enabled rules that match; fallback rules only when no other rule does."""
    regular: dict[str, list[str]] = {"series": [], "study": [], "patient": []}
    fallback: dict[str, list[str]] = {"series": [], "study": [], "patient": []}
    for name, rule in config.rules.items():
        if rule.disabled or not compiled(rule.rule).evaluate(tags):
            continue
        (fallback if rule.fallback else regular)[rule.trigger].append(name)
    if any(regular.values()):
        return Matches(regular, False)
    return Matches(fallback, True)
