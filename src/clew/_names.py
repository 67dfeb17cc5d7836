"""The answer to a mistyped name: the closest valid one, for every "no X named Y" message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the known name closest to ``name`` (case ignored), or
    ``""`` when none is close.

    >>> did_you_mean("chekout", ["checkout", "signup"])
    " (did you mean 'checkout'?)"
    >>> did_you_mean("zzz", ["checkout"])
    ''
    """
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
