"""``python -m clew.stages --stage NAME … --settings-fd N``: a stage worker of `clew serve`
(:class:`~clew.stages.workers.WorkerProcess` starts it; run `clew worker` yourself instead).

It is `clew worker` without the command line around it: importing ``clew.cli`` loads every
command's modules and libraries (typer, rich, httpx, ...), about 10 MB in each of the three
workers of `clew serve` that none of their stages use.
"""

from __future__ import annotations

import argparse
import sys

from clew._startup import prepare_process
from clew._stderr_log import log_to_stderr
from clew.dependencies import UnreachableError
from clew.stages.memory import refuse_pandas
from clew.stages.workers import receive_settings, run_worker


def main(argv: list[str] | None = None) -> int:
    """Run the stages until SIGTERM; exit 1 with a one-line error when a service they need
    does not answer at startup (`clew serve` starts the worker again, with backoff)."""
    parser = argparse.ArgumentParser(prog="python -m clew.stages")
    parser.add_argument("--stage", action="append", required=True)
    parser.add_argument("--settings-fd", type=int, required=True)
    args = parser.parse_args(argv)
    prepare_process()
    refuse_pandas()
    settings = receive_settings(args.settings_fd)
    log_to_stderr("+".join(args.stage))
    try:
        run_worker(settings, args.stage)
    except UnreachableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
