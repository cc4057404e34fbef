"""`mlp monitor report`: the last windows of a monitor as text, JSON or one self-contained HTML file.

The HTML report draws, per watched feature, the reference's histogram against the last tested
window's with matplotlib (Agg backend, no display), embedded as base64 PNG, beside the
feature's p-value and statistic; no external file, script or font is referenced.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mlp.monitors.store import read_last_window, read_reports


def load_reports(state_dir: Path, last: int = 20) -> list[dict[str, Any]]:
    return read_reports(state_dir, last)


def _when(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def as_text(name: str, reports: list[dict[str, Any]]) -> str:
    if not reports:
        return f"monitor {name}: no window tested yet\n"
    lines = [f"monitor {name}: last {len(reports)} window(s)"]
    for r in reports:
        lines.append(
            f"  #{r['index']} {_when(r['start_ms'])}..{_when(r['end_ms'])} {r['rows']} rows {r['status']}: {r['message']}"
        )
    last = next((r for r in reversed(reports) if r.get("drift")), None)
    if last:
        lines.append(f"  features (window #{last['index']}, corrected threshold {last['drift']['threshold']:.4g}):")
        for f, p in sorted(last["drift"]["p_values"].items()):
            mark = "DRIFT" if f in last["drift"]["drifted"] else "ok"
            lines.append(f"    {f:<24} p={p:.4g}  stat={last['drift']['distances'].get(f, float('nan')):.4g}  {mark}")
    active = reports[-1].get("active") or []
    lines.append(f"  active alerts: {', '.join(active) if active else 'none'}")
    return "\n".join(lines) + "\n"


def _column(table: pa.Table | None, name: str) -> np.ndarray | None:
    if table is None or name not in table.column_names:
        return None
    v = table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
    return v[~np.isnan(v)]


def _histogram_png(feature: str, ref: np.ndarray | None, cur: np.ndarray | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=90)
    both = [a for a in (ref, cur) if a is not None and a.size]
    bins: Any = np.histogram_bin_edges(np.concatenate(both), bins=30).tolist() if both else 10
    if ref is not None and ref.size:
        ax.hist(ref, bins=bins, density=True, alpha=0.5, label="reference", color="#1f77b4")
    if cur is not None and cur.size:
        ax.hist(cur, bins=bins, density=True, alpha=0.5, label="current", color="#d62728")
    ax.set_title(feature, fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def as_html(name: str, reports: list[dict[str, Any]], reference: pa.Table | None, state_dir: Path) -> str:
    current = read_last_window(state_dir)
    last = next((r for r in reversed(reports) if r.get("drift")), None)
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>mlp monitor {esc(name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}.drift{color:#b00;font-weight:bold}"
        ".grid{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;padding:6px}</style>",
        f"</head><body><h1>Monitor {esc(name)}</h1>",
    ]
    if not reports:
        parts.append("<p>No window tested yet.</p>")
    else:
        parts.append(
            "<h2>Windows</h2><table><tr><th>#</th><th>from</th><th>to</th><th>rows</th><th>status</th><th>result</th></tr>"
        )
        for r in reports:
            parts.append(
                f"<tr><td>{r['index']}</td><td>{_when(r['start_ms'])}</td><td>{_when(r['end_ms'])}</td>"
                f"<td>{r['rows']}</td><td>{esc(r['status'])}</td><td>{esc(r['message'])}</td></tr>"
            )
        parts.append("</table>")
        parts.append(f"<p>Active alerts: {esc(', '.join(reports[-1].get('active') or []) or 'none')}</p>")
    if last:
        d = last["drift"]
        parts.append(f"<h2>Features, window #{last['index']}</h2>")
        parts.append(f"<p>Corrected significance threshold: {d['threshold']:.4g}</p><div class='grid'>")
        for f in sorted(d["p_values"] or d["distances"]):
            p = d["p_values"].get(f)
            png = _histogram_png(f, _column(reference, f), _column(current, f))
            cls = "drift" if f in d["drifted"] else ""
            ptxt = f"p-value {p:.4g}" if p is not None else f"statistic {d['distances'].get(f, float('nan')):.4g}"
            parts.append(
                f"<div class='card'><img alt='{esc(f)} histogram' src='data:image/png;base64,{png}'>"
                f"<div class='{cls}'>{esc(f)}: {ptxt}{' (drift)' if cls else ''}</div></div>"
            )
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "".join(parts)
