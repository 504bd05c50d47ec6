"""Prometheus text exposition turned into numbers a dashboard can plot.

The server already exports everything as Prometheus text (summed over its worker processes), so the
dashboard reads that one source instead of reaching into the server's internals: what the page shows
is exactly what a Prometheus scraper would see. The arithmetic follows PromQL's (``increase`` with
counter-reset handling, then ``sum by``, then ``histogram_quantile`` with linear interpolation inside
a bucket) so the page and a Grafana board built from ``deploy/grafana`` agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = Mapping[str, str]
Sample = tuple[Labels, float]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One scrape: when it was taken and every sample, keyed by sample name (``x_bucket``, ``x_total``)
    and then by series (the text before the value, e.g. ``x_bucket{le="0.1",model="a"}``)."""

    time: float
    series: Mapping[str, Mapping[str, Sample]]

    def get(self, name: str) -> list[Sample]:
        found = self.series.get(name)
        return list(found.values()) if found else []


class TextParser:
    """Parses exposition text with prometheus_client's parser, remembering each series it has seen.

    The official parser costs tens of microseconds per line, which a server with a hundred model
    versions (thousands of bucket lines) would pay every second on its event loop's process. Between
    two scrapes the series are the same and only values move, so a series' name and labels are parsed
    once (by the official parser) and later lines cost a dictionary lookup and a ``float``.
    """

    def __init__(self, max_series: int = 200_000) -> None:
        self.max_series = max_series
        self._known: dict[str, tuple[str, dict[str, str]] | None] = {}

    def parse(self, text: str, time: float) -> Snapshot:
        """Parse one scrape; raises ``ValueError`` on malformed text."""
        series: dict[str, dict[str, Sample]] = {}
        if len(self._known) > self.max_series:  # label churn: forget rather than grow without end
            self._known.clear()
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            head, _, raw = line.rpartition(" ")
            known = self._known.get(head, False)
            if known is False:
                known = self._learn(line, head, raw)
            if known is None:  # a line the fast path cannot split (e.g. with a timestamp)
                for name, labels, value in _parse_line(line):
                    series.setdefault(name, {})[line] = (labels, value)
                continue
            name, labels = known
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"invalid sample value in metrics line: {line!r}") from None
            series.setdefault(name, {})[head] = (labels, value)
        return Snapshot(time=time, series=series)

    def _learn(self, line: str, head: str, raw: str) -> tuple[str, dict[str, str]] | None:
        parsed = _parse_line(line)
        known: tuple[str, dict[str, str]] | None = None
        if len(parsed) == 1:
            name, labels, value = parsed[0]
            try:
                same = float(raw) == value or (math.isnan(value) and math.isnan(float(raw)))
            except ValueError:
                same = False
            if same:
                known = (name, labels)
        self._known[head] = known
        return known


def _parse_line(line: str) -> list[tuple[str, dict[str, str], float]]:
    try:
        return [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(line + "\n")
            for sample in family.samples
        ]
    except ValueError:
        raise
    except Exception as exc:  # the parser raises assorted errors on bad input: one clear type
        raise ValueError(f"invalid metrics line {line!r}: {exc}") from None


def parse_snapshot(text: str, time: float) -> Snapshot:
    """Parse Prometheus text exposition once; raises ``ValueError`` on malformed text."""
    return TextParser().parse(text, time)


def increase(current: Snapshot, previous: Snapshot | None, name: str) -> list[Sample]:
    """Per series, how much a counter grew between two snapshots.

    Like PromQL a value that went down means the counter was reset (a worker restarted), so the whole
    current value is the increase. Unlike PromQL the reset is judged per histogram, not per bucket:
    when any bucket of a histogram went down, all its buckets restarted, even those that happen to
    be back above their old value. A series absent before started at zero, so all of it counts: a
    model loaded between two polls shows its first requests instead of losing them.
    """
    now = current.series.get(name)
    if not now:
        return []
    before = previous.series.get(name, {}) if previous is not None else {}
    rows = [(labels, value, before.get(head, (None, 0.0))[1]) for head, (labels, value) in now.items()]
    reset = {_group(labels) for labels, value, old in rows if value < old}
    if not reset:
        return [(labels, value - old) for labels, value, old in rows]
    return [(labels, value if _group(labels) in reset else value - old) for labels, value, old in rows]


def _group(labels: Labels) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "le"))


def _matches(labels: Labels, match: Mapping[str, Iterable[str]] | None) -> bool:
    if not match:
        return True
    return all(labels.get(k) in allowed for k, allowed in match.items())


def sum_by(
    samples: Iterable[Sample], by: tuple[str, ...] = (), match: Mapping[str, Iterable[str]] | None = None
) -> dict[tuple[str, ...], float]:
    """``sum by (by...)`` over the samples whose labels are in ``match``; the key is the label values."""
    out: dict[tuple[str, ...], float] = {}
    for labels, value in samples:
        if _matches(labels, match):
            key = tuple(labels.get(b, "") for b in by)
            out[key] = out.get(key, 0.0) + value
    return out


def total(samples: Iterable[Sample], match: Mapping[str, Iterable[str]] | None = None) -> float:
    return sum_by(samples, (), match).get((), 0.0)


def buckets_by(samples: Iterable[Sample], by: tuple[str, ...] = ()) -> dict[tuple[str, ...], list[tuple[float, float]]]:
    """``sum by (by..., le)`` of ``_bucket`` samples: per group, sorted ``(bound, cumulative count)``."""
    grouped: dict[tuple[str, ...], dict[float, float]] = {}
    for labels, value in samples:
        le = labels.get("le")
        if le is None:
            continue
        group = grouped.setdefault(tuple(labels.get(b, "") for b in by), {})
        bound = float(le)
        group[bound] = group.get(bound, 0.0) + value
    return {key: sorted(bounds.items()) for key, bounds in grouped.items()}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """PromQL's ``histogram_quantile``: the ``q``-quantile from cumulative buckets, NaN without data.

    Inside the bucket holding the rank the value is interpolated linearly, assuming observations
    spread evenly; a rank in the ``+Inf`` bucket answers the highest finite bound, as Prometheus does.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return math.nan
    # Sums of separately reset counters can dip by a hair: keep the counts monotonic like Prometheus.
    counts: list[float] = []
    running = 0.0
    for _, count in buckets:
        running = max(running, count)
        counts.append(running)
    observed = counts[-1]
    if observed <= 0:
        return math.nan
    rank = q * observed
    index = next(i for i, c in enumerate(counts) if c >= rank)
    if index == len(buckets) - 1:
        return buckets[-2][0]
    upper = buckets[index][0]
    if index == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = buckets[index - 1][0], counts[index - 1]
    inside = counts[index] - below
    if inside <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / inside


def bucket_counts(buckets: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Cumulative buckets to per-bucket counts ``(upper bound, observations in that bucket)``."""
    out: list[tuple[float, float]] = []
    below = 0.0
    for bound, count in buckets:
        out.append((bound, max(count - below, 0.0)))
        below = max(below, count)
    return out
