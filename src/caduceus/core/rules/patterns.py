"""Regular expressions for match(): Python's syntax, matched in time linear in the text.

Python's re backtracks, so a pattern such as ``a*.?a*.?.?.?.?.?z`` takes seconds on a few hundred
characters and cannot be stopped. Patterns are therefore run by RE2, which never backtracks: its
time grows with the length of the text times the size of the compiled pattern, and both are
bounded (the text by the match_chars budget, the pattern by MAX_PATTERN_LENGTH and
MAX_PROGRAM_SIZE). A pattern must be valid for Python's re and mean the same there; the few
Python constructs that need backtracking (lookaround, backreferences, atomic groups, possessive
repeats, conditionals) are refused with their position, and spellings RE2 reads differently
(``\\Z``, ``{,n}``, octal and ``\\u`` escapes, ``\\s``, ``[\\b]``, ``[`` in a class) are translated.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from functools import lru_cache
from typing import NamedTuple

import re2

MAX_PATTERN_LENGTH = 200
# RE2's compiled size; the work of a search is at most this times the text's length. 2,000
# allows counted repeats such as [A-Z]{1,64}, and keeps the slowest search of 10,000
# characters under about 0.1 s.
MAX_PROGRAM_SIZE = 2_000
# Memory RE2 may use for one pattern (program and matching cache); more only makes it faster
# on hostile patterns, and compiled patterns are cached.
MAX_MEMORY = 1 << 20

_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_MEMORY
_OPTIONS.log_errors = False  # RE2 would write every refused pattern to stderr

_QUANTIFIER = re.compile(r"\{(\d*)(,?)(\d*)\}")
_OCTAL = "01234567"
_REFUSED_GROUPS = (
    ("(?=", "lookahead (?=...)"),
    ("(?!", "negative lookahead (?!...)"),
    ("(?<=", "lookbehind (?<=...)"),
    ("(?<!", "negative lookbehind (?<!...)"),
    ("(?P=", "the backreference (?P=name)"),
    ("(?>", "the atomic group (?>...)"),
    ("(?(", "the conditional group (?(...)...)"),
    ("(?#", "the comment (?#...)"),
)
# Python's ASCII \s is \t \n \v \f \r and space; RE2's leaves out the vertical tab \v.
_SPACE = "\\t-\\r "
_NOT_SPACE = "\\x00-\\x08\\x0e-\\x1f\\x{21}-\\x{10ffff}"  # \S inside a class
_FLAGS = "ims"  # inline flags that RE2 reads as Python does
_LINEAR = "match() runs in time proportional to the text, which rules out backtracking"


class PatternError(ValueError):
    """A refused pattern, with the index in the pattern where the problem is (if known)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        self.message = message
        self.index = index
        where = "" if index is None else f" (character {index + 1} of the pattern)"
        super().__init__(message + where)


class Pattern(NamedTuple):
    regex: re2._Regexp
    program_size: int

    def search(self, text: str) -> bool:
        return self.regex.search(text) is not None


def compile_pattern(pattern: str) -> Pattern:
    """The pattern compiled for linear-time matching, or PatternError saying why not."""
    return _compile(pattern)


@lru_cache(maxsize=64)  # at most MAX_MEMORY each
def _compile(pattern: str) -> Pattern:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"regular expression is longer than {MAX_PATTERN_LENGTH} characters")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "possible nested set" and the like
            re.compile(pattern)
    except re.error as exc:
        raise PatternError(f"invalid regular expression: {exc.msg}", exc.pos) from None
    except (RecursionError, OverflowError, ValueError):
        raise PatternError("invalid regular expression") from None
    translated = _translate(pattern)
    try:
        regex = re2.compile(translated, _OPTIONS)
    except re2.error as exc:
        raise _re2_error(pattern, exc) from None
    except (UnicodeEncodeError, ValueError):
        raise PatternError("regular expression has characters that cannot be matched") from None
    size = int(regex.programsize)
    if size > MAX_PROGRAM_SIZE:
        raise PatternError(
            f"regular expression is too complex ({size} steps compiled, at most "
            f"{MAX_PROGRAM_SIZE}): use smaller counted repeats {{m,n}}"
        )
    return Pattern(regex, size)


def _re2_error(pattern: str, exc: re2.error) -> PatternError:
    """RE2's refusal of something Python accepts, placed where RE2 quotes it from."""
    raw = exc.args[0] if exc.args else b""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    reason, _, fragment = text.partition(": ")
    index = pattern.find(fragment) if fragment else -1
    if "large" in text or "size" in reason:
        return PatternError("regular expression is too complex: use smaller counted repeats")
    return PatternError(
        f"regular expression uses something not supported here ({reason}); {_LINEAR}",
        index if index >= 0 else None,
    )


def _translate(pattern: str) -> str:
    """The pattern in RE2's syntax with Python's meaning; refuses what RE2 cannot do."""
    out: list[str] = []
    i, in_class, class_start = 0, False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            piece, i = _escape(pattern, i, in_class)
            out.append(piece)
            continue
        if in_class:
            # ']' right after '[' or '[^' is a literal, as in Python.
            if char == "]" and i > class_start:
                in_class = False
            # Python's '[' in a class is itself; RE2 would start a POSIX class such as
            # [:digit:] with it.
            out.append("\\[" if char == "[" else char)
            i += 1
            continue
        if char == "[":
            in_class = True
            class_start = i + 1 + (pattern[i + 1 : i + 2] == "^")
            out.append(pattern[i:class_start])
            i = class_start
            continue
        if char == "(" and pattern.startswith("(?", i):
            _check_group(pattern, i)
        elif char in "*+?" and pattern[i + 1 : i + 2] == "+" and _repeats(pattern, i):
            raise PatternError(f"the possessive repeat {char}+ is not supported; {_LINEAR}", i)
        elif char == "{":
            quantifier = _QUANTIFIER.match(pattern, i)
            if quantifier and (quantifier.group(1) or quantifier.group(3) or quantifier.group(2)):
                end = quantifier.end()
                if pattern[end : end + 1] == "+":
                    raise PatternError(
                        f"the possessive repeat {quantifier.group()}+ is not supported; {_LINEAR}",
                        end,
                    )
                low, comma, high = quantifier.groups()
                # Python reads {,n} as {0,n}; RE2 would read it as text.
                out.append("{" + (low or "0") + comma + high + "}")
                i = end
                continue
        out.append(char)
        i += 1
    return "".join(out)


def _repeats(pattern: str, i: int) -> bool:
    """Whether the *, + or ? at i is a repeat (not the lazy marker of a previous one)."""
    before = pattern[i - 1 : i]
    return not (pattern[i] == "?" and before in ("*", "+", "?", "}")) and before != "("


def _check_group(pattern: str, i: int) -> None:
    for opening, name in _REFUSED_GROUPS:
        if pattern.startswith(opening, i):
            raise PatternError(f"{name} is not supported; {_LINEAR}", i)
    flags = re.match(r"\(\?([a-zA-Z-]+)[:)]", pattern[i:])
    if flags:
        for offset, flag in enumerate(flags.group(1)):
            if flag != "-" and flag not in _FLAGS:
                raise PatternError(
                    f"the flag {flag!r} is not supported (only i, m and s; \\d \\w \\s \\b are "
                    "ASCII here, as with Python's flag a)",
                    i + 2 + offset,
                )


def _escape(pattern: str, i: int, in_class: bool) -> tuple[str, int]:
    """The RE2 spelling of the escape at i, and the index after it."""
    char = pattern[i + 1 : i + 2]
    if char in _OCTAL and char:
        digits = _octal_digits(pattern, i + 1, in_class)
        if digits:
            return f"\\x{{{int(digits, 8):x}}}", i + 1 + len(digits)
    if char.isdigit():
        raise PatternError(f"backreferences such as \\{char} are not supported; {_LINEAR}", i)
    if char == "Z":
        return "\\z", i + 2  # Python's end of text
    if char == "s":
        return (_SPACE if in_class else f"[{_SPACE}]"), i + 2
    if char == "S":
        return (_NOT_SPACE if in_class else f"[^{_SPACE}]"), i + 2
    if char == "b" and in_class:
        return "\\x08", i + 2  # backspace, in Python's classes
    if char in ("u", "U"):
        width = 4 if char == "u" else 8
        digits = pattern[i + 2 : i + 2 + width]
        return f"\\x{{{int(digits, 16):x}}}", i + 2 + width  # Python checked the digits
    if char == "N":
        end = pattern.index("}", i)
        code = ord(unicodedata.lookup(pattern[i + 3 : end]))
        return f"\\x{{{code:x}}}", end + 1
    if char and not char.isascii():
        return char, i + 2  # Python reads an escaped non-ASCII character as itself; RE2 refuses
    return pattern[i : i + 2], i + 2


def _octal_digits(pattern: str, start: int, in_class: bool) -> str:
    """The digits of a Python octal escape at start, or '' when they are a group reference."""
    end = start
    while end < len(pattern) and end - start < 3 and pattern[end] in _OCTAL:
        end += 1
    digits = pattern[start:end]
    # Outside a class, \0.. is octal, and so are three octal digits; \1 to \99 are references.
    if in_class or digits.startswith("0") or len(digits) == 3:
        return digits
    return ""
