"""What every Clew process does first, the `clew` command and the stage workers of `clew serve`
alike."""

from __future__ import annotations

import faulthandler
import signal

from clew._datadir import restrict_new_files


def prepare_process() -> None:
    """Make every file the process writes into the data directory owner-only, and let
    `kill -USR1 PID` print every thread's stack to stderr: what a stuck process waits on."""
    restrict_new_files()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
