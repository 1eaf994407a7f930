"""Rendering a rule's notification templates in a Jinja2 sandbox.

Templates come from the configuration; what they are rendered with comes from the database.
The sandbox refuses Python internals (``{{ ''.__class__ }}`` fails), the context cannot be
changed from a template, and rendering is bounded: a huge power, a huge repetition, a loop over
``range`` past the time limit or an output past the size limit ends the rendering with a
`TemplateProblem`. Every problem is a `TemplateProblem`, whose message names no value of the
context, so it can be recorded as the notification's reason.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from markupsafe import Markup

MAX_OUTPUT = 256 * 1024  # characters
MAX_SECONDS = 2.0
MAX_INT_BITS = 4096  # the largest number a template may compute
MAX_SUBJECT = 250

# mercure's macros, from before it used Jinja2.
_MACROS = {"@rule@": "{{ rule }}", "@task_id@": "{{ task_id }}", "@event@": "{{ event }}"}

DEFAULT_SUBJECT = "[caduceus] Rule {{ rule }}: {{ event }}"
DEFAULT_BODY = (
    "Rule {{ rule }}: {{ event }}\n"
    "Task: {{ task_id }} ({{ task_state }})\n"
    "{% if phi_included %}Patient: {{ patient_name }}, MRN {{ mrn }}, ACC {{ acc }}\n{% endif %}"
    "{% if details %}\nDetails:\n{{ details }}\n{% endif %}"
)
DEFAULT_PAYLOAD_KEYS = ("event", "trigger", "rule", "task_id", "task_state", "details")


class TemplateProblem(Exception):
    """A template that cannot be rendered, or whose result is unusable: not worth a retry."""


class _Limits:
    def __init__(self) -> None:
        self.deadline = time.monotonic() + MAX_SECONDS

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateProblem(f"rendering took longer than {MAX_SECONDS:g} s")


class _TimedRange:
    """`range` for templates: capped like the sandbox's, and checking the time limit."""

    def __init__(self, limits: _Limits, numbers: range) -> None:
        self.limits = limits
        self.numbers = numbers

    def __iter__(self) -> Iterator[int]:
        for number in self.numbers:
            self.limits.check()
            yield number

    def __len__(self) -> int:
        return len(self.numbers)


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, limits: _Limits, **options: Any) -> None:
        super().__init__(undefined=StrictUndefined, keep_trailing_newline=True, **options)
        self.limits = limits
        self.globals["range"] = lambda *args: _TimedRange(limits, safe_range(*args))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.limits.check()
        if operator == "**" and _number(left) and _number(right):
            bits = max(abs(int(left)).bit_length(), 1) * abs(int(right))
            if bits > MAX_INT_BITS:
                raise TemplateProblem("a power in the template is too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                repeated = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if repeated and len(seq) * times > MAX_OUTPUT:
                    raise TemplateProblem("a repetition in the template is too large")
            bits = 0
            if _number(left) and _number(right):
                bits = abs(int(left)).bit_length() + abs(int(right)).bit_length()
            if bits > MAX_INT_BITS:
                raise TemplateProblem("a product in the template is too large")
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.limits.check()
        return super().call(context, obj, *args, **kwargs)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_text(value: Any) -> Any:
    """In a JSON payload, `"{{ name }}"` stays valid JSON whatever the name holds."""
    if isinstance(value, Markup):  # the output of |tojson: JSON already
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)[1:-1]
    return value


def _render(source: str, context: dict[str, Any], **options: Any) -> str:
    for macro, expression in _MACROS.items():
        source = source.replace(macro, expression)
    limits = _Limits()
    environment = _Sandbox(limits, **options)
    try:
        template = environment.from_string(source)
        parts: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateProblem(f"the result is longer than {MAX_OUTPUT} characters")
            limits.check()
            parts.append(chunk)
    except TemplateProblem:
        raise
    except TemplateError as exc:  # syntax errors, undefined names, sandbox refusals
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise TemplateProblem(f"{type(exc).__name__}{where}: {exc.message or ''}") from None
    except RecursionError:
        raise TemplateProblem("the template recurses too deeply") from None
    except Exception as exc:  # a division by zero, a bad format string, ...
        raise TemplateProblem(f"{type(exc).__name__} while rendering") from None
    return "".join(parts)


def render_text(source: str, context: dict[str, Any]) -> str:
    """A plain-text mail body."""
    return _render(source or DEFAULT_BODY, context)


def render_html(source: str, context: dict[str, Any]) -> str:
    """An HTML mail body: every value is escaped, so a patient name cannot inject markup."""
    return _render(source or DEFAULT_BODY.replace("\n", "<br>\n"), context, autoescape=True)


def render_subject(source: str, context: dict[str, Any]) -> str:
    """A subject: one line, whatever the template or the values hold."""
    text = _render(source or DEFAULT_SUBJECT, context)
    return re.sub(r"\s+", " ", text).strip()[:MAX_SUBJECT]


def render_payload(source: str, context: dict[str, Any]) -> bytes:
    """A webhook's JSON body: the rendered template, checked to be JSON.

    Like mercure, a payload that is the inside of an object (`"text": "..."`, without the
    braces) is accepted too. An empty template sends the basic fields.
    """
    if not source.strip():
        document: Any = {key: context.get(key, "") for key in DEFAULT_PAYLOAD_KEYS}
        return json.dumps(document, ensure_ascii=False).encode()
    text = _render(source, context, finalize=_json_text)
    document = _parse_json(text)
    return json.dumps(document, ensure_ascii=False).encode()


def _parse_json(text: str) -> Any:
    attempts: list[Callable[[], Any]] = [
        lambda: json.loads(text),
        lambda: json.loads("{" + text + "}"),
    ]
    first: json.JSONDecodeError | None = None
    for attempt in attempts:
        try:
            return attempt()
        except json.JSONDecodeError as exc:
            first = first or exc
    assert first is not None
    # The position, never the text: the payload may hold patient data.
    raise TemplateProblem(
        f"the payload is not valid JSON: {first.msg} at line {first.lineno} column {first.colno}"
    )
