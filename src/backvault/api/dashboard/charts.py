"""Charts as inline SVG, drawn on the server: no script, no external fetch, readable without styles.

Colours come from CSS classes (``state-completed``...), so the stylesheet owns the palette; every
bar carries a ``<title>`` that browsers show on hover and screen readers read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date

from markupsafe import Markup, escape

# The order states are stacked in, bottom up; states not listed go on top in name order.
STATE_ORDER = (
    "COMPLETED",
    "PARTIAL",
    "RUNNING",
    "PENDING",
    "CREATED",
    "ABORTING",
    "ABORTED",
    "EXPIRED",
    "FAILED",
)
_CLASS_SAFE = re.compile(r"[^a-z0-9-]")


def state_class(state: str) -> str:
    """The CSS class of a job state (letters, digits and dashes only)."""
    return "state-" + _CLASS_SAFE.sub("-", state.lower())


def stacked_bars(days: Sequence[tuple[date, dict[str, int]]], *, title: str) -> Markup:
    """Draw one bar per day, stacked by state, with a y axis, day labels and a legend."""
    width, height = 680, 240
    left, right, top, bottom = 40, 10, 10, 58
    plot_width, plot_height = width - left - right, height - top - bottom
    totals = [sum(counts.values()) for _, counts in days]
    step = _tick_step(max([*totals, 1]))
    peak = -(-max([*totals, 1]) // step) * step  # the axis ends on a tick
    slot = plot_width / max(len(days), 1)
    bar = max(slot * 0.7, 2.0)
    states = _ordered_states({state for _, counts in days for state in counts})
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in range(0, peak + 1, step):
        y = top + plot_height - plot_height * tick / peak
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    for index, (day, counts) in enumerate(days):
        x = left + index * slot + (slot - bar) / 2
        base = float(top + plot_height)
        for state in states:
            count = counts.get(state, 0)
            if not count:
                continue
            segment = plot_height * count / peak
            base -= segment
            label = f"{day.isoformat()}: {count} {state}"
            parts.append(
                f'<rect class="{state_class(state)}" x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" '
                f'height="{segment:.1f}"><title>{escape(label)}</title></rect>'
            )
        parts.append(
            f'<text class="axis" x="{x + bar / 2:.1f}" y="{top + plot_height + 14}" '
            f'text-anchor="middle">{day.strftime("%d")}</text>'
        )
    parts.append(
        f'<text class="axis" x="{left}" y="{top + plot_height + 28}">'
        f"{escape(days[0][0].strftime('%b %d') if days else '')} – "
        f"{escape(days[-1][0].strftime('%b %d') if days else '')} (UTC)</text>"
    )
    legend_x = float(left)
    for state in states or ("COMPLETED",):
        swatch = f'x="{legend_x:.1f}" y="{height - 16}" width="10" height="10"'
        parts.append(f'<rect class="{state_class(state)}" {swatch}/>')
        parts.append(f'<text class="legend" x="{legend_x + 14:.1f}" y="{height - 7}">{escape(state)}</text>')
        legend_x += 24 + 7.5 * len(state)
    parts.append("</svg>")
    return Markup("".join(parts))


def horizontal_bars(
    items: Sequence[tuple[str, int]], *, title: str, format_value: Callable[[int], str]
) -> Markup:
    """Draw one labelled horizontal bar per item (for example stored bytes per vault)."""
    row, label_width, value_width, width = 26, 170, 90, 680
    height = max(len(items), 1) * row + 12
    peak = max([value for _, value in items] + [1])
    plot_width = width - label_width - value_width
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    if not items:
        parts.append(f'<text class="axis" x="0" y="18">{escape("nothing yet")}</text>')
    for index, (label, value) in enumerate(items):
        y = 6 + index * row
        length = max(plot_width * value / peak, 1.0 if value else 0.0)
        shown = label if len(label) <= 24 else label[:23] + "…"
        parts.append(
            f'<text class="label" x="{label_width - 8}" y="{y + 15}" text-anchor="end">{escape(shown)}</text>'
        )
        parts.append(
            f'<rect class="bar" x="{label_width}" y="{y + 3}" width="{length:.1f}" height="{row - 8}">'
            f"<title>{escape(label)}: {escape(format_value(value))}</title></rect>"
        )
        value_x = label_width + length + 6
        parts.append(
            f'<text class="value" x="{value_x:.1f}" y="{y + 15}">{escape(format_value(value))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _tick_step(peak: int) -> int:
    """A step of 1, 2 or 5 times a power of ten giving at most five ticks up to ``peak``."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            if peak <= 4 * factor * magnitude:
                return factor * magnitude
        magnitude *= 10


def _ordered_states(states: set[str]) -> list[str]:
    known = [state for state in STATE_ORDER if state in states]
    return known + sorted(states - set(STATE_ORDER))
