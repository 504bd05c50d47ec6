"""A self-contained HTML drift report: inline SVG histograms, no script, nothing fetched.

Each column gets reference-vs-current bars on shared bins (as shares, so windows of different
sizes compare), and its test, value, threshold and verdict.
"""

from __future__ import annotations

import html
import math
import time

from mlscale.monitoring.drift import ColumnDrift, DatasetDrift

REF_COLOR, CUR_COLOR = "#4c78a8", "#f58518"
WIDTH, HEIGHT, PAD = 420, 150, 24


def _fmt(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def histogram_svg(col: ColumnDrift) -> str:
    """Grouped bars of reference and current shares per bin or category."""
    ref, cur = col.reference.get("counts", []), col.current.get("counts", [])
    if not ref:
        return "<svg></svg>"
    ref_total, cur_total = max(sum(ref), 1), max(sum(cur), 1)
    shares = [(r / ref_total, c / cur_total) for r, c in zip(ref, cur, strict=True)]
    top = max(max(pair) for pair in shares) or 1.0
    slot = (WIDTH - 2 * PAD) / len(shares)
    bar = max(slot / 2 - 1, 0.5)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="histogram of {html.escape(col.column)}">',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>',
    ]
    labels = col.reference.get("bins", [])
    for i, (r, c) in enumerate(shares):
        x = PAD + i * slot
        for offset, share, color, who in ((0, r, REF_COLOR, "reference"), (bar, c, CUR_COLOR, "current")):
            h = share / top * (HEIGHT - 2 * PAD)
            label = (
                labels[i]
                if col.kind == "cat" or col.reference.get("bins") is None
                else (f"[{_fmt(labels[i])}, {_fmt(labels[i + 1])})")
            )
            parts.append(
                f'<rect x="{x + offset:.1f}" y="{HEIGHT - PAD - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{html.escape(str(label))} {who}: '
                f"{share:.3%}</title></rect>"
            )
    if col.kind == "num" and labels:
        parts.append(f'<text x="{PAD}" y="{HEIGHT - 6}" font-size="10">{_fmt(labels[0])}</text>')
        parts.append(
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 6}" font-size="10" text-anchor="end">{_fmt(labels[-1])}</text>'
        )
    elif labels:
        shown = ", ".join(html.escape(str(x)) for x in labels[:8])
        parts.append(f'<text x="{PAD}" y="{HEIGHT - 6}" font-size="10">{shown}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_report(result: DatasetDrift, reference_name: str, current_name: str) -> str:
    """The whole report as one HTML string."""
    rows = []
    for col in result.columns:
        verdict = "drift" if col.drifted else "no drift"
        rows.append(
            f'<tr class="{"drift" if col.drifted else "ok"}"><td>{html.escape(col.column)}</td>'
            f"<td>{col.kind}</td><td>{html.escape(col.title)}{'' if col.exact else ' (approx.)'}</td>"
            f"<td>{_fmt(col.value)}</td><td>{_fmt(col.threshold)}</td><td><b>{verdict}</b></td>"
            f"<td>{histogram_svg(col)}</td></tr>"
        )
    summary = (
        f"{result.drifted_columns} of {len(result.columns)} columns drifted "
        f"(share {result.share:.2f}, dataset drift when &ge; {result.drift_share:.2f}): "
        f"<b>{'dataset drift detected' if result.drifted else 'no dataset drift'}</b>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mlscale drift report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: 6px 10px; text-align: left; }}
tr.drift td:first-child {{ border-left: 4px solid #d62728; }} tr.ok td:first-child {{ border-left: 4px solid #2ca02c; }}
.legend span {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }}
</style></head><body>
<h1>Data drift report</h1>
<p>Reference: <code>{html.escape(reference_name)}</code> ({result.reference_rows} rows) &middot;
Current: <code>{html.escape(current_name)}</code> ({result.current_rows} rows) &middot;
{time.strftime("%Y-%m-%d %H:%M:%S %Z")}</p>
<p>{summary}</p>
<p class="legend"><span style="background:{REF_COLOR}"></span>reference
<span style="background:{CUR_COLOR}"></span>current (share of rows per bin)</p>
<table><thead><tr><th>column</th><th>type</th><th>test</th><th>value</th><th>threshold</th><th>verdict</th>
<th>reference vs current</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table></body></html>
"""
