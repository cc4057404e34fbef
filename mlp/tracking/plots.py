"""Metric history plots with matplotlib: PNG, or an HTML page with the SVG inline (no script, no network)."""

from __future__ import annotations

import html
import io
from pathlib import Path


def history_plot(series: dict[str, list[tuple[int, float]]], metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        for name, points in series.items():
            points = sorted(points)
            ax.plot(
                [p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None, label=name
            )
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by step")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        if out.suffix.lower() == ".png":
            fig.savefig(out, format="png")
            return
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        svg = buf.getvalue()
        svg = svg[svg.find("<svg") :]
        title = html.escape(f"{metric}: {', '.join(series)}")
        out.write_text(
            f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f"<body><h1>{title}</h1>\n{svg}\n</body></html>\n",
            encoding="utf-8",
        )
    finally:
        plt.close(fig)
