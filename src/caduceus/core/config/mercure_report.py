"""The report of a mercure import: what could not be carried over as it was, in three groups.

Its own module so that each part's mapping (settings and rules, targets, modules) writes to it
without importing the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    """What the import could not carry over as it was, each field once, in three groups."""

    # mercure machinery caduceus does without (folders, scan intervals, bookkeeper...).
    not_needed: list[str] = field(default_factory=list)
    # Features caduceus does not have; the line says why.
    not_supported: list[str] = field(default_factory=list)
    # Carried over, but as something else; the line says what it became.
    changed: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        """Every line, without its group."""
        return [*self.not_needed, *self.not_supported, *self.changed]

    def lines(self) -> list[str]:
        return (
            [f"not needed here: {line}" for line in self.not_needed]
            + [f"not supported: {line}" for line in self.not_supported]
            + [f"changed meaning: {line}" for line in self.changed]
        )
