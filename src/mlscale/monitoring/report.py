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


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def _bin_labels(col: ColumnDrift) -> tuple[list[str], str, str]:
    """A label per bar, and the texts under the axis' two ends.

    Numeric bins come as edges (one more than the counts); categories and the distinct values of a
    few-valued numeric column come as labels (as many as the counts).
    """
    bins = col.reference.get("bins") or []
    counts = col.reference.get("counts") or []
    if len(bins) == len(counts) + 1:
        edges = [float(b) for b in bins]
        labels = [f"[{_fmt(edges[i])}, {_fmt(edges[i + 1])})" for i in range(len(counts))]
        return labels, _fmt(edges[0]), _fmt(edges[-1])
    labels = [str(b) for b in bins][: len(counts)]
    labels += [""] * (len(counts) - len(labels))
    return labels, ", ".join(labels[:8]), ""


def histogram_svg(col: ColumnDrift) -> str:
    """Grouped bars of reference and current shares per bin or category."""
    ref, cur = col.reference.get("counts") or [], col.current.get("counts") or []
    if not ref or len(ref) != len(cur):
        return ""
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
    labels, left, right = _bin_labels(col)
    for i, (r, c) in enumerate(shares):
        x = PAD + i * slot
        for offset, share, color, who in ((0, r, REF_COLOR, "reference"), (bar, c, CUR_COLOR, "current")):
            h = share / top * (HEIGHT - 2 * PAD)
            parts.append(
                f'<rect x="{x + offset:.1f}" y="{HEIGHT - PAD - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{html.escape(labels[i])} {who}: '
                f"{share:.3%}</title></rect>"
            )
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 6}" font-size="10">{html.escape(left)}</text>')
    if right:
        parts.append(
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 6}" font-size="10" text-anchor="end">{html.escape(right)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _row(col: ColumnDrift) -> str:
    """One table row: the verdict and histogram, or for a column not scored, why."""
    title = html.escape(col.title or "-") + ("" if col.exact or not col.scored else " (approx.)")
    if col.scored:
        css, verdict = ("drift" if col.drifted else "ok"), ("drift" if col.drifted else "no drift")
        chart = histogram_svg(col)
    else:
        css, verdict = "skip", ("empty" if col.empty else "not scored")
        chart = f'<span class="reason">{html.escape(col.reason)}</span>'
    return (
        f'<tr class="{css}"><td>{html.escape(col.column)}</td><td>{html.escape(col.kind)}</td>'
        f"<td>{title}</td><td>{_fmt(col.value)}</td><td>{_fmt(col.threshold)}</td><td><b>{verdict}</b></td>"
        f"<td>{chart}</td></tr>"
    )


def render_report(result: DatasetDrift, reference_name: str, current_name: str) -> str:
    """The whole report as one HTML string."""
    rows = [_row(col) for col in result.columns]
    left_out = len(result.columns) - len(result.scored_columns)
    summary = (
        f"{result.drifted_columns} of {len(result.scored_columns)} scored columns drifted "
        f"(share {result.share:.2f}, dataset drift when &ge; {result.drift_share:.2f}): "
        f"<b>{'dataset drift detected' if result.drifted else 'no dataset drift'}</b>"
        + (f"; {left_out} column{'s' if left_out != 1 else ''} not scored (see their rows)" if left_out else "")
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mlscale drift report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: 6px 10px; text-align: left; }}
tr.drift td:first-child {{ border-left: 4px solid #d62728; }} tr.ok td:first-child {{ border-left: 4px solid #2ca02c; }}
tr.skip td:first-child {{ border-left: 4px solid #999; }} .reason {{ color: #666; }}
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
