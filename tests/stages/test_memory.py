"""What the stage workers do to keep their memory down: with pandas refused (as in the workers
of `clew serve`), pyarrow converts values and computes without it, and deltalake writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_CHECK = """
import os
import sys
from clew.stages.memory import refuse_pandas
refuse_pandas()
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
table = pa.table({"a": pa.array(["x", None]), "b": pa.array([1, 2])})
assert pc.greater(table["b"], 1).to_pylist() == [False, True]
write_deltalake(sys.argv[1], table)
assert DeltaTable(sys.argv[1]).to_pyarrow_table().num_rows == 2
try:
    import pandas
except ModuleNotFoundError as e:
    print(e)
print("pandas" in sys.modules, flush=True)
# Skips the interpreter's exit, which a thread of pyarrow or deltalake aborts now and then
# (SIGABRT, with or without pandas: 1 run in 8 here without it refused).
os._exit(0)
"""


def test_with_pandas_refused_pyarrow_and_deltalake_work_and_never_load_it(tmp_path: Path) -> None:
    # A process of its own: the test runner may have loaded pandas already.
    done = subprocess.run(
        [sys.executable, "-c", _CHECK, str(tmp_path / "t")],
        capture_output=True,
        text=True,
        check=True,
    )
    refused, loaded = done.stdout.strip().splitlines()
    assert "refuse_pandas" in refused
    assert loaded == "False"
