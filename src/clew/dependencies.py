"""The services a Clew process depends on (a Kafka cluster, a Redis, an object store), how
each is probed, and what ``/health`` says of them.

A :class:`Dependency` names a service as an operator knows it: what it is, where, and the
setting that points there. Its ``probe`` is cheap and bounded: it returns once the service
answered, or raises within about ``timeout_s`` saying why not. :func:`check_reachable` runs
every probe once at startup, so a process whose service is down exits within seconds with
one line naming it (:class:`UnreachableError`) instead of retrying for half a minute.
:class:`DependencyWatch` probes them in background threads while the process runs, so
``/health`` reads the last answer and never waits for a network round trip.

Which services a process uses is decided in :mod:`clew.backends`; the probes are the
backends' own (``Log.probe``, ``clew._redis_shared.probe``, ``LakeLocation.probe``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# How often a running process probes each service, and how long one probe may take.
PROBE_EVERY_S = 5.0
PROBE_TIMEOUT_S = 3.0
# The bound on every probe together at startup.
STARTUP_TIMEOUT_S = 8.0


@dataclass(frozen=True, slots=True)
class Dependency:
    """A service this process needs. ``name`` is the key in ``/health``'s ``dependencies``
    (``kafka``, ``redis``, ``object_storage``), ``label`` how people call it, ``address``
    where it is (never with a password), ``setting`` the setting that says so. ``probe``
    raises within about its timeout (seconds) when the service does not answer."""

    name: str
    label: str
    address: str
    setting: str
    probe: Callable[[float], None]


class UnreachableError(RuntimeError):
    """A service this process needs did not answer; the message names it, where it was
    looked for, the setting that says so, and why."""

    def __init__(self, dependency: Dependency, reason: str) -> None:
        super().__init__(
            f"cannot reach {dependency.label} at {dependency.address} "
            f"({dependency.setting}): {reason}"
        )
        self.dependency = dependency
        self.reason = reason


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def check_reachable(
    dependencies: Sequence[Dependency], timeout_s: float = STARTUP_TIMEOUT_S
) -> None:
    """Probe every dependency at once; raise :class:`UnreachableError` for the first (in
    order) that failed or did not answer within ``timeout_s``."""
    results: dict[str, str | None] = {}

    def run(dep: Dependency) -> None:
        try:
            dep.probe(min(timeout_s, PROBE_TIMEOUT_S * 2))
            results[dep.name] = None
        except Exception as exc:
            results[dep.name] = _reason(exc)

    threads = [
        threading.Thread(target=run, args=(d,), name=f"clew-probe-{d.name}", daemon=True)
        for d in dependencies
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for dep in dependencies:
        if dep.name not in results:
            raise UnreachableError(dep, f"no answer within {timeout_s:g} s")
        reason = results[dep.name]
        if reason is not None:
            raise UnreachableError(dep, reason)


class _Probed:
    """The last answer of one dependency; written by its probe thread only."""

    __slots__ = ("checked_at", "dependency", "in_flight_since", "ok", "reason", "since")

    def __init__(self, dependency: Dependency) -> None:
        self.dependency = dependency
        # Assumed reachable until a probe says otherwise: the process checked at startup.
        self.ok = True
        self.reason: str | None = None
        self.since = time.time()
        self.checked_at: float | None = None
        self.in_flight_since: float | None = None


class DependencyWatch:
    """Probes each dependency every ``every_s`` in a thread of its own (a service that hangs
    delays only its own probes). :meth:`state` answers at once from the last results; a
    probe still waiting past twice its timeout counts as unreachable."""

    def __init__(
        self,
        dependencies: Sequence[Dependency],
        every_s: float | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self._every_s = PROBE_EVERY_S if every_s is None else every_s
        self._timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
        self._probed = [_Probed(d) for d in dependencies]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._watch, args=(p,), name=f"clew-watch-{p.dependency.name}", daemon=True
            )
            for p in self._probed
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stops probing; a probe under way is left to end on its own (its thread is a
        daemon), so stopping never waits for a service."""
        self._stop.set()

    def _watch(self, p: _Probed) -> None:
        while not self._stop.is_set():
            p.in_flight_since = time.monotonic()
            try:
                p.dependency.probe(self._timeout_s)
                ok, reason = True, None
            except Exception as exc:
                ok, reason = False, _reason(exc)
            p.in_flight_since = None
            p.checked_at = time.time()
            if ok != p.ok:
                p.since = p.checked_at
            p.ok, p.reason = ok, reason
            self._stop.wait(self._every_s)

    def state(self) -> dict[str, dict[str, Any]]:
        """Per dependency: ``ok``, ``reason`` (why not, else None), ``address``, ``setting``,
        ``since`` (epoch seconds of the last change) and ``checked_at`` (of the last answer,
        None before the first)."""
        out: dict[str, dict[str, Any]] = {}
        now = time.monotonic()
        for p in self._probed:
            ok, reason = p.ok, p.reason
            started = p.in_flight_since
            if started is not None and now - started > 2 * self._timeout_s:
                ok, reason = False, f"no answer for {now - started:.0f} s"
            d = p.dependency
            out[d.name] = {
                "ok": ok,
                "reason": reason,
                "address": d.address,
                "setting": d.setting,
                "since": round(p.since, 3),
                "checked_at": None if p.checked_at is None else round(p.checked_at, 3),
            }
        return out

    @property
    def unreachable(self) -> list[str]:
        """The names of the dependencies not answering now."""
        return [name for name, s in self.state().items() if not s["ok"]]
