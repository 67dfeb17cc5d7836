"""`clew demo`: the simulated shop's events all land in the lake, and the SQL answers agree
with what the simulator says it sent."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from _support import wait_for
from clew.background import BackgroundServer, free_port
from clew.config import Settings
from clew.demo import (
    CTA_CLICK_THROUGH,
    MOST_VIEWED_PAGE,
    PURCHASE_FUNNEL,
    QUESTIONS,
    TOP_PRODUCTS,
    DemoResult,
    example_plan_dir,
    run_demo,
    simulate,
)
from clew.demo.web_site import example_site_dir
from clew.lake.query import Lake

DOCS = Path(__file__).resolve().parents[1] / "docs" / "questions.md"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", port=free_port())
    s.lake.flush_interval_ms = 100
    return s


def check_answers(result: DemoResult, settings: Settings) -> None:
    truth = result.truth
    assert result.events_sent == truth.events > 0
    lake = Lake(settings.lake_path)
    assert lake.sql("SELECT count(*) FROM events").rows == [(result.events_sent,)]

    pages = result.answers[MOST_VIEWED_PAGE.text].rows
    assert dict(pages) == dict(truth.page_views)
    assert pages[0][1] == max(truth.page_views.values())

    [(saw_home, clicked, ctr)] = result.answers[CTA_CLICK_THROUGH.text].rows
    assert (saw_home, clicked) == (len(truth.home_visitors), len(truth.cta_clickers))
    assert 0 < clicked < saw_home
    assert ctr == pytest.approx(100 * clicked / saw_home, abs=0.05)

    funnel = result.answers[PURCHASE_FUNNEL.text].rows
    assert [(step, n) for step, n, _ in funnel] == [(s, len(v)) for s, v in truth.funnel.items()]

    top = result.answers[TOP_PRODUCTS.text].rows
    assert [r[3] for r in top] == pytest.approx(
        sorted((c / 100 for c in truth.revenue_cents.values()), reverse=True)[: len(top)]
    )
    for product_id, _name, units, revenue in top:
        assert units == truth.units[product_id]
        assert revenue == pytest.approx(truth.revenue_cents[product_id] / 100)


def test_demo_starts_clew_and_answers_match_what_was_sent(settings: Settings) -> None:
    out = io.StringIO()
    result = run_demo(settings, Console(file=out, width=120), users=40, seed=3)

    assert result.url != f"http://{settings.host}:{settings.port}"  # a server of its own
    check_answers(result, settings)
    printed = out.getvalue()
    for q in QUESTIONS:
        assert q.text in printed


def test_demo_uses_the_running_server(settings: Settings) -> None:
    with BackgroundServer(settings) as srv:
        result = run_demo(settings, Console(file=io.StringIO()), users=25, seed=11)
        assert result.url == srv.url
        check_answers(result, settings)
        wait_for(srv.clew.drained, timeout_s=60)
    # The demo's emails are real-looking addresses the default rules keep, so the README's
    # quickstart query over customer_profiles shows them.
    traffic = simulate(25, 11, datetime.now(UTC), "emails")  # the same people as the run
    sent = {e["traits"]["email"] for e in traffic.events if "email" in e.get("traits", {})}
    rows = Lake(settings.lake_path).sql("SELECT email FROM customer_profiles").rows
    assert sent and {r[0] for r in rows if r[0] is not None} == sent


def test_traffic_is_deterministic_and_spread_over_the_last_week() -> None:
    now = datetime(2025, 3, 10, 12, tzinfo=UTC)
    a, b = simulate(30, 5, now, "run"), simulate(30, 5, now, "run")
    assert a.events == b.events
    assert a.events != simulate(30, 6, now, "run").events
    assert len({e["messageId"] for e in a.events}) == len(a.events)
    days = {e["timestamp"][:10] for e in a.events}
    assert max(days) <= "2025-03-10" and min(days) >= "2025-03-03"
    assert len(days) >= 6
    identified = {e["anonymousId"] for e in a.events if "userId" in e}
    assert identified and len(identified) < len({e["anonymousId"] for e in a.events})


def test_docs_show_the_demo_sql_verbatim() -> None:
    text = DOCS.read_text()
    for q in QUESTIONS:
        assert f'clew sql "{q.sql}"' in text


def test_the_shipped_examples_are_found() -> None:
    """The demo's tracking plan and the example web site, found from the code (in the wheel
    they sit at clew/examples/, in a checkout at examples/)."""
    plan = example_plan_dir()
    assert plan is not None and (plan / "plan.yaml").is_file()
    site = example_site_dir()
    assert site is not None and (site / "index.html").is_file()
