"""Charts drawn on the server as inline SVG: no script, nothing to download.

Owns: horizontal stacked bars (one row per station, one colour per payment
method) with their legend. Colours are SVG presentation attributes, which
the console's Content-Security-Policy allows (inline style would not be).
Used by: the dashboard (server/console/pages/dashboard.py).

Amounts arrive in minor units (integers); only the drawing's coordinates
are fractions.
"""

from markupsafe import Markup, escape

PALETTE = ("#3b6fd8", "#28a17a", "#e0a030", "#c9503c", "#8a5cc2", "#4aa3c4", "#7a8699", "#b7b23a")
LABEL_WIDTH = 150
VALUE_WIDTH = 120
ROW_HEIGHT = 24
BAR_HEIGHT = 16
ROWS_MAX = 40


def stacked_bars(rows: list[tuple[str, dict[str, int]]], series: list[str], total_text, width: int = 760,
                 title: str = "") -> Markup:
    """rows: (label, {series name: minor units >= 0}); series: the order of
    colours; total_text(minor) writes a row's total at its end."""
    rows = rows[:ROWS_MAX]
    largest = max((sum(values.values()) for _, values in rows), default=0) or 1
    span = width - LABEL_WIDTH - VALUE_WIDTH
    height = ROW_HEIGHT * max(1, len(rows)) + 8
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">']
    for index, (label, values) in enumerate(rows):
        y = 4 + index * ROW_HEIGHT
        parts.append(f'<text x="0" y="{y + BAR_HEIGHT - 3}">{escape(label)}</text>')
        x = float(LABEL_WIDTH)
        for colour, name in enumerate(series):
            value = values.get(name, 0)
            if value <= 0:
                continue
            length = span * value / largest
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{max(length, 1):.1f}" height="{BAR_HEIGHT}" '
                         f'fill="{PALETTE[colour % len(PALETTE)]}"><title>{escape(name)}</title></rect>')
            x += length
        parts.append(f'<text x="{x + 6:.1f}" y="{y + BAR_HEIGHT - 3}">{escape(total_text(sum(values.values())))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def legend(series: list[str], label=lambda name: name) -> Markup:
    return Markup("".join(f'<span><i class="swatch-{index % len(PALETTE)}"></i>{escape(label(name))}</span>'
                          for index, name in enumerate(series)))
