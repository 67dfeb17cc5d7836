"""How deep JSON may nest and how large its integers may be: the limits the Tracking API
enforces, fast checks of raw JSON text against them, and an encoding that cannot fail on depth
for values stored before the depth limit.

Depth counts containers (objects and arrays) from the root: ``{}`` is 1 level deep,
``{"a": [1]}`` is 2. The collector refuses a request body deeper than :data:`MAX_DEPTH`
(counted from the body's root), so every stored event, wrapped by Clew's own records, stays
far below the 254 levels the lake's JSON encoder can write.
"""

from __future__ import annotations

from array import array
from itertools import accumulate
from typing import Any

import orjson

MAX_DEPTH = 64
"""The deepest a Tracking API request body may nest, counted from its root."""

TOO_DEEP = f"[cut by Clew: nested deeper than {MAX_DEPTH} levels]"
"""What :func:`encode` writes in place of a container nested deeper than :data:`MAX_DEPTH`."""

# Every byte but the four brackets and the quote: what is left is the structure.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'{}[]"')
# Both kinds of bracket as one, so that one pass drops every innermost pair.
_PARENS = bytes.maketrans(b"{[}]", b"(())")
# Openers become +1, closers -1 (as signed bytes), so a running sum is the depth.
_STEPS = bytes.maketrans(b"()", b"\x01\xff")
# Rounds of dropping innermost pairs before the running sum takes over: enough for any
# ordinary body, few enough that a crafted one costs a handful of passes at most.
_ROUNDS = 8


INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
"""The integers every stage can write (orjson's range: signed and unsigned 64 bits)."""

# No integer of fewer digits can fall outside [INT_MIN, INT_MAX].
_LONG_DIGITS = 19
# Every digit becomes "0" and every other byte " ", so that a run of digits is a run of
# zeros found by a plain substring search: two passes in C, many times faster than a regex
# scan of a large request body.
_DIGITS_AS_ZEROS = bytes.maketrans(
    bytes(range(256)), bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
)
_LONG_RUN = b"0" * _LONG_DIGITS


class UnencodableJsonError(ValueError):
    """A value that cannot be written as JSON even with its deep parts cut (a non-string
    key, an integer beyond 64 bits). Raised for one record: a stage that meets it should set
    that record aside rather than retry it."""


def too_deep(text: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON ``text`` nests deeper than ``limit`` levels (brackets inside strings
    do not count). Exact for valid JSON; for invalid JSON the answer is unspecified, and a
    parser refuses it anyway.

    Costs a few passes in C over the text and its brackets; only a text nesting deeper than
    eight levels adds one Python-level pass over the brackets left below the eighth.

    >>> too_deep(b'{"a": [[1]], "b": "[[[["}', limit=3)
    False
    >>> too_deep(b'{"a": [[{}]]}', limit=3)
    True
    """
    if b"\\" in text:
        # An escaped backslash, then an escaped quote: neither ends a string.
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = text.translate(None, _NOT_STRUCTURE)
    if len(skeleton) <= limit:
        return False
    if b'"' in skeleton:
        # Adjacent quotes with nothing structural between them either open and close a
        # string without brackets or close one string and open the next: dropping them
        # keeps every bracket on its side of the strings.
        skeleton = skeleton.replace(b'""', b"")
        if b'"' in skeleton:
            skeleton = b"".join(skeleton.split(b'"')[::2])
    # Each round drops the innermost pairs, exactly one level; a run of openers as long as
    # the levels still allowed proves the text too deep at once.
    rest = skeleton.translate(_PARENS)
    run = b"(" * (limit + 1)
    rounds = min(limit, _ROUNDS)
    for dropped in range(rounds):
        if run[dropped:] in rest:
            return True
        rest = rest.replace(b"()", b"")
        if not rest:
            return False
    return max(accumulate(array("b", rest.translate(_STEPS))), default=0) > limit - rounds


def nests_deeper(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether the decoded JSON ``value`` has a container more than ``limit`` levels deep.

    >>> nests_deeper({"a": [{}]}, limit=2)
    True
    """
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list | tuple):
        children = value
    else:
        return False
    return limit <= 0 or any(nests_deeper(child, limit - 1) for child in children)


def cut(value: Any, limit: int = MAX_DEPTH) -> Any:
    """A copy of ``value`` with every container deeper than ``limit`` levels replaced by
    :data:`TOO_DEEP`.

    >>> cut({"a": {"b": {}}, "c": 1}, limit=2)
    {'a': {'b': '[cut by Clew: nested deeper than 64 levels]'}, 'c': 1}
    """
    if isinstance(value, dict):
        return TOO_DEEP if limit <= 0 else {k: cut(v, limit - 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return TOO_DEEP if limit <= 0 else [cut(v, limit - 1) for v in value]
    return value


def encode(value: Any, option: int = 0) -> bytes:
    """``orjson.dumps(value, option=option)``; a value too deep for it (only a record stored
    before the Tracking API enforced :data:`MAX_DEPTH` can be) is written :func:`cut` to
    :data:`MAX_DEPTH` levels instead of failing. Equal values give equal bytes.

    Raises :class:`UnencodableJsonError` when even the cut value cannot be written."""
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError:
        try:
            return orjson.dumps(cut(value), option=option)
        except orjson.JSONEncodeError as e:
            raise UnencodableJsonError(
                f"a value cannot be written as JSON ({e}); set its record aside"
            ) from None


def may_hold_huge_int(text: bytes) -> bool:
    """Whether the JSON ``text`` may hold an integer outside [:data:`INT_MIN`,
    :data:`INT_MAX`]: a cheap scan for a run of 19 digits (inside strings too, so a true
    answer only says that :func:`huge_int_at` is worth calling).

    >>> may_hold_huge_int(b'{"a": 123456789012345678, "b": "x"}')
    False
    >>> may_hold_huge_int(b'{"a": 18446744073709551616}')
    True
    """
    return _LONG_RUN in text.translate(_DIGITS_AS_ZEROS)


def huge_int_at(value: Any, path: str = "") -> str | None:
    """The path (``properties.amount``, ``traits.scores[2]``) of the first integer in the
    decoded JSON ``value`` outside [:data:`INT_MIN`, :data:`INT_MAX`], or None.

    >>> huge_int_at({"a": [1, 2**64]})
    'a[1]'
    """
    if isinstance(value, dict):
        for k, v in value.items():
            found = huge_int_at(v, f"{path}.{k}" if path else str(k))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = huge_int_at(v, f"{path}[{i}]")
            if found is not None:
                return found
    elif isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        return path or "(the event)"
    return None


def bounded_sum(a: int | float, b: int | float) -> int | float:
    """``a + b``, as a float when an integer sum would leave [:data:`INT_MIN`,
    :data:`INT_MAX`] (so that a total of in-range values can always be written).

    >>> bounded_sum(2**63, 2**63)
    1.8446744073709552e+19
    """
    total = a + b
    if isinstance(total, int) and not INT_MIN <= total <= INT_MAX:
        return float(total)
    return total
