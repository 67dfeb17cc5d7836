"""The serving-store contract suite, unchanged, against a real Redis Cluster of 3 primaries
(the store in cluster mode: every key in the one slot of ``{<prefix>}``).

The tests are the functions of ``test_contract*.py`` themselves, collected here a second
time with the ``open_store`` fixture (tests/store/conftest.py) set to ``redis-cluster``; those
modules run against their own backends as before. Each test has its own prefix, so its own
slot, wherever that lands among the 3 primaries.
"""

from __future__ import annotations

import pytest

from . import (
    test_contract,
    test_contract_extended,
    test_contract_history_delete,
    test_contract_timers,
)

pytestmark = pytest.mark.parametrize("open_store", ["redis-cluster"], indirect=True)

for _module in (
    test_contract,
    test_contract_extended,
    test_contract_history_delete,
    test_contract_timers,
):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and callable(_test):
            globals()[_name] = _test
