"""What docs/tracking-api.md promises a client, read from the page itself so that a test
checking the Tracking API's answers and the documentation cannot drift apart."""

from __future__ import annotations

import base64
import functools
import re
from pathlib import Path

from _support import WRITE_KEY

TRACKING_API_DOC = Path(__file__).parents[1] / "docs" / "tracking-api.md"

BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
"""The ``Authorization`` header carrying ``WRITE_KEY`` as HTTP Basic user name."""

# A row of the Responses table: | 400 | `invalid_json` | when ... |
_RESPONSE_ROW = re.compile(r"^\| (\d{3}) \| `([a-z_]+)` \|", re.MULTILINE)


@functools.cache
def documented_refusals() -> dict[int, frozenset[str]]:
    """Every error code the Responses table of docs/tracking-api.md lists, by HTTP status."""
    by_status: dict[int, set[str]] = {}
    for status, code in _RESPONSE_ROW.findall(TRACKING_API_DOC.read_text()):
        by_status.setdefault(int(status), set()).add(code)
    assert by_status, f"no error codes found in {TRACKING_API_DOC}"
    return {status: frozenset(codes) for status, codes in by_status.items()}
