"""The functions, methods and operators a rule may use, each bounded before it allocates.

mercure's table of builtins (type constructors, aggregates, iteration, numbers, characters,
math) and caduceus' own search functions, implemented here rather than handed to Python as
they are: a Python builtin would loop, allocate or call back without asking the budget.
Every loop goes through iterate() (a step per item), every text and collection made is
measured first (Meter.text, Meter.items), and integers stay below MAX_INT_BITS.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from caduceus.core.rules.budget import Budget, EvaluationError, Meter
from caduceus.core.rules.parser import DICT_METHODS, SEQUENCE_METHODS, STR_METHODS
from caduceus.core.rules.patterns import compile_pattern

MAX_INT_BITS = 65_536  # about 20,000 digits: far beyond any DICOM number, still quick
MAX_NUMBER_TEXT = 100  # characters given to int(), float() or complex()
MAX_PRECISION = 100  # digits after the point in format() and '%'
MAX_FACTORIAL = 500  # 500! has about 3,700 bits


class DataError(Exception):
    """The values cannot be used as the rule asks: the whole rule is False."""


class Run:
    """What functions need of an evaluation: its budget, its meter, and calling back."""

    __slots__ = ("budget", "depth", "meter")

    def __init__(self, budget: Budget, meter: Meter) -> None:
        self.budget = budget
        self.meter = meter
        self.depth = 0

    def call(self, function: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError


class Function:
    """A function a rule may call or pass on (to map(), sorted(key=...)...)."""

    __slots__ = ("impl", "name")

    def __init__(self, name: str, impl: Callable[..., object]) -> None:
        self.name = name
        self.impl = impl

    def __repr__(self) -> str:
        return f"<function {self.name}>"


class Lambda:
    __slots__ = ("env", "node")

    def __init__(self, node: ast.Lambda, env: dict[str, object]) -> None:
        self.node = node
        self.env = env

    def __repr__(self) -> str:
        return "<lambda>"


class Stream:
    """A lazy sequence (generator expression, map(), zip()...), gone through once."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[object]) -> None:
        self._items = iter(items)

    def __iter__(self) -> Iterator[object]:
        return self._items

    def __repr__(self) -> str:
        return "<generator>"


_ITERABLE = (str, list, tuple, dict, set, frozenset, range, Stream)


def truth(value: Any) -> bool:
    return bool(value)


def iterate(run: Run, value: Any) -> Iterator[object]:
    """The items of value, one step each."""
    if not isinstance(value, _ITERABLE):
        raise DataError(f"a {type(value).__name__} has no items")
    for element in value:
        run.meter.step()
        yield element


def collect(run: Run, value: Any) -> list[Any]:
    """The items of value as a list, refused once beyond the setting."""
    most = run.budget.items
    made: list[Any] = []
    for element in value if isinstance(value, Iterator) else iterate(run, value):
        if len(made) >= most:
            run.meter.items(len(made) + 1)
        made.append(element)
    run.meter.items(len(made))
    return made


def collection(kind: str, items: list[Any]) -> Any:
    if kind == "tuple":
        return tuple(items)
    if kind == "set":
        return set(items)
    return items


def bounded(number: Any) -> Any:
    if isinstance(number, int) and number.bit_length() > MAX_INT_BITS:
        raise EvaluationError(f"the rule would make a number of more than {MAX_INT_BITS} bits")
    return number


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | complex)


def _flat(sequence: Any) -> None:
    # Repeating nested lists would make comparisons cost the product of their sizes.
    if isinstance(sequence, list | tuple) and any(
        isinstance(element, list | tuple | set | frozenset | dict) for element in sequence
    ):
        raise DataError("only lists of plain values can be repeated")


def binary(run: Run, op: ast.operator, left: Any, right: Any) -> Any:
    numbers = _is_number(left) and _is_number(right)
    if isinstance(op, ast.Add):
        if numbers:
            return bounded(left + right)  # type: ignore[operator]
        if isinstance(left, str) and isinstance(right, str):
            run.meter.text(len(left) + len(right))
        elif isinstance(left, list | tuple) and type(left) is type(right):
            run.meter.items(len(left) + len(right))  # type: ignore[arg-type]
        else:
            raise DataError("+ needs two numbers, two texts or two lists")
        return left + right  # type: ignore[operator]
    if isinstance(op, ast.Mult):
        if numbers:
            if isinstance(left, int) and isinstance(right, int):
                bounded(1 << (left.bit_length() + right.bit_length() - 1))
            return left * right  # type: ignore[operator]
        sequence, count = (right, left) if type(left) is int else (left, right)
        if type(count) is not int or not isinstance(sequence, str | list | tuple):
            raise DataError("* needs numbers, or a text or list and an integer")
        if isinstance(sequence, str):
            run.meter.text(len(sequence) * max(count, 0))
        else:
            _flat(sequence)
            run.meter.items(len(sequence) * max(count, 0))
        return sequence * count
    if isinstance(op, ast.Mod) and isinstance(left, str):
        return _printf(run, left, right)
    if isinstance(op, ast.Pow) and numbers:
        return _power(left, right)
    if isinstance(op, ast.BitOr | ast.BitAnd | ast.BitXor | ast.Sub) and (
        isinstance(left, set | frozenset | dict) and isinstance(right, set | frozenset | dict)
    ):
        run.meter.items(len(left) + len(right))
        return _OPERATORS[type(op)](left, right)
    if isinstance(op, ast.LShift) and type(left) is int and type(right) is int:
        bounded(1 << max(0, min(left.bit_length() + right, MAX_INT_BITS + 1) - 1))
    if not numbers:
        raise DataError("this operator needs numbers")
    return bounded(_OPERATORS[type(op)](left, right))


_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], object]] = {
    ast.Sub: operator.sub,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_,
    ast.BitXor: operator.xor,
    ast.Pow: operator.pow,
}


def _power(base: Any, exponent: Any, modulo: Any = None) -> Any:
    if modulo is not None:
        if not all(type(value) is int for value in (base, exponent, modulo)):
            raise DataError("pow() with three arguments needs integers")
        return pow(base, exponent, modulo)  # type: ignore[call-overload]
    whole = isinstance(base, int) and isinstance(exponent, int) and exponent > 0
    if whole and abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:  # type: ignore[arg-type, operator]
        raise EvaluationError(f"the rule would make a number of more than {MAX_INT_BITS} bits")
    if isinstance(exponent, int) and abs(exponent) > 10**6 and isinstance(base, complex):
        raise DataError("exponent too large")
    return bounded(base**exponent)  # type: ignore[operator]


def unary(run: Run, op: ast.unaryop, value: Any) -> Any:
    if isinstance(op, ast.Not):
        return not truth(value)
    if not _is_number(value):
        raise DataError("this operator needs a number")
    if isinstance(op, ast.USub):
        return -value  # type: ignore[operator]
    if isinstance(op, ast.UAdd):
        return +value  # type: ignore[operator]
    if type(value) is complex or type(value) is float:
        raise DataError("~ needs an integer")
    return ~value  # type: ignore[operator]


_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], object]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


def compare(run: Run, op: ast.cmpop, left: Any, right: Any) -> bool:
    if isinstance(op, ast.In | ast.NotIn):
        found = _contains(run, right, left)
        return found if isinstance(op, ast.In) else not found
    return bool(_COMPARE[type(op)](left, right))


def _contains(run: Run, container: Any, wanted: Any) -> bool:
    if isinstance(container, range):
        # Python goes through a range item by item for anything but an integer.
        if isinstance(wanted, float) and wanted.is_integer():
            wanted = int(wanted)
        return type(wanted) in (int, bool) and wanted in container
    if isinstance(container, Stream):
        return any(element == wanted for element in iterate(run, container))
    if not isinstance(container, str | list | tuple | dict | set | frozenset):
        raise DataError(f"'in' needs a text or a collection, not {type(container).__name__}")
    return wanted in container


def item(container: Any, index: Any) -> Any:
    if isinstance(container, dict):
        return container[index]
    if not isinstance(container, str | list | tuple | range) or type(index) not in (int, bool):
        raise DataError("only a text or list can be indexed, and only by an integer")
    return container[index]  # type: ignore[index]


def sliced(run: Run, container: Any, parts: list[Any]) -> Any:
    if not all(part is None or type(part) in (int, bool) for part in parts):
        raise DataError("a slice takes integers")
    if not isinstance(container, str | list | tuple | range):
        raise DataError("only a text or list can be sliced")
    made = container[slice(*parts)]
    if isinstance(made, str):
        run.meter.produce(len(made))
    elif not isinstance(made, range):
        run.meter.items(len(made))
    return made


# Texts: showing values, format(), printf-style '%'.


def show(run: Run, value: Any, *, as_repr: bool) -> str:
    """str() or repr() of a value, refused as soon as it grows beyond the setting."""
    if isinstance(value, str) and not as_repr:
        return value
    pieces: list[str] = []
    size = 0

    def add(text: str) -> None:
        nonlocal size
        size += len(text)
        run.meter.text(size)
        pieces.append(text)

    def walk(element: Any) -> None:
        run.meter.step()
        if isinstance(element, list | tuple | set | frozenset):
            if isinstance(element, set | frozenset) and not element:
                add(f"{type(element).__name__}()")
                return
            brackets = {list: "[]", tuple: "()"}.get(type(element), "{}")
            opening, closing = brackets[0], brackets[1]
            if isinstance(element, frozenset):
                add("frozenset(")
            add(opening)
            for index, inner in enumerate(element):
                add(", " if index else "")
                walk(inner)
            add("," if isinstance(element, tuple) and len(element) == 1 else "")
            add(closing + (")" if isinstance(element, frozenset) else ""))
        elif isinstance(element, dict):
            add("{")
            for index, (key, inner) in enumerate(element.items()):
                add(", " if index else "")
                walk(key)
                add(": ")
                walk(inner)
            add("}")
        elif isinstance(element, str):
            add(repr(element))  # at most a few times the text, which is bounded already
        else:
            add(repr(element))

    walk(value)
    return "".join(pieces)


_SPEC = re.compile(
    r"(?:.?[<>=^])?[+\- ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d+))?[bcdeEfFgGnosxX%]?",
    re.DOTALL,
)


def formatted(run: Run, value: Any, spec: str) -> str:
    if not spec:
        return show(run, value, as_repr=False)
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise DataError(f"invalid format {spec!r}")
    _check_widths(run, match["width"], match["precision"], value)
    if not isinstance(value, str | int | float | complex | type(None)):
        raise DataError("format() with a specification needs a text or a number")
    made = format(value, spec)
    run.meter.text(len(made))
    return made


def _check_widths(run: Run, width: str | None, precision: str | None, value: Any) -> None:
    if width:
        run.meter.text(int(width))
    if precision and int(precision) > MAX_PRECISION and not isinstance(value, str):
        raise DataError(f"at most {MAX_PRECISION} digits after the point")


_PRINTF = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[#0\- +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?"
    r"(?P<kind>.?)",
    re.DOTALL,
)


def _printf(run: Run, template: str, values: Any) -> str:
    """'%' on a text, as Python does it, with every width and value measured first."""
    arguments = values if isinstance(values, tuple) else (values,)
    if isinstance(values, dict):
        arguments = tuple(values.values())
    size = len(template)
    for match in _PRINTF.finditer(template):
        if "*" in (match["width"] or "") + (match["precision"] or ""):
            raise DataError("'*' widths are not supported")
        _check_widths(run, match["width"], match["precision"], 0.0)
        size += int(match["width"] or 0) + int(match["precision"] or 0)
    for argument in arguments:
        if not isinstance(argument, str | int | float | bool | type(None)):
            raise DataError("'%' takes texts and numbers")
        size += len(argument) * 4 if isinstance(argument, str) else 1_300
    run.meter.text(size)
    made: str = template % values
    run.meter.text(len(made))
    return made


# Methods of texts, lists and dicts.


def method(run: Run, receiver: Any, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    if isinstance(receiver, str) and name in STR_METHODS:
        return _str_method(run, receiver, name, args, kwargs)
    if isinstance(receiver, list | tuple) and name in SEQUENCE_METHODS:
        return getattr(receiver, name)(*args)
    if isinstance(receiver, dict) and name in DICT_METHODS:
        if name == "get":
            return receiver.get(*args)
        made = list(getattr(receiver, name)())
        run.meter.items(len(made))
        return made
    raise DataError(f".{name}() is not a method of a {type(receiver).__name__}")


def _str_method(run: Run, text: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    meter = run.meter
    if name == "join":
        parts = collect(run, args[0]) if args else []
        if not all(isinstance(part, str) for part in parts):
            raise DataError(".join() needs texts")
        meter.text(sum(len(part) for part in parts) + len(text) * max(len(parts) - 1, 0))  # type: ignore[arg-type]
        return text.join(parts)  # type: ignore[arg-type]
    if name in ("center", "ljust", "rjust", "zfill") and args and type(args[0]) is int:
        meter.text(max(args[0], len(text)))
    elif name == "expandtabs":
        tabsize = args[0] if args else 8
        if type(tabsize) is not int:
            raise DataError(".expandtabs() takes an integer")
        meter.text(len(text) + text.count("\t") * max(tabsize, 0))
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if not (isinstance(old, str) and isinstance(new, str)):
            raise DataError(".replace() needs texts")
        if len(new) > len(old):
            # An empty text is found between every two characters.
            found = text.count(old) if old else len(text) + 1
            meter.text(len(text) + found * (len(new) - len(old)))
    made = getattr(str, name)(text, *args, **kwargs)
    if isinstance(made, str):
        meter.text(len(made))
    elif isinstance(made, list | tuple):
        meter.items(len(made))
        meter.produce(len(text))
    return made


def number_attribute(value: Any, name: str) -> Any:
    if not isinstance(value, int | float | complex):
        raise DataError(f".{name} is an attribute of numbers")
    return getattr(value, name)


def unbound_str_method(name: str) -> Function:
    def call(run: Run, receiver: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(receiver, str):
            raise DataError(f"str.{name}() needs a text")
        return _str_method(run, receiver, name, list(args), kwargs)

    return Function(f"str.{name}", call)


# caduceus' own functions: they go through every value of a multi-valued tag, one step each.


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{what} needs a text")
    return value


def _texts(value: Any) -> list[str]:
    """A value's texts: numbers as their digits, and every value of a multi-valued tag."""
    items = value if isinstance(value, list | tuple) else [value]
    return [str(element) for element in items if isinstance(element, str | int | float)]


def _contains_text(run: Run, haystack: Any, needle: Any) -> bool:
    wanted = _text(needle, "contains()").lower()
    for text in _texts(haystack):
        run.meter.step()
        if wanted in text.lower():
            return True
    return False


def _match(run: Run, value: Any, pattern: Any) -> bool:
    regex = compile_pattern(_text(pattern, "match()"))
    texts = _texts(value)
    most = run.budget.match_chars
    if any(len(text) > most for text in texts):
        raise DataError(f"match() searches texts of at most {most} characters")
    for text in texts:
        run.meter.step()
        # One search is not interrupted, but bounded: RE2's time grows with the text's length
        # times the pattern's compiled size, and both are limited.
        run.meter.check_clock()
        if regex.search(text):
            return True
    return False


def _any_text(name: str) -> Callable[[Run, object, object], bool]:
    """startswith() or endswith(): true when any value of the tag has the wanted end."""

    def check(run: Run, value: Any, affix: Any) -> bool:
        wanted = _text(affix, f"{name}()")
        for text in _texts(value):
            run.meter.step()
            if getattr(text, name)(wanted):
                return True
        return False

    return check


# mercure's builtins.


def _number_text(value: Any, what: str) -> Any:
    if isinstance(value, str) and len(value) > MAX_NUMBER_TEXT:
        raise DataError(f"text is too long for {what}")
    if not isinstance(value, str | int | float | complex | bool):
        raise DataError(f"{what} needs a text or a number")
    return value


def _int(run: Run, value: Any = 0, base: Any = None) -> int:
    value = _number_text(value, "int()")
    if base is None:
        return int(value)  # type: ignore[arg-type]
    return int(value, base)  # type: ignore[call-overload]


def _float(run: Run, value: Any = 0.0) -> float:
    return float(_number_text(value, "float()"))  # type: ignore[arg-type]


def _complex(run: Run, real: Any = 0, imaginary: Any = 0) -> complex:
    return complex(_number_text(real, "complex()"), _number_text(imaginary, "complex()"))  # type: ignore[arg-type]


def _dict(run: Run, value: Any = (), **named: Any) -> dict[Any, Any]:
    if named:
        run.meter.items(len(named))
        return {**_dict(run, value), **named}
    if isinstance(value, dict):
        run.meter.items(len(value))
        return dict(value)
    pairs = collect(run, value)
    if not all(isinstance(pair, list | tuple) and len(pair) == 2 for pair in pairs):
        raise DataError("dict() needs pairs")
    return dict(pairs)  # type: ignore[arg-type]


def _len(run: Run, value: Any) -> int:
    if isinstance(value, Stream) or not isinstance(value, _ITERABLE):
        raise DataError(f"a {type(value).__name__} has no length")
    return len(value)  # type: ignore[arg-type]


def _sum(run: Run, values: Any, start: Any = 0) -> Any:
    total = start
    for value in iterate(run, values):
        total = binary(run, ast.Add(), total, value)
    return total


def _extreme(pick: Callable[..., object]) -> Callable[..., object]:
    def extreme(run: Run, *args: Any, key: Any = None, default: Any = ...) -> Any:
        values = collect(run, args[0]) if len(args) == 1 else list(args)
        if not values:
            if default is ...:
                raise DataError("an empty sequence has no extreme")
            return default
        if key is None:
            return pick(values)
        keys = [run.call(key, [value], {}) for value in values]
        chosen = pick(range(len(values)), key=keys.__getitem__)
        return values[chosen]  # type: ignore[call-overload]

    return extreme


def _all(run: Run, values: Any) -> bool:
    return all(truth(value) for value in iterate(run, values))


def _any(run: Run, values: Any) -> bool:
    return any(truth(value) for value in iterate(run, values))


def _sorted(run: Run, values: Any, key: Any = None, reverse: Any = False) -> list[Any]:
    items = collect(run, values)
    run.meter.step(len(items))
    if key is None:
        return sorted(items, reverse=bool(reverse))  # type: ignore[type-var]
    keys = [run.call(key, [value], {}) for value in items]
    order = sorted(range(len(items)), key=keys.__getitem__, reverse=bool(reverse))  # type: ignore[arg-type]
    return [items[index] for index in order]


def _reversed(run: Run, values: Any) -> Stream:
    if not isinstance(values, str | list | tuple | range):
        raise DataError("reversed() needs a text, list or range")
    return Stream(iterate(run, values[::-1] if not isinstance(values, range) else reversed(values)))  # type: ignore[arg-type]


def _range(run: Run, *args: Any) -> range:
    if not all(type(arg) in (int, bool) for arg in args):
        raise DataError("range() takes integers")
    return range(*args)  # type: ignore[arg-type]


def _enumerate(run: Run, values: Any, start: Any = 0) -> Stream:
    if type(start) is not int:
        raise DataError("enumerate() starts at an integer")
    return Stream(enumerate(iterate(run, values), start))


def _zip(run: Run, *values: Any, strict: Any = False) -> Stream:
    return Stream(zip(*(iterate(run, value) for value in values), strict=bool(strict)))


def _filter(run: Run, function: Any, values: Any) -> Stream:
    if function is None:
        return Stream(value for value in iterate(run, values) if truth(value))
    return Stream(value for value in iterate(run, values) if truth(run.call(function, [value], {})))


def _map(run: Run, function: Any, *values: Any) -> Stream:
    return Stream(
        run.call(function, list(arguments), {})
        for arguments in zip(*(iterate(run, value) for value in values), strict=False)
    )


def _round(run: Run, value: Any, ndigits: Any = None) -> Any:
    if not isinstance(value, int | float) or not (ndigits is None or type(ndigits) is int):
        raise DataError("round() takes a number and an integer")
    return round(value, ndigits)  # type: ignore[arg-type]


def _divmod(run: Run, left: Any, right: Any) -> tuple[object, object]:
    return (
        binary(run, ast.FloorDiv(), left, right),
        binary(run, ast.Mod(), left, right),
    )


def _factorial(run: Run, value: Any) -> int:
    if type(value) is not int or value > MAX_FACTORIAL:
        raise EvaluationError(f"factorial() takes integers up to {MAX_FACTORIAL}")
    return math.factorial(value)


def _plain_function(function: Callable[..., object]) -> Callable[..., object]:
    """A function of numbers or short values that cannot make anything large."""

    def call(run: Run, *args: Any) -> Any:
        if not all(isinstance(arg, int | float | complex | str) for arg in args):
            raise DataError("this function takes numbers or texts")
        return bounded(function(*args))

    return call


def _shown(as_repr: bool) -> Callable[..., str]:
    def call(run: Run, value: Any = "") -> str:
        return show(run, value, as_repr=as_repr)

    return call


def _format(run: Run, value: Any, spec: Any = "") -> str:
    return formatted(run, value, _text(spec, "format()"))


def _made(kind: type) -> Callable[..., object]:
    def make(run: Run, values: Any = ()) -> Any:
        return kind(collect(run, values))

    return make


_IMPLEMENTATIONS: dict[str, Callable[..., object]] = {
    "bool": lambda run, value=False: truth(value),
    "int": _int,
    "float": _float,
    "str": _shown(False),
    "complex": _complex,
    "list": _made(list),
    "tuple": _made(tuple),
    "dict": _dict,
    "set": _made(set),
    "frozenset": _made(frozenset),
    "len": _len,
    "sum": _sum,
    "min": _extreme(min),
    "max": _extreme(max),
    "abs": _plain_function(abs),
    "all": _all,
    "any": _any,
    "sorted": _sorted,
    "reversed": _reversed,
    "range": _range,
    "enumerate": _enumerate,
    "zip": _zip,
    "filter": _filter,
    "map": _map,
    "round": _round,
    "pow": lambda run, base, exponent, modulo=None: _power(base, exponent, modulo),
    "divmod": _divmod,
    "chr": _plain_function(chr),
    "ord": _plain_function(ord),
    "hex": _plain_function(hex),
    "oct": _plain_function(oct),
    "bin": _plain_function(bin),
    "format": _format,
    "repr": _shown(True),
    "factorial": _factorial,
    **{
        name: _plain_function(getattr(math, name))
        for name in [
            "sqrt",
            "ceil",
            "floor",
            "log",
            "log10",
            "log2",
            "exp",
            "sin",
            "cos",
            "tan",
            "asin",
            "acos",
            "atan",
            "atan2",
            "isinf",
            "isnan",
            "fabs",
            "trunc",
        ]
    },
    # caduceus' own
    "lower": lambda run, value: _text(value, "lower()").lower(),
    "upper": lambda run, value: _text(value, "upper()").upper(),
    "contains": _contains_text,
    "match": _match,
    "startswith": _any_text("startswith"),
    "endswith": _any_text("endswith"),
}
_FUNCTIONS = {name: Function(name, impl) for name, impl in _IMPLEMENTATIONS.items()}
_CONSTANTS: dict[str, object] = {"pi": math.pi, "e": math.e}


def named(name: str) -> Any:
    """The value of a name that is not a variable: a function or pi or e."""
    if name in _CONSTANTS:
        return _CONSTANTS[name]
    return _FUNCTIONS[name]
