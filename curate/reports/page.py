"""Building blocks of the self-contained HTML report pages: escaping, tables, embedded figures."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

STYLE = """body{font:14px sans-serif;margin:2em;max-width:1200px;color:#222}h2{border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
td.n{text-align:right}.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{width:180px;border:1px solid #ddd;padding:4px;font-size:12px}.card img{display:block;margin:auto}
.kept{background:#eef8ee}.removed{background:#fbeeee}.note{color:#a33}.warn{background:#fff3cd;padding:4px 8px}
code{background:#f4f4f4}"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure_html(figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<p><img class='figure' alt='{esc(alt)}' src='data:image/png;base64,{data}'></p>"


def subplots(*args, **kwargs):
    """A figure and its axes without pyplot: no global state, no backend switch (PNG through Agg)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=kwargs.pop("figsize"))
    return figure, figure.subplots(*args, **kwargs)


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    cells = ["".join(f"<td class='n'>{v}</td>" if isinstance(v, (int, float)) else f"<td>{esc(v or '')}</td>"
                     for v in row) for row in rows]
    body = "".join(f"<tr>{row}</tr>" for row in cells)
    return f"<table>{f'<tr>{head}</tr>' if any(header) else ''}{body}</table>"
