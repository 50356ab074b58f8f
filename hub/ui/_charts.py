"""Inline SVG line charts rendered on the server (no JavaScript chart library)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d")
THRESHOLD_COLOR = "#6b7280"
FIRED_COLOR = "#dc2626"


@dataclass(frozen=True, kw_only=True)
class Series:
    name: str
    points: Sequence[tuple[datetime, float]]
    fired: Sequence[bool] = field(default_factory=tuple)
    threshold: bool = False  # drawn dashed and grey


def _ts(t: datetime) -> float:
    """Seconds since the epoch; SQLite hands times back naive, and every stored time is UTC."""
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()


def _fmt(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 10_000:
        return f"{value:.3g}"
    return f"{value:.2e}"


def line_chart(
    *, title: str, series: Sequence[Series], width: int = 640, height: int = 220
) -> Markup:
    """One chart: time on x, value on y; threshold series dashed; fired points in red."""
    drawn = [s for s in series if s.points]
    left, right, top, bottom = 56, 12, 24, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg" data-series="{len(drawn)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="15" class="chart-title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="chart-area"/>',
    ]
    if not drawn:
        parts.append(f'<text x="{left + 8}" y="{top + 20}">no data yet</text></svg>')
        return Markup("".join(parts))
    times = [_ts(t) for s in drawn for t, _ in s.points]
    values = [v for s in drawn for _, v in s.points]
    t0, t1 = min(times), max(times)
    lo, hi = min(0.0, min(values)), max(values)
    hi = hi + (hi - lo) * 0.1 or 1.0

    def x(t: datetime) -> float:
        return left + (plot_w * (_ts(t) - t0) / (t1 - t0) if t1 > t0 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    for frac in (0.0, 0.5, 1.0):
        v = lo + (hi - lo) * frac
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'class="grid"/><text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" '
            f'class="tick">{_fmt(v)}</text>'
        )
    first = datetime.fromtimestamp(t0, UTC).strftime("%H:%M:%S")
    last = datetime.fromtimestamp(t1, UTC).strftime("%H:%M:%S UTC")
    base = top + plot_h + 14
    parts.append(f'<text x="{left}" y="{base}" class="tick">{first}</text>')
    parts.append(
        f'<text x="{left + plot_w}" y="{base}" text-anchor="end" class="tick">{last}</text>'
    )
    legend_x = left
    colour_index = 0
    for s in drawn:
        if s.threshold:
            colour, dash = THRESHOLD_COLOR, ' stroke-dasharray="6 4"'
        else:
            colour, dash = PALETTE[colour_index % len(PALETTE)], ""
            colour_index += 1
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s.points)
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.6"'
            f'{dash} data-name="{escape(s.name)}"/>'
        )
        for (t, v), fired in zip(s.points, s.fired, strict=False):
            if fired:
                parts.append(
                    f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3.5" fill="{FIRED_COLOR}" '
                    f'class="fired"><title>{escape(s.name)}: {_fmt(v)} (fired)</title></circle>'
                )
        parts.append(
            f'<text x="{legend_x}" y="{height - 8}" fill="{colour}" class="legend">'
            f"{escape(s.name)}</text>"
        )
        legend_x += 14 + 7 * len(s.name)
    parts.append("</svg>")
    return Markup("".join(parts))
