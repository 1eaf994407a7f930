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

from pydicom.datadict import tag_for_keyword

from caduceus.core.rules.patterns import PatternError, compile_pattern

MAX_RULE_LENGTH = 4_000
MAX_NODES = 500
MAX_DEPTH = 40

# Allowed functions and string methods with their (fewest, most) positional arguments.
FUNCTIONS: dict[str, tuple[int, int]] = {
    "len": (1, 1),
    "int": (1, 1),
    "float": (1, 1),
    "str": (1, 1),
    "lower": (1, 1),
    "upper": (1, 1),
    "contains": (2, 2),
    "match": (2, 2),
    "startswith": (2, 2),
    "endswith": (2, 2),
}
METHODS: dict[str, tuple[int, int]] = {
    "lower": (0, 0),
    "upper": (0, 0),
    "strip": (0, 1),
    "startswith": (1, 1),
    "endswith": (1, 1),
    "split": (0, 2),
    "replace": (2, 2),
    "find": (1, 1),
    "count": (1, 1),
}

_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod)
_UNARY = (ast.Not, ast.USub, ast.UAdd)
_COMPARISONS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
_CONSTANTS = (str, int, float, bool, type(None))
_KEYWORD_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_NAMES = {
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings",
    ast.NamedExpr: "':='",
    ast.Dict: "dict literals",
    ast.Set: "set literals",
    ast.IfExp: "conditional expressions",
    ast.Starred: "starred arguments",
    ast.Subscript: "slices",
    ast.UnaryOp: "the operator ~",
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
            if not _KEYWORD_SHAPE.fullmatch(name):
                raise RuleError(f"'@{name}@' is not a DICOM keyword", i, text)
            # The spaces keep neighbours from merging with the name, as in not@Modality@.
            emit(" tags.", i)
            for k, letter in enumerate(name, start=i + 1):
                emit(letter, k)
            emit(" ", close)
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
    def __init__(self, source: _Source) -> None:
        self.source = source
        self.keywords: dict[str, None] = {}  # a dict keeps the order of first use

    def fail(self, message: str, node: ast.expr | ast.keyword) -> NoReturn:
        raise self.source.error(message, node.lineno, node.col_offset)

    def fail_at_name(self, message: str, node: ast.Attribute) -> NoReturn:
        # ast places an attribute at the start of the whole a.b.c; point at the name instead.
        line = node.end_lineno or node.lineno
        end = node.col_offset if node.end_col_offset is None else node.end_col_offset
        raise self.source.error(message, line, end - len(node.attr.encode()))

    def check(self, node: ast.expr, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.fail(f"rule is nested more than {MAX_DEPTH} levels deep", node)
        children: list[ast.expr] = []
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, _CONSTANTS):
                self.fail(f"{type(node.value).__name__} constants are not allowed", node)
        elif isinstance(node, ast.Attribute):
            self.check_attribute(node)
        elif isinstance(node, ast.Name):
            self.fail(self.misused_name(node.id), node)
        elif isinstance(node, ast.Call):
            children = self.check_call(node)
        elif isinstance(node, ast.BoolOp):
            children = node.values
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY):
            children = [node.operand]
        elif isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                self.fail("'**' is not allowed", node)
            if not isinstance(node.op, _OPERATORS):
                self.fail("only the operators + - * / % are allowed", node)
            children = [node.left, node.right]
        elif isinstance(node, ast.Compare):
            if not all(isinstance(op, _COMPARISONS) for op in node.ops):
                self.fail("only == != < <= > >= in and 'not in' compare", node)
            children = [node.left, *node.comparators]
        elif isinstance(node, ast.List | ast.Tuple):
            children = node.elts
        elif isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            children = [node.value, node.slice]
        else:
            self.fail(f"not allowed: {_NAMES.get(type(node), type(node).__name__)}", node)
        for child in children:
            self.check(child, depth + 1)

    def check_attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            self.fail_at_name(f"attribute '{node.attr}' is not allowed", node)
        if not (isinstance(node.value, ast.Name) and node.value.id == "tags"):
            if node.attr in METHODS:
                self.fail_at_name(f"method '{node.attr}' must be called", node)
            self.fail_at_name(f"attribute '{node.attr}' is not allowed", node)
        if tag_for_keyword(node.attr) is None:
            self.fail(f"unknown DICOM keyword '{node.attr}'", node)
        self.keywords[node.attr] = None

    def check_call(self, node: ast.Call) -> list[ast.expr]:
        func, args = node.func, list(node.args)
        receiver: list[ast.expr] = []
        if isinstance(func, ast.Name):
            if func.id not in FUNCTIONS:
                self.fail(f"function '{func.id}' is not allowed", node)
            label, (fewest, most) = f"{func.id}()", FUNCTIONS[func.id]
        elif isinstance(func, ast.Attribute):
            if func.attr not in METHODS:
                self.fail_at_name(f"method '{func.attr}' is not allowed", func)
            label, (fewest, most) = f".{func.attr}()", METHODS[func.attr]
            receiver = [func.value]
        else:
            self.fail("only the allowed functions and string methods can be called", node)
        if node.keywords:
            self.fail("keyword arguments are not allowed", node.keywords[0])
        if not fewest <= len(args) <= most:
            expected = str(fewest) if fewest == most else f"{fewest} to {most}"
            plural = "" if expected == "1" else "s"
            self.fail(f"{label} takes {expected} argument{plural}, not {len(args)}", node)
        if label == "match()":
            self.check_pattern(args[1])
        return receiver + args

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
            return "'tags' must be followed by .Keyword"
        if name in FUNCTIONS:
            return f"function '{name}' must be called"
        return f"unknown name '{name}'"
