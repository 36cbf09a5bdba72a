"""HTML building blocks of the report pages: the style sheet, inline figures and tables."""

from __future__ import annotations

import base64
import html
import io as _io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em} th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left}
.verdict{padding:.7em 1em;border-radius:6px;margin:1em 0} .ok{background:#e8f5e9;border:1px solid #a5d6a7}
.warn{background:#fff8e1;border:1px solid #ffe082} .muted{color:#666;font-size:.9em}
img{max-width:100%} pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:1em}
"""


def png(fig) -> str:
    """A matplotlib figure as an inline ``<img>`` (base64 PNG), the figure closed."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A data frame as an HTML table: text left-aligned, numbers by ``floatfmt``, non-finite numbers as a dash."""
    head = "".join(f"<th class='l'>{html.escape(str(c))}</th>" if df[c].dtype == object else f"<th>{html.escape(str(c))}</th>"
                   for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in df.columns:
            v = r[c]
            if isinstance(v, float | np.floating):
                cells.append(f"<td>{floatfmt.format(v)}</td>" if np.isfinite(v) else "<td>—</td>")
            else:
                cells.append(f"<td class='l'>{html.escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
