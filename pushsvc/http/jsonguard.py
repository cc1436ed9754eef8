"""What JSON parsers take and the API refuses: deep nesting and numbers that are not finite.

- **Nesting.** A body nested deeper than :data:`MAX_DEPTH` arrays and objects (the body's own
  object is level 1). Parsers recurse: msgspec raises ``RecursionError`` a few hundred levels
  down, pydantic calls the body malformed; no message of a hospital system is nested this deep.
- **NaN and infinities.** ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON, yet pydantic and
  Python's ``json`` take them; and a number too large for a double, such as ``1e400`` or an
  integer of 309 digits, is infinity to every parser that reads it as a double (browsers'
  ``JSON.parse`` among them; pydantic gives up on integers past 4,300 digits). A client cannot
  receive any of them (an encoder writes ``null`` or fails, a browser reads ``Infinity``), so a
  body holding one anywhere, ``data`` included, is refused rather than altered.

:func:`problem` judges the raw bytes before any parser sees them, so the publish lane
(:mod:`pushsvc.http.lane`) and the FastAPI routes (:mod:`pushsvc.http.internal`) refuse exactly
the same bodies. It runs in a few passes of C code (``bytes`` methods, regular expressions) and
most bodies leave after the first: fewer than :data:`MAX_DEPTH` brackets, no ``NaN``, no
``Infinity``, no exponent of 100 or more, no number of 209 digits. It is exact for well-formed
JSON; on malformed bytes its verdict only picks which refusal the caller gets.
"""

from __future__ import annotations

import math
import re
from array import array
from itertools import accumulate

MAX_DEPTH = 64

TOO_DEEP = f"body is nested deeper than {MAX_DEPTH} levels of arrays and objects"
NOT_FINITE = "body holds NaN or an infinite number, which JSON cannot carry"

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NON_FINITE = re.compile(rb"NaN|Infinity")
_HUGE = re.compile(rb"-?\d+(?:\.\d+)?[eE][+-]?\d+|-?\d{309,}(?:\.\d+)?")
# A number reaches 1.8e308 only with an exponent of 100 or more, or with 209 digits or more
# before its point (a smaller exponent then adds the rest).
_BIG_EXPONENT = b"0e000"
_LONG = b"0" * 209


def _table(kept: dict[bytes, bytes]) -> tuple[bytes, bytes]:
    """``bytes.translate`` arguments that map each key of ``kept`` to its value and delete every
    other byte."""
    table = bytearray(range(256))
    for chars, to in kept.items():
        for c in chars:
            table[c] = to[0]
    return bytes(table), bytes(b for b in range(256) if not any(b in k for k in kept))


# The bytes that matter, in one pass: brackets as "[" and "]", quotes as "q", backslashes, digits
# as "0" and exponents as "e" (signs and points go). A number that may not fit a double shows as
# _BIG_EXPONENT or _LONG (and so may digits and letters of strings: then strings are taken out).
_SIGNATURE = _table(
    {b"[{": b"[", b"]}": b"]", b'"': b"q", b"\\": b"\\", b"0123456789": b"0", b"eE": b"e"}
)
_STRUCTURE = _table({b"[{": b"[", b"]}": b"]", b'"': b"q", b"\\": b"\\"})
_DELTAS = bytes.maketrans(b"[]", b"\x01\xff")  # as signed bytes: +1 and -1


def problem(body: bytes) -> str | None:
    """Why ``body`` is refused (:data:`TOO_DEEP` or :data:`NOT_FINITE`), or None."""
    signature = body.translate(*_SIGNATURE)
    if signature.count(b"[") > MAX_DEPTH and depth(body, signature) > MAX_DEPTH:
        return TOO_DEEP
    odd = b"NaN" in body or b"Infinity" in body
    huge = _BIG_EXPONENT in signature or _LONG in signature
    if not (odd or huge):
        return None
    bare = without_strings(body)
    if odd and _NON_FINITE.search(bare):
        return NOT_FINITE
    if huge and any(math.isinf(float(n)) for n in _HUGE.findall(bare)):
        return NOT_FINITE
    return None


def depth(body: bytes, signature: bytes | None = None) -> int:
    """How deep the arrays and objects of the JSON document ``body`` nest (0 for a scalar).
    ``signature``: ``body`` translated with :data:`_SIGNATURE`, when the caller has it."""
    if signature is None:
        signature = body.translate(*_SIGNATURE)
    structure = signature.translate(None, b"0e")
    if b"q" in structure:
        # Strings that hold no bracket show as "qq": drop them. Anything else (a bracket or an
        # escaped quote inside a string) needs the strings taken out properly.
        bare = structure.replace(b"qq", b"")
        if b"q" in bare or b"\\" in bare:
            bare = without_strings(body).translate(*_STRUCTURE).replace(b"qq", b"")
        structure = bare
    return max(accumulate(array("b", structure.translate(_DELTAS, b"\\q"))), default=0)


def without_strings(body: bytes) -> bytes:
    """``body`` with every string emptied (what a string holds is no number and no bracket)."""
    return _STRING.sub(b'""', body)
