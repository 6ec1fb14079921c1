"""Charts for the admin console, drawn on the server as inline SVG.

No script and no CDN, so they render under the pages' strict CSP
(``default-src 'none'``). The SVG holds only shapes and stretches to its
box (``preserveAspectRatio="none"``, strokes that do not scale); every
label is HTML around it, so text stays readable on a phone. Colours come
from the page's CSS variables, so dark mode needs nothing here. Each shape
carries a ``<title>`` (the exact figure on hover) and each chart an
``aria-label`` that says what it shows.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

W, H = 600, 160


def _top(values: Sequence[int]) -> int:
    """A round ceiling for the y axis: 1, 2, 5, 10, 20, 50..."""
    peak = max(values, default=0)
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= peak:
                return max(1, step * m)
        step *= 10


def _svg(label: str, body: str) -> Markup:
    grid = "".join(f'<line class="grid" x1="0" x2="{W}" y1="{y}" y2="{y}" '
                   f'vector-effect="non-scaling-stroke"/>' for y in (0, H / 2, H))
    return Markup(f'<svg class="chart" viewBox="0 0 {W} {H}" preserveAspectRatio="none" '
                  f'role="img" aria-label="{escape(label)}">{grid}{body}</svg>')


def line(points: Sequence[tuple[float, int]], start: float, end: float, step: float,
         label: str) -> tuple[Markup, int]:
    """A filled line of ``(time, value)`` points between ``start`` and ``end``;
    a gap longer than two ``step``s (no sample: no gateway running) breaks
    the line. Returns the chart and its y-axis top."""
    top = _top([v for _, v in points])
    span = max(end - start, 1.0)

    def xy(t: float, v: int) -> str:
        return f"{(t - start) / span * W:.1f},{H - v / top * H:.1f}"
    runs: list[list[tuple[float, int]]] = []
    for t, v in points:
        if not runs or t - runs[-1][-1][0] > 2 * step:
            runs.append([])
        runs[-1].append((t, v))
    body = ""
    for run in runs:
        pts = " ".join(xy(t, v) for t, v in run)
        first, last = xy(run[0][0], 0), xy(run[-1][0], 0)
        body += (f'<polygon class="area" points="{first} {pts} {last}"/>'
                 f'<polyline class="line" points="{pts}" vector-effect="non-scaling-stroke"/>')
        if len(run) == 1:       # a lone sample still shows
            x = (run[0][0] - start) / span * W
            body += (f'<rect class="bar" x="{x - 2:.1f}" y="{H - run[0][1] / top * H:.1f}" '
                     f'width="4" height="{run[0][1] / top * H:.1f}"/>')
    return _svg(label, body), top


def bars(columns: Sequence[tuple[str, Sequence[int]]], label: str,
         kinds: Sequence[str]) -> tuple[Markup, int]:
    """Stacked columns, one per ``(title, values)``, the values drawn
    bottom-up with the CSS classes ``kinds``. Returns the chart and its top."""
    top = _top([sum(values) for _, values in columns])
    width = W / max(len(columns), 1)
    gap = min(width * 0.2, 6)
    body = ""
    for i, (title, values) in enumerate(columns):
        y = float(H)
        parts = ", ".join(f"{v} {k}" for v, k in zip(values, kinds))
        body += f"<g><title>{escape(title)}: {escape(parts)}</title>"
        for value, kind in zip(values, kinds):
            h = value / top * H
            if h:
                y -= h
                body += (f'<rect class="{kind}" x="{i * width + gap / 2:.1f}" y="{y:.1f}" '
                         f'width="{width - gap:.1f}" height="{h:.1f}"/>')
        body += "</g>"
    return _svg(label, body), top


def shares(counts: dict[str, int], limit: int = 6,
           ranked: bool = True) -> list[dict[str, object]]:
    """The rows of a horizontal bar list: the largest ``limit`` entries and
    the rest as "Other" (``ranked``), or every entry in the order given,
    each with its share of the whole and its bar's width (the largest full)."""
    total = sum(counts.values())
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if ranked \
        else list(counts.items())
    if ranked and len(rows) > limit:
        rows = rows[:limit] + [("Other", sum(n for _, n in rows[limit:]))]
    widest = max((n for _, n in rows), default=0)
    return [{"name": name, "n": n, "percent": round(100 * n / total) if total else 0,
             "width": max(1, round(100 * n / widest)) if n else 0} for name, n in rows]
