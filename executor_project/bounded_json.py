"""JSON from untrusted bytes, bounded: a document either comes back as plain Python values that PostgreSQL can
store and every later `json.dumps` can write, or JSONRejected says what is wrong with it. No Django here.

Refused, each with a message that names the problem but never quotes the input:
- bytes that are not UTF-8 (JSON exchanged between systems is UTF-8, RFC 8259 section 8.1);
- malformed JSON, and anything the standard parser raises on (its own recursion limit included);
- nesting deeper than `max_depth` objects and arrays (MAX_DEPTH, 32: the top-level object counts as one);
- NaN, Infinity and numbers that overflow a float (`1e999999`): json.dumps would write them as bare `NaN` /
  `Infinity`, which is not JSON, and jsonb refuses them;
- integers of more than MAX_INT_DIGITS digits (Python refuses to convert past 4300 anyway);
- strings (keys included) holding NUL or a lone UTF-16 surrogate: PostgreSQL stores neither.
"""

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
MAX_INT_DIGITS = 1000
# NUL, and surrogate code points: json.loads lets "\ud800" through as a lone surrogate, which cannot be encoded.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class JSONRejected(ValueError):
    """The input is not JSON this system accepts; the message says why (without quoting the input)."""


class MalformedJSON(JSONRejected):
    """Not JSON at all: the parser's message and where (`Expecting value at line 1 column 1`)."""


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse `data` and check the result with `check`. Raises JSONRejected, and nothing else."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise JSONRejected("not UTF-8 text") from None
    try:
        document = json.loads(data, parse_float=_finite_float, parse_int=_bounded_int, parse_constant=_no_constant)
    except RecursionError:
        # The C parser guards its own recursion: far deeper than max_depth, but a 256 KiB body can nest 100,000
        # levels. Caught here so that it is a refusal like any other, never a server error.
        raise JSONRejected(f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise MalformedJSON(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # from the hooks below
        raise JSONRejected(str(exc)) from None
    check(document, max_depth=max_depth)
    return document


def check(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a parsed value (from json.loads elsewhere, or built by a library) that `loads` would have refused:
    too deep, a non-finite float, or an unstorable string. Iterative, so a deep value cannot exhaust the stack."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            depth += 1
            if depth > max_depth:
                raise JSONRejected(f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, member in item.items():
                    check_text(key, "a key")
                    pending.append((member, depth))
            else:
                pending.extend((member, depth) for member in item)
        elif isinstance(item, str):
            check_text(item, "a string")
        elif isinstance(item, float) and not math.isfinite(item):
            raise JSONRejected("a number out of range (NaN and Infinity are not JSON)")


def check_text(text: Any, what: str = "a string") -> None:
    """Refuse a string PostgreSQL cannot store: one holding NUL or a lone surrogate."""
    if isinstance(text, str) and _UNSTORABLE.search(text):
        raise JSONRejected(f"{what} holds a NUL character or a lone UTF-16 surrogate")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"a number out of range ({len(text)} characters that overflow a float)")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")
