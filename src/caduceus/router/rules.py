"""Which configured rules match a set of tags, with rule parsing done once per rule text.

A rule that goes beyond its budget (core/rules/budget.py) has no answer. It counts as not
matching, as a rule whose data cannot be used does, and is reported in Matches.errors so the
router records it as an event on the group: the series is handled by the other rules (a
fallback rule included) or discarded with the reason, never dropped unseen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from caduceus.core.config.models import Config
from caduceus.core.rules import Budget, EvaluationError, RuleError, parse_rule
from caduceus.core.rules import Rule as Expression
from caduceus.core.rules.text_values import as_text


@lru_cache(maxsize=1024)
def compiled(text: str) -> Expression:
    return parse_rule(text)


@dataclass(frozen=True)
class Matches:
    by_level: dict[str, list[str]]  # level -> names of matching rules, config order
    fallback: bool  # the matches are fallback rules (no other rule matched)
    errors: dict[str, str] = field(default_factory=dict)  # rule name -> why it has no answer
    # The discard rule that matched: the series is discarded and no other rule applies to it.
    discarded_by: str | None = None

    @property
    def any(self) -> bool:
        return any(self.by_level.values())


def match(config: Config, tags: Mapping[str, Any], budget: Budget) -> Matches:
    """Enabled rules that match; fallback rules only when no other rule does. As in mercure,
    a matching discard rule (the first in the configuration's order) discards the series:
    it is then the only match, at series level whatever its trigger, so that the series
    reaches no study or patient rule either."""
    errors: dict[str, str] = {}
    discard = discarding_rule(config, tags, budget, errors)
    if discard is not None:
        return Matches({"series": [discard], "study": [], "patient": []}, False, errors, discard)
    regular: dict[str, list[str]] = {"series": [], "study": [], "patient": []}
    fallback: dict[str, list[str]] = {"series": [], "study": [], "patient": []}
    for name, rule in config.rules.items():
        if rule.action == "discard" and not rule.fallback:
            continue  # evaluated above
        if rule.disabled or not matches_any(config, name, [tags], budget, errors):
            continue
        (fallback if rule.fallback else regular)[rule.trigger].append(name)
    if any(regular.values()):
        return Matches(regular, False, errors)
    for names in fallback.values():
        for name in names:
            if config.rules[name].action == "discard":
                levels = {"series": [name], "study": [], "patient": []}
                return Matches(levels, True, errors, name)
    return Matches(fallback, True, errors)


def discarding_rule(
    config: Config, tags: Mapping[str, Any], budget: Budget, errors: dict[str, str]
) -> str | None:
    """The first enabled, non-fallback discard rule that the tags of one series match."""
    for name, rule in config.rules.items():
        if rule.action != "discard" or rule.disabled or rule.fallback:
            continue
        if matches_any(config, name, [tags], budget, errors):
            return name
    return None


def matches_any(
    config: Config,
    name: str,
    tags_per_series: Iterable[Mapping[str, Any]],
    budget: Budget,
    errors: dict[str, str],
) -> bool:
    """Whether the rule matches any of the series' tags; an evaluation error (kept in errors,
    the first one per rule) counts as no match for that series, and so does a rule that no
    longer parses."""
    try:
        expression = compiled(config.rules[name].rule)
    except RuleError as exc:  # stored by an earlier release that accepted it
        errors.setdefault(name, f"the rule is no longer valid: {exc}")
        return False
    as_mercure = config.rules[name].tag_values == "text"
    for tags in tags_per_series:
        try:
            if expression.evaluate(as_text(tags) if as_mercure else tags, budget):
                return True
        except EvaluationError as exc:
            errors.setdefault(name, str(exc))
    return False
