"""Parsing and validating routing rules written in mercure's rule syntax.

A rule is a Python-like boolean expression. ``@Keyword@`` is first rewritten to ``tags.Keyword``
(remembering where every character came from, so errors point into the text the user wrote), then
Python's own parser builds the tree and a strict allow-list checks every node. Nothing is ever
compiled to code: the evaluator walks the checked tree itself.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from caduceus.core.rules.patterns import PatternError, compile_pattern
from caduceus.core.rules.tagnames import tag_key

MAX_RULE_LENGTH = 4_000
MAX_NODES = 500
MAX_DEPTH = 40
_KEYWORD_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9]*")

# caduceus' own functions, with their (fewest, most) positional arguments.
FUNCTIONS: dict[str, tuple[int, int]] = {
    "lower": (1, 1),
    "upper": (1, 1),
    "contains": (2, 2),
    "match": (2, 2),
    "startswith": (2, 2),
    "endswith": (2, 2),
}
# mercure's table of builtins (app/common/rule_evaluation.py), with the same bounds; the
# evaluator implements each itself, bounded. "most" of -1: any number.
BUILTINS: dict[str, tuple[int, int]] = {
    "bool": (0, 1), "int": (0, 2), "float": (0, 1), "str": (0, 1), "complex": (0, 2),
    "list": (0, 1), "tuple": (0, 1), "dict": (0, 1), "set": (0, 1), "frozenset": (0, 1),
    "len": (1, 1), "sum": (1, 2), "min": (1, -1), "max": (1, -1), "abs": (1, 1),
    "all": (1, 1), "any": (1, 1), "sorted": (1, 1), "reversed": (1, 1), "range": (1, 3),
    "enumerate": (1, 2), "zip": (0, -1), "filter": (2, 2), "map": (2, -1),
    "round": (1, 2), "pow": (2, 3), "divmod": (2, 2),
    "chr": (1, 1), "ord": (1, 1), "hex": (1, 1), "oct": (1, 1), "bin": (1, 1),
    "format": (1, 2), "repr": (1, 1),
    "sqrt": (1, 1), "ceil": (1, 1), "floor": (1, 1), "log": (1, 2), "log10": (1, 1),
    "log2": (1, 1), "exp": (1, 1), "sin": (1, 1), "cos": (1, 1), "tan": (1, 1),
    "asin": (1, 1), "acos": (1, 1), "atan": (1, 1), "atan2": (2, 2), "isinf": (1, 1),
    "isnan": (1, 1), "fabs": (1, 1), "factorial": (1, 1), "trunc": (1, 1),
}  # fmt: skip
CONSTANTS = {"pi", "e"}
# Keyword arguments each function takes (Python's own names).
KEYWORDS: dict[str, frozenset[str]] = {
    "int": frozenset({"base"}),
    "sorted": frozenset({"key", "reverse"}),
    "min": frozenset({"key", "default"}),
    "max": frozenset({"key", "default"}),
    "round": frozenset({"ndigits"}),
    "enumerate": frozenset({"start"}),
    "sum": frozenset({"start"}),
    "zip": frozenset({"strict"}),
}
# Methods that read their receiver and make at most a bounded new value; nothing else of an
# object is reachable (no attributes, no dunder names, no str.format).
STR_METHODS = frozenset(
    [
        "capitalize",
        "casefold",
        "center",
        "count",
        "endswith",
        "expandtabs",
        "find",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "islower",
        "isnumeric",
        "isspace",
        "istitle",
        "isupper",
        "join",
        "ljust",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rindex",
        "rjust",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
        "zfill",
    ]
)
SEQUENCE_METHODS = frozenset({"count", "index"})
DICT_METHODS = frozenset({"get", "keys", "values", "items"})
METHODS = STR_METHODS | SEQUENCE_METHODS | DICT_METHODS
NUMBER_ATTRIBUTES = frozenset({"real", "imag"})  # the only attributes a rule may read

_OPERATORS = (
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.LShift, ast.RShift, ast.BitOr, ast.BitAnd, ast.BitXor,
)  # fmt: skip
_UNARY = (ast.Not, ast.USub, ast.UAdd, ast.Invert)
_CONSTANTS = (str, int, float, complex, bool, type(None))
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_NAMES = {
    ast.NamedExpr: "':='",
    ast.Starred: "starred arguments",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}


class RuleError(ValueError):
    """A rule that cannot be used, with where in its text the problem is."""

    def __init__(self, message: str, position: int | None = None, text: str = "") -> None:
        self.message = message
        self.position = position
        self.line: int | None = None
        self.column: int | None = None
        where = ""
        if position is not None:
            line_start = text.rfind("\n", 0, position) + 1
            self.line = text.count("\n", 0, position) + 1
            self.column = position - line_start + 1
            where = f" (column {self.column})"
            if self.line > 1:
                where = f" (line {self.line}, column {self.column})"
        super().__init__(message + where)


class ParsedRule(NamedTuple):
    tree: ast.expr
    keywords: tuple[str, ...]  # in order of first use


@dataclass
class _Source:
    """The rewritten code and, for each of its characters, the offset in the original text."""

    text: str
    code: str
    origin: list[int]  # one longer than code: the end maps to the end

    def offset(self, line: int, column: int) -> int:
        lines = self.code.split("\n")
        if line > len(lines):
            return len(self.code)
        start = sum(len(previous) + 1 for previous in lines[: line - 1])
        return min(start + column, len(self.code))

    def position(self, line: int, byte_column: int) -> int:
        """Where in the original text an ast position (line, UTF-8 byte column) is."""
        line_text = self.code.split("\n")[line - 1]
        column = len(line_text.encode()[:byte_column].decode(errors="ignore"))
        return self.origin[self.offset(line, column)]

    def error(self, message: str, line: int, byte_column: int) -> RuleError:
        return RuleError(message, self.position(line, byte_column), self.text)


def parse(text: str) -> ParsedRule:
    """The checked tree of a rule, or RuleError saying what is wrong and where."""
    if len(text) > MAX_RULE_LENGTH:
        raise RuleError(f"rule is longer than {MAX_RULE_LENGTH} characters")
    source = _rewrite(text)
    if not source.code.strip():
        raise RuleError("rule is empty")
    try:
        with warnings.catch_warnings():
            # Regular expressions like '\d' are fine here; Python would warn about the escape.
            warnings.simplefilter("ignore")
            tree = ast.parse(source.code, mode="eval")
    except SyntaxError as exc:
        raise _syntax_error(source, exc) from None
    except (ValueError, RecursionError, MemoryError):
        raise RuleError("rule is too complex or contains invalid characters") from None
    if sum(isinstance(node, ast.expr) for node in ast.walk(tree)) > MAX_NODES:
        raise RuleError(f"rule has more than {MAX_NODES} elements")
    checker = _Checker(source)
    checker.check(tree.body, 0)
    return ParsedRule(tree.body, tuple(checker.keywords))


def _rewrite(text: str) -> _Source:
    """Replace @Keyword@ by tags.Keyword and line breaks by spaces, outside string literals."""
    chars: list[str] = []
    origin: list[int] = []

    def emit(piece: str, at: int) -> None:
        chars.extend(piece)
        origin.extend([at] * len(piece))

    i = 0
    while i < len(text):
        char = text[i]
        if char in "'\"":
            end = _string_end(text, i)
            for k in range(i, end):
                emit(text[k], k)
            i = end
        elif char == "#":
            end = text.find("\n", i)
            end = len(text) if end == -1 else end
            emit(" " * (end - i), i)
            i = end
        elif char == "@":
            close = text.find("@", i + 1)
            if close == -1:
                raise RuleError("'@' without a closing '@'", i, text)
            name = text[i + 1 : close]
            if _KEYWORD_SHAPE.fullmatch(name):
                # The spaces keep neighbours from merging with the name, as in not@Modality@.
                emit(" tags.", i)
                for k, letter in enumerate(name, start=i + 1):
                    emit(letter, k)
                emit(" ", close)
            elif tag_key(name, exact_case=True) is not None:
                emit(f" tags[{name!r}] ", i)  # a tag by number or by private creator
            else:
                raise RuleError(f"'@{name}@' is not a DICOM keyword or tag", i, text)
            i = close + 1
        else:
            # A rule may span lines (YAML block scalars) without Python's bracket rules.
            line_break = char in "\r\n" or (char == "\\" and text[i + 1 : i + 2] in ("\r", "\n"))
            emit(" " if line_break else char, i)
            i += 1
    # Python refuses leading indentation in an expression.
    while chars and chars[0] in " \t":
        del chars[0], origin[0]
    return _Source(text, "".join(chars), [*origin, len(text)])


def _string_end(text: str, start: int) -> int:
    quote = text[start] * 3 if text.startswith(text[start] * 3, start) else text[start]
    i = start + len(quote)
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text.startswith(quote, i):
            return i + len(quote)
        elif text[i] == "\n" and len(quote) == 1:
            return i  # unterminated: the parser reports it
        else:
            i += 1
    return len(text)


def _in_literal(literal: str, value: str, index: int | None) -> int:
    """Where character index of a string literal's value is in the literal's source.

    Exact when the source spells the value as is (a raw string, or one without escapes);
    otherwise the start of the literal, and the message gives the index in the pattern.
    """
    if index is None:
        return 0
    prefix = len(literal) - len(literal.lstrip("rRuU"))
    quote = 3 if literal[prefix : prefix + 3] in ('"""', "'''") else 1
    body = literal[prefix + quote : len(literal) - quote]
    return prefix + quote + index if body == value else 0


def _syntax_error(source: _Source, exc: SyntaxError) -> RuleError:
    if exc.lineno is None:
        return RuleError(f"syntax error: {exc.msg}")
    # Python reports offset 0 when the rule stops before the expression is complete.
    at_end = not exc.offset
    index = len(source.code) if at_end else source.offset(exc.lineno, (exc.offset or 1) - 1)
    message = "unexpected end of rule" if at_end and exc.msg == "invalid syntax" else exc.msg
    return RuleError(f"syntax error: {message}", source.origin[index], source.text)


class _Checker:
    """Walks the tree once; every node must be of an allowed kind, every name known."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.keywords: dict[str, None] = {}  # a dict keeps the order of first use

    def fail(self, message: str, node: ast.AST) -> NoReturn:
        line, column = getattr(node, "lineno", 1), getattr(node, "col_offset", 0)
        raise self.source.error(message, line, column)

    def fail_at_name(self, message: str, node: ast.Attribute) -> NoReturn:
        # ast places an attribute at the start of the whole a.b.c; point at the name instead.
        line = node.end_lineno or node.lineno
        end = node.col_offset if node.end_col_offset is None else node.end_col_offset
        raise self.source.error(message, line, end - len(node.attr.encode()))

    def check(self, node: ast.expr, depth: int, scope: frozenset[str] = frozenset()) -> None:
        if depth > MAX_DEPTH:
            self.fail(f"rule is nested more than {MAX_DEPTH} levels deep", node)
        children: list[ast.expr] = []
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, _CONSTANTS):
                self.fail(f"{type(node.value).__name__} constants are not allowed", node)
        elif isinstance(node, ast.Name):
            if node.id not in scope and node.id not in BUILTINS and node.id not in CONSTANTS:
                self.fail(self.misused_name(node.id), node)
        elif isinstance(node, ast.Attribute):
            self.check_attribute(node, depth, scope)
        elif isinstance(node, ast.Subscript):
            children = self.check_subscript(node)
        elif isinstance(node, ast.Slice):
            children = [part for part in (node.lower, node.upper, node.step) if part]
        elif isinstance(node, ast.Call):
            children = self.check_call(node, scope)
        elif isinstance(node, ast.BoolOp):
            children = node.values
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY):
            children = [node.operand]
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, _OPERATORS):
                self.fail("the operator '@' is not allowed", node)
            children = [node.left, node.right]
        elif isinstance(node, ast.Compare):
            children = [node.left, *node.comparators]
        elif isinstance(node, ast.IfExp):
            children = [node.test, node.body, node.orelse]
        elif isinstance(node, ast.List | ast.Tuple | ast.Set):
            children = node.elts
        elif isinstance(node, ast.Dict):
            if any(key is None for key in node.keys):
                self.fail("'**' in a dict is not allowed", node)
            children = [*(key for key in node.keys if key is not None), *node.values]
        elif isinstance(node, _COMPREHENSIONS):
            self.check_comprehension(node, depth, scope)
        elif isinstance(node, ast.Lambda):
            self.check_lambda(node, depth, scope)
        elif isinstance(node, ast.JoinedStr):
            children = node.values
        elif isinstance(node, ast.FormattedValue):
            children = [node.value] + ([node.format_spec] if node.format_spec else [])
        else:
            self.fail(f"not allowed: {_NAMES.get(type(node), type(node).__name__)}", node)
        for child in children:
            self.check(child, depth + 1, scope)

    def check_attribute(self, node: ast.Attribute, depth: int, scope: frozenset[str]) -> None:
        if node.attr.startswith("_"):
            self.fail_at_name(f"attribute '{node.attr}' is not allowed", node)
        if _is_tags(node.value, scope):
            key = tag_key(node.attr, exact_case=False)  # mercure: tags.modality works too
            if key is None:
                self.fail(f"unknown DICOM keyword '{node.attr}'", node)
            self.keywords[key] = None
            return
        on_str = isinstance(node.value, ast.Name) and node.value.id == "str"
        if on_str and "str" not in scope and node.attr in STR_METHODS:
            return
        if node.attr in NUMBER_ATTRIBUTES:
            self.check(node.value, depth + 1, scope)
            return  # str.lower as a function, as in map(str.lower, ...)
        if node.attr in METHODS:
            self.fail_at_name(f"method '{node.attr}' must be called", node)
        self.fail_at_name(f"attribute '{node.attr}' is not allowed", node)

    def check_subscript(self, node: ast.Subscript) -> list[ast.expr]:
        if not (isinstance(node.value, ast.Name) and node.value.id == "tags"):
            return [node.value, node.slice]
        name = node.slice
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            self.fail("tags[...] takes the name of a tag in quotes", node)
        key = tag_key(name.value, exact_case=True)
        if key is None:
            self.fail(f"unknown DICOM keyword or tag '{name.value}'", name)
        self.keywords[key] = None
        return []

    def check_call(self, node: ast.Call, scope: frozenset[str]) -> list[ast.expr]:
        func, args = node.func, list(node.args)
        children: list[ast.expr] = []
        name = func.id if isinstance(func, ast.Name) and func.id not in scope else None
        if any(isinstance(arg, ast.Starred) for arg in args):
            self.fail("not allowed: starred arguments", node)
        names = [keyword.arg for keyword in node.keywords]
        if None in names:
            self.fail("not allowed: '**' arguments", node)
        if name is not None:
            if name in FUNCTIONS:
                label, (fewest, most), allowed = f"{name}()", FUNCTIONS[name], frozenset[str]()
            elif name in BUILTINS:
                label, (fewest, most) = f"{name}()", BUILTINS[name]
                allowed = KEYWORDS.get(name, frozenset())
            else:
                self.fail(f"function '{name}' is not allowed", node)
            if not fewest <= len(args) <= (most if most >= 0 else len(args)):
                expected = str(fewest) if fewest == most else f"{fewest} to {most}"
                expected = f"at least {fewest}" if most < 0 else expected
                plural = "" if expected == "1" else "s"
                self.fail(f"{label} takes {expected} argument{plural}, not {len(args)}", node)
            for keyword in node.keywords:
                if keyword.arg not in allowed and name != "dict":
                    self.fail(f"{label} takes no keyword argument '{keyword.arg}'", keyword)
            if label == "match()":
                self.check_pattern(args[1])
        elif isinstance(func, ast.Attribute) and func.attr in METHODS:
            if func.attr.startswith("_"):
                self.fail_at_name(f"attribute '{func.attr}' is not allowed", func)
            if node.keywords and func.attr not in ("split", "rsplit", "splitlines"):
                self.fail(f".{func.attr}() takes no keyword arguments", node.keywords[0])
            if not (isinstance(func.value, ast.Name) and func.value.id == "str"):
                children.append(func.value)
        elif isinstance(func, ast.Attribute):
            self.fail_at_name(f"method '{func.attr}' is not allowed", func)
        elif isinstance(func, ast.Name | ast.Lambda):
            children.append(func)  # a lambda, called or bound by a comprehension
        else:
            self.fail("only the allowed functions and methods can be called", node)
        return children + args + [keyword.value for keyword in node.keywords]

    def check_comprehension(
        self,
        node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp,
        depth: int,
        scope: frozenset[str],
    ) -> None:
        for generator in node.generators:
            if generator.is_async:
                self.fail("not allowed: async", node)
            self.check(generator.iter, depth + 1, scope)
            scope = scope | self.targets(generator.target)
            for condition in generator.ifs:
                self.check(condition, depth + 1, scope)
        parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        for part in parts:
            self.check(part, depth + 1, scope)

    def targets(self, target: ast.expr) -> frozenset[str]:
        if isinstance(target, ast.Name):
            if target.id == "tags":
                self.fail("'tags' cannot be a variable", target)
            return frozenset({target.id})
        if isinstance(target, ast.Tuple | ast.List):
            names: frozenset[str] = frozenset()
            for element in target.elts:
                names |= self.targets(element)
            return names
        self.fail("a comprehension's variables must be plain names", target)

    def check_lambda(self, node: ast.Lambda, depth: int, scope: frozenset[str]) -> None:
        arguments = node.args
        if (
            arguments.vararg
            or arguments.kwarg
            or arguments.kwonlyargs
            or arguments.defaults
            or arguments.posonlyargs
        ):
            self.fail("a lambda takes plain arguments only (no defaults, * or **)", node)
        names = frozenset(argument.arg for argument in arguments.args)
        if "tags" in names:
            self.fail("'tags' cannot be a variable", node)
        self.check(node.body, depth + 1, scope | names)

    def check_pattern(self, node: ast.expr) -> None:
        # Literal patterns are checked now so a mistake shows when the rule is saved.
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            return
        try:
            compile_pattern(node.value)
        except PatternError as exc:
            start = self.source.position(node.lineno, node.col_offset)
            end = self.source.position(node.end_lineno or node.lineno, node.end_col_offset or 0)
            at = _in_literal(self.source.text[start:end], node.value, exc.index)
            raise RuleError(str(exc), start + at, self.source.text) from None

    @staticmethod
    def misused_name(name: str) -> str:
        if name == "tags":
            return "'tags' must be followed by .Keyword or [\"Keyword\"]"
        if name in FUNCTIONS:
            return f"function '{name}' must be called"
        return f"unknown name '{name}'"


def _is_tags(node: ast.expr, scope: frozenset[str]) -> bool:
    return isinstance(node, ast.Name) and node.id == "tags" and "tags" not in scope
