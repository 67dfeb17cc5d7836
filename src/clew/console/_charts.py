"""Charts drawn on the server as SVG: no chart library, no script, and they print and
screenshot as seen. Colours come from the stylesheet (classes ``s0`` … ``s7``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

_W, _H, _PAD = 640, 160, 24
SERIES_CLASSES = 8


def stacked_bars(
    labels: Sequence[str], series: Mapping[str, Sequence[float]], title: str
) -> Markup:
    """Bars per label, one segment per series (in ``series`` order), with a legend. Empty
    segments are not drawn: below, three segments and two legend keys.

    >>> svg = stacked_bars(["10:00", "10:01"], {"track": [3, 1], "page": [1, 0]}, "events")
    >>> svg.count("<rect"), "10:01 track: 1" in svg
    (5, True)
    """
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    width = (_W - _PAD) / max(len(labels), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H + 40}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for i, label in enumerate(labels):
        y = float(_H)
        for n, (name, values) in enumerate(series.items()):
            if not values[i]:
                continue
            h = values[i] / top * (_H - _PAD)
            y -= h
            parts.append(
                f'<rect class="s{n % SERIES_CLASSES}" x="{_PAD + i * width:.1f}" y="{y:.1f}" '
                f'width="{max(width - 1, 1):.1f}" height="{h:.1f}">'
                f"<title>{escape(label)} {escape(name)}: {values[i]:g}</title></rect>"
            )
    parts.append(f'<text class="axis" x="0" y="{_PAD - 8}">{top:g}</text>')
    if labels:
        parts.append(f'<text class="axis" x="{_PAD}" y="{_H + 14}">{escape(labels[0])}</text>')
        parts.append(
            f'<text class="axis" x="{_W}" y="{_H + 14}" text-anchor="end">'
            f"{escape(labels[-1])}</text>"
        )
    for n, name in enumerate(series):
        x = _PAD + (n % 4) * 150
        y = _H + 28 + (n // 4) * 12
        parts.append(
            f'<rect class="s{n % SERIES_CLASSES}" x="{x}" y="{y - 8}" width="8" height="8"/>'
            f'<text class="legend" x="{x + 12}" y="{y}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def line(labels: Sequence[str], values: Sequence[float], title: str) -> Markup:
    """One series as a line over ``labels`` (sizes over time, say).

    >>> "<polyline" in line(["a", "b"], [1, 2], "size")
    True
    """
    top = max(values, default=0) or 1
    step = (_W - _PAD) / max(len(values) - 1, 1)
    points = " ".join(
        f"{_PAD + i * step:.1f},{_H - v / top * (_H - _PAD):.1f}" for i, v in enumerate(values)
    )
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H + 20}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<polyline class="line s0" points="{points}"/>',
        f'<text class="axis" x="0" y="{_PAD - 8}">{top:g}</text>',
    ]
    if labels:
        parts.append(f'<text class="axis" x="{_PAD}" y="{_H + 14}">{escape(labels[0])}</text>')
        parts.append(
            f'<text class="axis" x="{_W}" y="{_H + 14}" text-anchor="end">'
            f"{escape(labels[-1])}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
