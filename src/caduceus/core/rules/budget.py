"""How much one evaluation of a rule may cost, wherever it runs (router, web, command line).

Every single operation of a rule is bounded by the sizes of what it works on (see the
evaluator and patterns modules); the budget bounds their sum. A rule that goes beyond it is
neither true nor false: evaluating it raises EvaluationError, which the caller reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from caduceus.core.settings import Settings

# The clock is read every this many steps, and before each regular-expression search: reading
# a thread's CPU time costs about a microsecond, a step a fraction of that.
_CLOCK_EVERY = 16


class EvaluationError(Exception):
    """A rule stopped before it had an answer, because it went beyond its budget."""


@dataclass(frozen=True)
class Budget:
    cpu_seconds: float = 0.5  # CPU time of one evaluation (the evaluating thread's)
    steps: int = 10_000  # parts of the rule evaluated, plus values of tags gone through
    match_chars: int = 10_000  # longest text match() searches; a longer one does not match
    text_chars: int = 100_000  # longest text one operation may make
    items: int = 10_000  # most items a list, set, dict or comprehension may hold
    produced: int = 1_000_000  # characters and items all operations together may make

    @classmethod
    def of(cls, settings: Settings) -> Budget:
        return cls(
            cpu_seconds=settings.rules_cpu_seconds,
            steps=settings.rules_max_steps,
            match_chars=settings.rules_match_max_chars,
            text_chars=settings.rules_max_text,
            items=settings.rules_max_items,
            produced=settings.rules_max_produced,
        )


class Meter:
    """The cost of one evaluation so far; raises EvaluationError when it goes beyond budget."""

    __slots__ = ("_budget", "_clock_at", "_deadline", "produced", "steps")

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        # CPU time, not wall-clock time: a busy machine must not turn a cheap rule into an error.
        self._deadline = time.thread_time() + budget.cpu_seconds
        self._clock_at = _CLOCK_EVERY
        self.steps = 0
        self.produced = 0

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > self._budget.steps:
            raise EvaluationError(
                f"the rule was stopped after {self._budget.steps} steps (parts of the rule and "
                "values of tags gone through; setting CADUCEUS_RULES_MAX_STEPS)"
            )
        if self.steps >= self._clock_at:
            self._clock_at = self.steps + _CLOCK_EVERY
            self.check_clock()

    def check_clock(self) -> None:
        if time.thread_time() > self._deadline:
            raise EvaluationError(
                f"the rule was stopped after {self._budget.cpu_seconds:g} s of CPU time "
                "(setting CADUCEUS_RULES_CPU_SECONDS)"
            )

    def text(self, size: int) -> None:
        """A text of size characters is about to be made."""
        self._within(size, self._budget.text_chars, "a text of {} characters", "TEXT")

    def items(self, count: int) -> None:
        """A list, set, dict or tuple of count items is about to be made."""
        self._within(count, self._budget.items, "a collection of {} items", "ITEMS")

    def _within(self, size: int, most: int, what: str, setting: str) -> None:
        if size > most:
            raise EvaluationError(
                f"the rule would make {what.format(size)}, more than {most} "
                f"(setting CADUCEUS_RULES_MAX_{setting})"
            )
        self.produce(size)

    def produce(self, size: int) -> None:
        self.produced += size
        if self.produced > self._budget.produced:
            raise EvaluationError(
                f"the rule made more than {self._budget.produced} characters and items in all "
                "(setting CADUCEUS_RULES_MAX_PRODUCED)"
            )
