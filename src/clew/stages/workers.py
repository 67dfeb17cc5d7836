"""Stage workers: each stage can run in its own process (`clew worker --stage NAME`), and
`clew serve` starts and supervises one worker process per stage.

Python runs one thread at a time per process, so stages in worker processes leave the
collector's process free to answer HTTP; see the README's performance section.

On the embedded log a worker holds an exclusive lock file for its stage while it runs, so two
processes never consume the same stage of one data directory at once (the embedded log
coordinates consumer groups only inside one process; a second worker waits for the first to
stop). On Kafka, consumer groups span processes and machines, so any number of workers of one
stage run together and share its partitions. A worker started by `clew serve` dies with its
parent.

`clew serve` hands a worker its settings through an inherited pipe (`--settings-fd N`), never
on its command line: ``/proc/PID/cmdline`` is readable by every local user, and the settings
hold the privacy master key, the salt and credentials. A pipe never touches the disk and
needs no cleanup; the environment (``/proc/PID/environ`` is readable by the same user only)
would do too, but would also reach every process the worker starts.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from clew._datadir import lock_path, stage_lock
from clew.backends import dependencies, open_log
from clew.config import Settings, settings_json_with_secrets
from clew.dependencies import check_reachable
from clew.log.base import Log
from clew.stages._counters import CounterStore
from clew.stages.base import Stage
from clew.stages.memory import WORKER_ALLOCATOR_ENV
from clew.stages.runner import StageRunner
from clew.stages.setaside import StageLedger
from clew.topics import STAGE_NAMES

logger = logging.getLogger(__name__)


class UnknownStageError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown stage {name!r}; choose one of {', '.join(STAGE_NAMES)}")


def build_stage(name: str, settings: Settings) -> tuple[Stage, list[Callable[[], None]]]:
    """The stage called ``name`` and the functions that release what it opened."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise UnknownStageError(name)
    return builder(settings)


_Built = tuple[Stage, list[Callable[[], None]]]

# Each builder imports its stage's modules inside it, so a worker loads only its own stage's
# libraries (the lake's pyarrow and deltalake are large).


def _build_validate(settings: Settings) -> _Built:
    from clew.backends import open_dedup
    from clew.privacy._salt import load_salt
    from clew.privacy.pii import PiiPolicy
    from clew.privacy.suppression import Suppression
    from clew.stages._counters import CounterStore
    from clew.stages._plans import PlanCache
    from clew.stages.validate import ValidateStage

    dedup = open_dedup(settings)
    counters = CounterStore(settings.state_path)
    plans = PlanCache(settings)
    suppression = Suppression.open(settings)
    pii = PiiPolicy(settings.privacy.pii, load_salt(settings)) if settings.privacy.pii else None
    stage = ValidateStage(
        dedup, settings.stages.dedup_window_hours, counters, plans, suppression, pii
    )
    return stage, [dedup.close, counters.close, plans.close, suppression.close]


def _build_lake(settings: Settings) -> _Built:
    from clew.stages.lake_sink import LakeSinkStage

    lake = LakeSinkStage(
        settings.lake_location, settings.lake, settings.identity.rules, settings.data_dir
    )
    return lake, []


def _build_monitor(settings: Settings) -> _Built:
    from clew.monitor.volume import MonitorPolicy
    from clew.stages.monitor import MonitorStage

    m = settings.monitor
    monitor = MonitorStage(
        settings.monitor_path,
        MonitorPolicy.from_settings(m),
        webhook_url=m.webhook_url,
        webhook_timeout_s=m.webhook_timeout_s,
        webhook_retries=m.webhook_retries,
    )
    return monitor, [monitor.shutdown]


def _build_profiles(settings: Settings) -> _Built:
    from clew.audiences.live import LiveAudiences
    from clew.audiences.repository import open_repository
    from clew.backends import open_store
    from clew.batch.history import LakeHistory
    from clew.clock import clock_for
    from clew.stages._counters import CounterStore
    from clew.stages.profiles import ProfilesStage

    ident = settings.identity
    store = open_store(settings)
    counters = CounterStore(settings.state_path)
    clock = clock_for(settings.clock, settings.data_dir)
    history = LakeHistory(
        settings.lake_location, lambda: open_log(settings), settings.cold_location
    )
    audiences = LiveAudiences(open_repository(settings), clock, history)
    profiles = ProfilesStage(
        store,
        ident.rules,
        ident.traits,
        clock=clock,
        counter_store=counters,
        audiences=audiences,
    )
    return profiles, [store.close, counters.close, history.close]


def _build_profiles_lake(settings: Settings) -> _Built:
    from clew.stages.profiles_sink import ProfilesSinkStage

    return ProfilesSinkStage(settings.lake_location, settings.lake), []


def _build_destinations(settings: Settings) -> _Built:
    from clew.destinations.config import Destinations
    from clew.stages.destinations import DestinationsStage

    configured = Destinations.open(settings)
    try:
        destinations = DestinationsStage(
            settings.data_dir,
            destinations=configured,
            block_private_networks=settings.destinations.block_private_networks,
        )
    except BaseException:
        configured.close()
        raise
    return destinations, [destinations.shutdown]


_BUILDERS: dict[str, Callable[[Settings], _Built]] = {
    "validate": _build_validate,
    "lake": _build_lake,
    "monitor": _build_monitor,
    "profiles": _build_profiles,
    "profiles-lake": _build_profiles_lake,
    "destinations": _build_destinations,
}


def _lock_path(settings: Settings, stage: str) -> Path:
    return lock_path(settings.data_dir, stage_lock(stage))


def _acquire_stage_lock(settings: Settings, stage: str, stop: threading.Event) -> IO[bytes] | None:
    path = _lock_path(settings, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("ab")
    warned = False
    while not stop.is_set():
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if not warned:
                logger.warning("stage %s is running in another process; waiting for it", stage)
                warned = True
            stop.wait(0.1)
    handle.close()
    return None


def stage_locks(
    settings: Settings, log: Log, stage_names: Sequence[str], stop: threading.Event
) -> list[IO[bytes]] | None:
    """The stage locks a process running ``stage_names`` on ``log`` holds while it runs them,
    waiting for each; ``None`` when ``stop`` is set first (nothing is held then). A log whose
    groups span processes (Kafka) shares a stage's partitions among its workers itself, so
    none are needed; otherwise one process per stage and data directory, by a file lock."""
    locks: list[IO[bytes]] = []
    if log.shares_groups_across_processes:
        return locks
    for name in stage_names:
        lock = _acquire_stage_lock(settings, name, stop)
        if lock is None:
            for held in locks:
                held.close()
            return None
        locks.append(lock)
    return locks


# The stages that read or write the lake (the profiles stage reads history back from it).
_LAKE_STAGES = frozenset({"lake", "profiles-lake", "profiles"})
# How long a stopping worker waits for its stages to finish their batches, in all.
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class RunningStages:
    """What a running worker holds, for what serves its ``/health`` and ``/metrics``
    (`clew worker --http-port`)."""

    settings: Settings
    log: Log
    runners: Sequence[StageRunner]
    counters: CounterStore
    ledger: StageLedger

    @property
    def uses_lake(self) -> bool:
        return any(r.stage.group in _LAKE_STAGES for r in self.runners)


def run_worker(
    settings: Settings,
    stage_names: Sequence[str],
    on_running: Callable[[RunningStages], Callable[[], None]] | None = None,
) -> None:
    """Run the named stages (one thread each) in the foreground until SIGTERM or SIGINT,
    then let them finish their current batches (the lake flushes what it holds) for up to
    :data:`STOP_TIMEOUT_S` and return; what a stage did not commit by then is processed
    again on the next start.

    First checks that every service the stages need answers (raises
    :class:`~clew.dependencies.UnreachableError` within seconds otherwise). ``on_running`` is
    called once the stages run; the function it returns is called first when stopping."""
    for name in stage_names:
        if name not in STAGE_NAMES:
            raise UnknownStageError(name)
    stop = threading.Event()
    parent = os.getppid()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if os.environ.get("CLEW_WORKER_OF_SERVE") and settings.stages.worker_nice:
        os.nice(settings.stages.worker_nice)
    check_reachable(dependencies(settings, lake=bool(_LAKE_STAGES.intersection(stage_names))))
    log = open_log(settings)
    locks = stage_locks(settings, log, stage_names, stop)
    if locks is None:
        log.close()
        return
    counters = CounterStore(settings.state_path)
    ledger = StageLedger(settings.state_path)
    runners: list[StageRunner] = []
    closers: list[Callable[[], None]] = [counters.close, ledger.close]
    stop_extra: Callable[[], None] | None = None
    try:
        for name in stage_names:
            stage, stage_closers = build_stage(name, settings)
            runners.append(
                StageRunner(log, stage, settings.stages.poll_max_records, counters, ledger)
            )
            closers.extend(stage_closers)
        # What exists now (modules, settings, the stages) lives as long as the process: out of
        # the cyclic collector's generations, full collections stop rescanning it (up to 4 us
        # per event in the validate stage, measured). It is still freed by reference counting.
        gc.freeze()
        for runner in runners:
            runner.start()
        if on_running is not None:
            stop_extra = on_running(RunningStages(settings, log, runners, counters, ledger))
        while not stop.wait(0.5):
            if os.environ.get("CLEW_WORKER_OF_SERVE") and os.getppid() != parent:
                logger.warning("clew serve is gone; stopping %s", ", ".join(stage_names))
                break
    finally:
        if stop_extra is not None:
            stop_extra()
        stop_runners(runners, STOP_TIMEOUT_S)
        for close in closers:
            close()
        log.close()
        for held in locks:
            held.close()


def stop_runners(runners: Sequence[StageRunner], timeout_s: float) -> None:
    """Ask every runner to stop at once, then wait for them, ``timeout_s`` in all."""
    for runner in runners:
        runner.request_stop()
    deadline = time.monotonic() + timeout_s
    for runner in runners:
        runner.stop(max(0.0, deadline - time.monotonic()))


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to the worker if `clew serve` dies, even by
    # SIGKILL, so an orphaned worker never keeps consuming.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)


# How `clew serve` groups stages into worker processes: the monitor is light and reads the
# same topics as the lake, so it shares the lake's process (one interpreter fewer in memory).
SERVE_WORKERS: tuple[tuple[str, ...], ...] = (
    ("validate",),
    ("lake", "monitor", "profiles-lake"),
    # Deliveries run on their own sender threads; sharing a process with the profiles stage
    # saves an interpreter (about 50 MB) and cannot slow the collector, which has its own.
    ("profiles", "destinations"),
)


def receive_settings(fd: int) -> Settings:
    """The settings `clew serve` wrote into the pipe whose read end is ``fd`` (read to the
    end, then closed)."""
    with os.fdopen(fd, "rb") as pipe:
        return Settings.model_validate_json(pipe.read())


def _send_settings(fd: int, payload: bytes) -> None:
    # A worker that dies before it reads closes the pipe; its restart sends them again.
    try:
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(payload)
    except BrokenPipeError:
        logger.warning("a stage worker exited before reading its settings")


class WorkerProcess:
    """One worker child of `clew serve` running ``stages``; restarted (with backoff) if it
    dies."""

    def __init__(self, stages: Sequence[str], settings: Settings) -> None:
        self.stages = tuple(stages)
        self.stage = "+".join(self.stages)
        self._settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._started_at = 0.0

    def start(self) -> None:
        env = {**WORKER_ALLOCATOR_ENV, **os.environ, "CLEW_WORKER_OF_SERVE": "1"}
        read_fd, write_fd = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "clew.stages",
                    *(arg for name in self.stages for arg in ("--stage", name)),
                    "--settings-fd",
                    str(read_fd),
                ],
                env=env,
                pass_fds=(read_fd,),
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self._started_at = time.monotonic()
        # Written from a thread: settings larger than the pipe's buffer would otherwise hold
        # the supervisor until the worker has started reading.
        threading.Thread(
            target=_send_settings,
            args=(write_fd, settings_json_with_secrets(self._settings)),
            name=f"clew-settings-{self.stage}",
            daemon=True,
        ).start()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def restart_if_dead(self) -> None:
        if self._proc is None or self.alive:
            return
        # Back off when a worker keeps dying right after it starts.
        if time.monotonic() - self._started_at < min(30.0, 0.5 * 2**self.restarts):
            return
        logger.error(
            "stage worker %s exited with %s; restarting it", self.stage, self._proc.returncode
        )
        self.restarts += 1
        self.start()

    def request_stop(self) -> None:
        """Send the worker SIGTERM without waiting (see :meth:`stop`)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S + 2) -> None:
        """SIGTERM the worker and wait up to ``timeout_s`` for it to exit; kill it then
        (what its stages did not commit is processed after the next start)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning(
                "stage worker %s did not exit in %g s; killing it", self.stage, timeout_s
            )
            self._proc.kill()
            self._proc.wait(10)
