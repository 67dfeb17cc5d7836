"""How fast the console's pages answer on a data directory of many people.

Starts ``clew serve``, sends ``--people`` identifies (email, user id, anonymous id) and
``--tracks`` track events through the Tracking API, waits until every stage has drained, signs
in to the console with a token of every scope, then times ``--rounds`` GETs of every section
in the navigation, of a people search by email (to the profile page it lands on) and of that
profile page. Baselines in the same run: ``GET /health`` (the cheapest answer of the same
server) and the Profile API's read of the same person, so the ratios hold on a noisy machine.

    .venv/bin/python bench/console.py [--people 100000] [--tracks 100000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from rich.table import Table

from _serve import WRITE_KEY, BenchError, clew, clew_server, console, fail

_BATCH = 500
_DRAIN_TIMEOUT_S = 1800.0


def _send(url: str, people: int, tracks: int) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        batch: list[dict[str, object]] = []

        def flush() -> None:
            if batch:
                http.post("/v1/batch", json={"writeKey": WRITE_KEY, "batch": batch})
                batch.clear()

        for i in range(people):
            batch.append(
                {
                    "type": "identify",
                    "userId": f"user-{i}",
                    "anonymousId": f"anon-{i}",
                    "traits": {"email": f"person{i}@shop.test", "plan": ("free", "pro")[i % 2]},
                }
            )
            if len(batch) == _BATCH:
                flush()
        for i in range(tracks):
            batch.append(
                {
                    "type": "track",
                    "userId": f"user-{i % max(people, 1)}",
                    "event": ("Product Viewed", "Product Added", "Order Completed")[i % 3],
                    "properties": {"price": 10 + i % 90},
                }
            )
            if len(batch) == _BATCH:
                flush()
        flush()


def _drained(url: str) -> bool:
    text = httpx.get(url + "/metrics", timeout=10).text
    lags = re.findall(r"^clew_consumer_lag\{[^}]*\} (\d+)", text, re.MULTILINE)
    return bool(lags) and all(int(n) == 0 for n in lags)


def _sign_in(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    answer = client.post("/console/login", data={"token": token, "next": "/console"})
    if answer.status_code != 303 or "clew_console" not in client.cookies:
        raise BenchError(f"signing in to the console failed: {answer.status_code}")
    return client


def _time(client: httpx.Client, path: str, rounds: int, **kwargs: object) -> list[float]:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        answer = client.get(path, **kwargs)  # type: ignore[arg-type]
        times.append((time.perf_counter() - began) * 1000)
        if answer.status_code >= 400:
            raise BenchError(f"GET {path} answered {answer.status_code}: {answer.text[:300]}")
    return times


def _pages(client: httpx.Client) -> list[str]:
    """The sections in the navigation, and a people search landing on a profile page."""
    home = client.get("/console", follow_redirects=True).text
    return sorted(set(re.findall(r'<a href="(/console[^"]*)"', home)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    out = console()
    with tempfile.TemporaryDirectory(prefix="clew-bench-console-") as tmp:
        data_dir, logs = Path(tmp) / "data", Path(tmp)
        try:
            with clew_server(data_dir, logs) as server:
                began = time.monotonic()
                _send(server.url, args.people, args.tracks)
                token = _token(data_dir)
                last = f"/v1/profiles/email:person{args.people - 1}@shop.test"
                auth = {"Authorization": f"Bearer {token}"}
                while (
                    not _drained(server.url)
                    or httpx.get(server.url + last, headers=auth, timeout=10).status_code != 200
                ):
                    if time.monotonic() - began > _DRAIN_TIMEOUT_S:
                        raise BenchError("the stages did not drain in time")
                    time.sleep(1)
                loaded_s = time.monotonic() - began
                person = f"person{args.people // 2}@shop.test"
                results: list[tuple[str, list[float]]] = []
                client = _sign_in(server.url, token)
                try:
                    results.append(
                        ("GET /health (baseline)", _time(client, "/health", args.rounds))
                    )
                    results.append(
                        (
                            "Profile API read (baseline)",
                            _time(
                                client,
                                f"/v1/profiles/email:{person}",
                                args.rounds,
                                headers={"Authorization": f"Bearer {token}"},
                            ),
                        )
                    )
                    for path in _pages(client):
                        results.append((f"GET {path}", _time(client, path, args.rounds)))
                    search = client.get(f"/console/people?q=email:{person}", follow_redirects=True)
                    if search.status_code == 200 and search.url.path != "/console/people":
                        profile = search.url.path
                        results.append((f"GET {profile}", _time(client, profile, args.rounds)))
                    results.append(
                        (
                            "people search by email",
                            _time(
                                client,
                                f"/console/people?q=email:{person}",
                                args.rounds,
                                follow_redirects=True,
                            ),
                        )
                    )
                finally:
                    client.close()
        except BenchError as exc:
            fail(exc)
    base = statistics.median(results[1][1])
    table = Table(
        title=f"console pages, {args.people:,} people and {args.tracks:,} tracks "
        f"(loaded and drained in {loaded_s:.0f} s), {args.rounds} rounds"
    )
    for column in ("request", "p50 ms", "p99 ms", "p50 / Profile API read"):
        table.add_column(column, justify="left" if column == "request" else "right")
    for name, times in results:
        times.sort()
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        p50 = statistics.median(times)
        table.add_row(name, f"{p50:.1f}", f"{p99:.1f}", f"{p50 / base:.1f}x")
    out.print(table)


def _token(data_dir: Path) -> str:
    printed = clew("tokens", "create", "bench-console", "--scope", "all", "--data-dir", data_dir)
    return printed.split()[-1]


if __name__ == "__main__":
    main()
