"""Evaluating checked routing rules against the tags of a series.

The evaluator walks the tree that the parser checked; it never compiles or executes code. Tag
values are first turned into plain str, int, float and list objects, so that no user-defined
method (a pydicom value's __eq__, say) can run while a rule is evaluated, and every operation
that can make values larger is bounded before it allocates anything. A Budget bounds the whole
evaluation: its steps (each part of the rule, each value of a tag gone through) and its CPU
time; beyond it, evaluate() raises EvaluationError instead of answering.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from caduceus.core.rules.budget import Budget, Meter
from caduceus.core.rules.parser import FUNCTIONS, METHODS, parse
from caduceus.core.rules.patterns import PatternError, compile_pattern

MAX_TEXT = 100_000  # characters in a string built by + * or replace()
MAX_ITEMS = 10_000  # items in a list built by + or *
MAX_INT_BITS = 4_096  # about 1,200 digits: far beyond any DICOM number
MAX_NUMBER_TEXT = 100  # characters given to int() or float()
DEFAULT_BUDGET = Budget()


class _MissingTag(Exception):
    """A tag the rule reads is absent: the whole rule is False."""


class _DataError(Exception):
    """The values cannot be used as the rule asks: the whole rule is False."""


# Errors that the data, not the rule, can cause; the rule is then False.
_DATA_ERRORS = (
    _MissingTag,
    _DataError,
    ValueError,
    TypeError,
    ArithmeticError,
    LookupError,
    PatternError,
    RecursionError,
)

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], object]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda item, container: item in container,
    ast.NotIn: lambda item, container: item not in container,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], object]] = {
    ast.Not: operator.not_,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


class Rule:
    """A checked routing rule; build one with parse_rule()."""

    __slots__ = ("_keyword_order", "_tree", "keywords", "text")

    text: str
    keywords: frozenset[str]

    def __init__(self, text: str) -> None:
        parsed = parse(text)
        self.text = text
        self.keywords = frozenset(parsed.keywords)
        self._keyword_order = parsed.keywords
        self._tree = parsed.tree

    def evaluate(self, tags: Mapping[str, object], budget: Budget = DEFAULT_BUDGET) -> bool:
        """Whether the series matches; missing tags and unusable values make it False.

        Raises EvaluationError when the rule goes beyond its budget: it has no answer then.
        """
        return self._evaluate(_Run(tags, budget))

    def explain(
        self, tags: Mapping[str, object], budget: Budget = DEFAULT_BUDGET
    ) -> tuple[bool, dict[str, object]]:
        """The result and the value of every tag the rule reads (None when missing)."""
        run = _Run(tags, budget)
        result = self._evaluate(run)
        return result, {kw: run.tag(kw, missing_ok=True) for kw in self._keyword_order}

    def _evaluate(self, run: _Run) -> bool:
        try:
            return bool(_value(self._tree, run))
        except _DATA_ERRORS:
            return False

    def __repr__(self) -> str:
        return f"Rule({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rule) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def parse_rule(text: str) -> Rule:
    """A checked rule, or RuleError with the position of the problem in text."""
    return Rule(text)


class _Run:
    """One evaluation: the tags it reads and what it has cost so far."""

    __slots__ = ("budget", "meter", "tags")

    def __init__(self, tags: Mapping[str, object], budget: Budget) -> None:
        self.tags = tags
        self.budget = budget
        self.meter = Meter(budget)

    def tag(self, keyword: str, *, missing_ok: bool = False) -> object:
        value = self.tags.get(keyword)
        if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
            self.meter.step(len(value))  # each value of a multi-valued tag is converted
        plain = _plain(value)
        if plain is None and not missing_ok:
            raise _MissingTag(keyword)
        return plain


def _plain(value: object, *, item: bool = False) -> object:
    """The value as built-in str, int, float, bool, None, or a list of those."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes | bytearray):
        return value.decode("latin-1")
    if isinstance(value, Sequence) and not item:  # pydicom's MultiValue is not a list
        return [_plain(each, item=True) for each in value]
    # PersonName and other value types compare as their text; so do lists within lists,
    # since multi-valued DICOM attributes are flat.
    return str(value)


def _value(node: ast.expr, run: _Run) -> object:
    run.meter.step()
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Attribute):  # the checker allows only tags.Keyword here
        return run.tag(node.attr)
    if isinstance(node, ast.BoolOp):
        # Python's semantics: the first operand that decides, so unread tags do not matter.
        stop_when = isinstance(node.op, ast.Or)
        result: object = None
        for operand in node.values:
            result = _value(operand, run)
            if bool(result) is stop_when:
                break
        return result
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_value(node.operand, run))
    if isinstance(node, ast.BinOp):
        return _arithmetic(node.op, _value(node.left, run), _value(node.right, run))
    if isinstance(node, ast.Compare):
        left = _value(node.left, run)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _value(comparator, run)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        return _call(node, run)
    if isinstance(node, ast.List):
        return [_value(item, run) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(item, run) for item in node.elts)
    if isinstance(node, ast.Subscript):
        container, index = _value(node.value, run), _value(node.slice, run)
        if not isinstance(container, str | list | tuple) or type(index) is not int:
            raise _DataError("only a text or list can be indexed, and only by an integer")
        return container[index]
    raise AssertionError(f"the checker let through {type(node).__name__}")


def _call(node: ast.Call, run: _Run) -> object:
    args = [_value(arg, run) for arg in node.args]
    if isinstance(node.func, ast.Name):
        if node.func.id in _SEARCHES:
            return _SEARCHES[node.func.id](run, *args)
        return _FUNCTIONS[node.func.id](*args)
    assert isinstance(node.func, ast.Attribute)
    receiver = _value(node.func.value, run)
    if not isinstance(receiver, str):
        raise _DataError(f".{node.func.attr}() needs a text")
    return _METHODS[node.func.attr](receiver, *args)


def _arithmetic(op: ast.operator, left: object, right: object) -> object:
    numbers = _is_number(left) and _is_number(right)
    if isinstance(op, ast.Add):
        if numbers:
            return _bounded(left + right)  # type: ignore[operator]
        if isinstance(left, str) and isinstance(right, str):
            _limit(len(left) + len(right), MAX_TEXT)
            return left + right
        if isinstance(left, list | tuple) and type(left) is type(right):
            assert isinstance(right, list | tuple)
            _limit(len(_flat(left)) + len(_flat(right)), MAX_ITEMS)
            return left + right  # type: ignore[operator]
        raise _DataError("+ needs two numbers, two texts or two lists")
    if isinstance(op, ast.Mult):
        if numbers:
            if isinstance(left, int) and isinstance(right, int):
                _limit(left.bit_length() + right.bit_length(), MAX_INT_BITS)
            return left * right  # type: ignore[operator]
        sequence, count = (right, left) if type(left) is int else (left, right)
        if type(count) is not int:
            raise _DataError("* needs numbers, or a text or list and an integer")
        if isinstance(sequence, str):
            _limit(len(sequence) * max(count, 0), MAX_TEXT)
            return sequence * count
        if isinstance(sequence, list | tuple):
            _limit(len(_flat(sequence)) * max(count, 0), MAX_ITEMS)
            return sequence * count
        raise _DataError("* needs numbers, or a text or list and an integer")
    if not numbers:
        # Also keeps % away from strings, where it would be printf-style formatting.
        raise _DataError("- / % need numbers")
    if isinstance(op, ast.Sub):
        return _bounded(left - right)  # type: ignore[operator]
    if isinstance(op, ast.Div):
        return left / right  # type: ignore[operator]
    return _bounded(left % right)  # type: ignore[operator]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float)


def _bounded(number: object) -> object:
    if isinstance(number, int):
        _limit(number.bit_length(), MAX_INT_BITS)
    return number


def _limit(size: int, most: int) -> None:
    if size > most:
        raise _DataError(f"result would be larger than {most}")


def _flat(sequence: list[object] | tuple[object, ...]) -> list[object] | tuple[object, ...]:
    # Repeating nested lists would make comparisons cost the product of their sizes.
    if any(isinstance(item, list | tuple) for item in sequence):
        raise _DataError("only lists of plain values can be joined or repeated")
    return sequence


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _DataError(f"{what} needs a text")
    return value


def _texts(value: object) -> list[str]:
    """A value's texts: numbers as their digits, and every value of a multi-valued tag."""
    items = value if isinstance(value, list | tuple) else [value]
    return [str(item) for item in items if isinstance(item, str | int | float)]


def _number(value: object, what: str) -> str | int | float:
    if isinstance(value, str) and len(value) > MAX_NUMBER_TEXT:
        raise _DataError(f"text is too long for {what}")
    if not isinstance(value, str | int | float):
        raise _DataError(f"{what} needs a text or a number")
    return value


def _int(value: object) -> int:
    return int(_number(value, "int()"))


def _float(value: object) -> float:
    return float(_number(value, "float()"))


def _str(value: object) -> str:
    # Lists are refused: a short list can hold many references to one long text.
    if not isinstance(value, str | int | float):
        raise _DataError("str() needs a text or a number")
    return str(value)


def _contains(run: _Run, haystack: object, needle: object) -> bool:
    wanted = _text(needle, "contains()").lower()
    for text in _texts(haystack):
        run.meter.step()
        if wanted in text.lower():
            return True
    return False


def _match(run: _Run, value: object, pattern: object) -> bool:
    regex = compile_pattern(_text(pattern, "match()"))
    texts = _texts(value)
    most = run.budget.match_chars
    if any(len(text) > most for text in texts):
        raise _DataError(f"match() searches texts of at most {most} characters")
    for text in texts:
        run.meter.step()
        # One search is not interrupted, but bounded: RE2's time grows with the text's length
        # times the pattern's compiled size, and both are limited.
        run.meter.check_clock()
        if regex.search(text):
            return True
    return False


def _any_text(name: str) -> Callable[[_Run, object, object], bool]:
    """startswith() or endswith(): true when any value of the tag has the wanted end."""

    def check(run: _Run, value: object, affix: object) -> bool:
        wanted = _text(affix, f"{name}()")
        for text in _texts(value):
            run.meter.step()
            if getattr(text, name)(wanted):
                return True
        return False

    return check


def _replace(text: str, old: object, new: object) -> str:
    before, after = _text(old, ".replace()"), _text(new, ".replace()")
    if len(after) > len(before):
        # An empty text is found between every two characters.
        found = text.count(before) if before else len(text) + 1
        _limit(len(text) + found * (len(after) - len(before)), MAX_TEXT)
    return text.replace(before, after)


_FUNCTIONS: dict[str, Callable[..., object]] = {
    "len": len,
    "int": _int,
    "float": _float,
    "str": _str,
    "lower": lambda value: _text(value, "lower()").lower(),
    "upper": lambda value: _text(value, "upper()").upper(),
}
# The functions that go through every value of a multi-valued tag, one step each.
_SEARCHES: dict[str, Callable[..., bool]] = {
    "contains": _contains,
    "match": _match,
    "startswith": _any_text("startswith"),
    "endswith": _any_text("endswith"),
}
_METHODS: dict[str, Callable[..., object]] = {
    "lower": str.lower,
    "upper": str.upper,
    "strip": str.strip,
    "startswith": str.startswith,
    "endswith": str.endswith,
    "split": str.split,
    "replace": _replace,
    "find": str.find,
    "count": str.count,
}
assert _FUNCTIONS.keys() | _SEARCHES.keys() == FUNCTIONS.keys()
assert _METHODS.keys() == METHODS.keys()
