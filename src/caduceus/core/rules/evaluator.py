"""Evaluating checked routing rules against the tags of a series.

The evaluator walks the tree that the parser checked; it never compiles or executes code. Tag
values are first turned into plain str, int, float and list objects, so that no user-defined
method (a pydicom value's __eq__, say) can run while a rule is evaluated. Functions, methods
and operators are the evaluator's own (see functions.py), each bounded before it allocates:
a Budget bounds the whole evaluation, its steps (each part of the rule, each item gone
through), its CPU time, the size of each text and collection it makes and of all of them
together. Beyond it, evaluate() raises EvaluationError instead of answering.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from caduceus.core.rules import functions as fn
from caduceus.core.rules.budget import Budget, EvaluationError, Meter
from caduceus.core.rules.functions import DataError, Function, Lambda, Stream
from caduceus.core.rules.parser import NUMBER_ATTRIBUTES, parse
from caduceus.core.rules.patterns import PatternError
from caduceus.core.rules.tagnames import (
    MERCURE_ALWAYS_PRESENT,
    number_key,
    private_parts,
    tag_key,
)

DEFAULT_BUDGET = Budget()
MAX_CALL_DEPTH = 10  # lambdas calling lambdas: Python's own stack must not run out first


class _MissingTag(Exception):
    """A tag the rule reads is absent: the whole rule is False (mercure: TagNotFound)."""


# Errors that the data, not the rule, can cause; the rule is then False.
_DATA_ERRORS = (
    _MissingTag,
    DataError,
    ValueError,
    TypeError,
    ArithmeticError,
    LookupError,
    PatternError,
    RecursionError,
)


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
            return fn.truth(_value(self._tree, run, {}))
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


class _Run(fn.Run):
    """One evaluation: the tags it reads and what it has cost so far."""

    __slots__ = ("tags",)

    def __init__(self, tags: Mapping[str, object], budget: Budget) -> None:
        super().__init__(budget, Meter(budget))
        self.tags = tags

    def call(self, function: object, args: Sequence[object], kwargs: dict[str, Any]) -> object:
        if isinstance(function, Function):
            return function.impl(self, *args, **kwargs)
        if not isinstance(function, Lambda):
            raise DataError("only functions can be called")
        node = function.node
        assert isinstance(node, ast.Lambda)
        names = [argument.arg for argument in node.args.args]
        if kwargs or len(args) != len(names):
            raise DataError(f"the lambda takes {len(names)} arguments")
        if self.depth >= MAX_CALL_DEPTH:
            raise EvaluationError(
                f"the rule nests calls of lambdas more than {MAX_CALL_DEPTH} deep"
            )
        self.depth += 1
        try:
            return _value(node.body, self, {**function.env, **dict(zip(names, args, strict=True))})
        finally:
            self.depth -= 1

    def tag(self, key: str, *, missing_ok: bool = False) -> object:
        value = self.tags.get(self.resolve(key))
        if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
            self.meter.step(len(value))  # each value of a multi-valued tag is converted
        plain = _plain(value)
        if plain is None and key in MERCURE_ALWAYS_PRESENT:
            return ""  # mercure's receiver writes these for every file, empty when absent
        if plain is None and not missing_ok:
            raise _MissingTag(key)
        return plain

    def resolve(self, key: str) -> str:
        """The key of a private element named by its creator, in the block this series has."""
        parts = private_parts(key)
        if parts is None:
            return key
        group, element, creator = parts
        for block in range(0x10, 0x100):
            self.meter.step()
            reserved = self.tags.get(number_key(group, block))
            if isinstance(reserved, str) and reserved.strip() == creator:
                return number_key(group, (block << 8) | element)
        return key


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


Env = dict[str, object]


def _value(node: ast.expr, run: _Run, env: Env) -> object:
    run.meter.step()
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return _name(node.id, env)
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "tags" and "tags" not in env:
            return run.tag(tag_key(node.attr, exact_case=False) or node.attr)
        if node.attr in NUMBER_ATTRIBUTES:
            return fn.number_attribute(_value(node.value, run, env), node.attr)
        return fn.unbound_str_method(node.attr)  # str.lower and the like: the checker says so
    if isinstance(node, ast.Subscript):
        return _subscript(node, run, env)
    if isinstance(node, ast.BoolOp):
        # Python's semantics: the first operand that decides, so unread tags do not matter.
        stop_when = isinstance(node.op, ast.Or)
        result: object = None
        for operand in node.values:
            result = _value(operand, run, env)
            if fn.truth(result) is stop_when:
                break
        return result
    if isinstance(node, ast.UnaryOp):
        return fn.unary(run, node.op, _value(node.operand, run, env))
    if isinstance(node, ast.BinOp):
        left, right = _value(node.left, run, env), _value(node.right, run, env)
        return fn.binary(run, node.op, left, right)
    if isinstance(node, ast.Compare):
        left = _value(node.left, run, env)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _value(comparator, run, env)
            if not fn.compare(run, op, left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        chosen = node.body if fn.truth(_value(node.test, run, env)) else node.orelse
        return _value(chosen, run, env)
    if isinstance(node, ast.Call):
        return _call(node, run, env)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        run.meter.items(len(node.elts))
        items = [_value(item, run, env) for item in node.elts]
        return fn.collection(type(node).__name__.lower(), items)
    if isinstance(node, ast.Dict):
        run.meter.items(len(node.keys))
        return {
            _value(key, run, env): _value(value, run, env)
            for key, value in zip(node.keys, node.values, strict=True)
            if key is not None
        }
    if isinstance(node, ast.GeneratorExp):
        return Stream(_value(node.elt, run, inner) for inner in _scopes(node, run, env))
    if isinstance(node, ast.ListComp | ast.SetComp):
        made = fn.collect(run, (_value(node.elt, run, inner) for inner in _scopes(node, run, env)))
        return made if isinstance(node, ast.ListComp) else set(made)
    if isinstance(node, ast.DictComp):
        pairs = fn.collect(
            run,
            (
                (_value(node.key, run, inner), _value(node.value, run, inner))
                for inner in _scopes(node, run, env)
            ),
        )
        return dict(pairs)  # type: ignore[arg-type]
    if isinstance(node, ast.Lambda):
        return Lambda(node, env)
    if isinstance(node, ast.JoinedStr):
        return _fstring(node, run, env)
    raise AssertionError(f"the checker let through {type(node).__name__}")


def _name(name: str, env: Env) -> object:
    if name in env:
        return env[name]
    return fn.named(name)


def _subscript(node: ast.Subscript, run: _Run, env: Env) -> object:
    if isinstance(node.value, ast.Name) and node.value.id == "tags" and "tags" not in env:
        assert isinstance(node.slice, ast.Constant)
        return run.tag(tag_key(str(node.slice.value), exact_case=True) or str(node.slice.value))
    container = _value(node.value, run, env)
    if isinstance(node.slice, ast.Slice):
        parts = [
            None if part is None else _value(part, run, env)
            for part in (node.slice.lower, node.slice.upper, node.slice.step)
        ]
        return fn.sliced(run, container, parts)
    return fn.item(container, _value(node.slice, run, env))


def _call(node: ast.Call, run: _Run, env: Env) -> object:
    func = node.func
    args = [_value(arg, run, env) for arg in node.args]
    kwargs = {kw.arg: _value(kw.value, run, env) for kw in node.keywords if kw.arg}
    if isinstance(func, ast.Attribute) and not (
        isinstance(func.value, ast.Name) and func.value.id == "str" and "str" not in env
    ):
        receiver = _value(func.value, run, env)
        return fn.method(run, receiver, func.attr, args, kwargs)
    return run.call(_value(func, run, env), args, kwargs)


def _scopes(
    node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp, run: _Run, env: Env
) -> Iterator[Env]:
    """The variables of each turn of a comprehension, in order; its filters applied."""

    def turns(index: int, scope: Env) -> Iterator[Env]:
        if index == len(node.generators):
            yield scope
            return
        generator = node.generators[index]
        for element in fn.iterate(run, _value(generator.iter, run, scope)):
            inner = dict(scope)
            _bind(generator.target, element, inner)
            if all(fn.truth(_value(test, run, inner)) for test in generator.ifs):
                yield from turns(index + 1, inner)

    return turns(0, env)


def _bind(target: ast.expr, value: object, scope: Env) -> None:
    if isinstance(target, ast.Name):
        scope[target.id] = value
        return
    assert isinstance(target, ast.Tuple | ast.List)
    if not isinstance(value, list | tuple | str) or len(value) != len(target.elts):
        raise DataError(f"cannot unpack into {len(target.elts)} variables")
    for part, element in zip(target.elts, value, strict=True):
        _bind(part, element, scope)


def _fstring(node: ast.JoinedStr, run: _Run, env: Env) -> str:
    pieces: list[str] = []
    size = 0
    for part in node.values:
        if isinstance(part, ast.Constant):
            piece = str(part.value)
        else:
            assert isinstance(part, ast.FormattedValue)
            value = _value(part.value, run, env)
            if part.conversion in (ord("r"), ord("a")):
                value = fn.show(run, value, as_repr=True)
            elif part.conversion == ord("s"):
                value = fn.show(run, value, as_repr=False)
            spec = "" if part.format_spec is None else _value(part.format_spec, run, env)
            piece = fn.formatted(run, value, str(spec))
        size += len(piece)
        run.meter.text(size)
        pieces.append(piece)
    return "".join(pieces)
