"""Prometheus metrics of one app, in a CollectorRegistry of its own.

Two apps in one process, as in tests, never share or clash.

What is exported (names in docs/protocol.md, "Metrics"):

* ``rtdecode_stage_latency_seconds{stage}`` histogram, observed for every published
  frame from ``Frame.latencies_ms``;
* the Broadcaster's counters: frames published / sent / dropped / skipped, per client
  while it is connected and in total, connections, rejections, hand-off losses;
* the source's counters, read from ``source.status()`` at scrape time: every numeric
  leaf becomes ``rtdecode_<path>`` (a counter, ``_total``, when it sits in a dict named
  ``counters`` or its key is a well-known monotonic count such as ``gaps``,
  ``reconnects`` or ``windows_skipped``; a gauge otherwise), and every ``latency_ms``
  table ``{stage: {p50, p95, p99}}`` becomes ``rtdecode_latency_quantile_ms``;
* ``rtdecode_health{state}``: 1 for the current health state (as on /health).

Threading: :meth:`ServerMetrics.observe_frame` runs on the producer's thread
(prometheus-client's metrics are thread-safe); collection runs on the asyncio loop when
/metrics is scraped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rtdecode.contracts import Frame
from rtdecode.server.broadcast import BroadcasterStats
from rtdecode.server.protocol import HEALTH_STATES

__all__ = ["ServerMetrics", "CONTENT_TYPE_LATEST", "KNOWN_COUNTERS"]

#: Leaf names in ``source.status()`` that are monotonic counts wherever they appear.
KNOWN_COUNTERS = frozenset(
    {
        "gaps",
        "lost_samples",
        "reconnects",
        "windows_skipped",
        "skipped",
        "samples",
        "nonfinite",
        "overflow",
        "backwards",
        "errors",
    }
)
#: Upper bounds in seconds: 1 ms to 10 s, dense where decoding latencies live.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Distinct stage labels accepted: a producer that invents stage names cannot blow up
#: the registry.
MAX_STAGES = 32
_QUANTILE_KEYS = {"p50": "0.5", "p90": "0.9", "p95": "0.95", "p99": "0.99"}
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]+")


def _metric_name(parts: list[str]) -> str:
    return _NAME_BAD.sub("_", "_".join(["rtdecode", *parts])).strip("_").lower()


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) or callable(getattr(value, "item", None)):
        try:
            x = float(value)
        except (TypeError, ValueError):
            return None
        return x if math.isfinite(x) else None
    return None


class ServerMetrics:
    """The Prometheus registry of one app.

    Parameters
    ----------
    broadcaster_stats : callable
        Returns ``Broadcaster.stats``.
    status : callable
        Returns the source's status dict; must not raise.
    health : callable
        Returns ``(state, reasons)``; must not raise.
    """

    def __init__(
        self,
        broadcaster_stats: Callable[[], BroadcasterStats],
        status: Callable[[], dict[str, Any]],
        health: Callable[[], tuple[str, list[str]]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._latency = Histogram(
            "rtdecode_stage_latency_seconds",
            "Per-stage latency of each published frame (from Frame.latencies_ms).",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._stages: set[str] = set()
        self.registry.register(_StateCollector(broadcaster_stats, status, health))

    def observe_frame(self, frame: Frame) -> None:
        """Record one frame's stage latencies (any thread)."""
        for stage, ms in frame.latencies_ms.items():
            x = _number(ms)
            if x is None or x < 0:
                continue
            stage = str(stage)
            if stage not in self._stages:
                if len(self._stages) >= MAX_STAGES:
                    continue
                self._stages.add(stage)
            self._latency.labels(stage=stage).observe(x / 1e3)

    def render(self) -> bytes:
        """The text exposition format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


class _StateCollector:
    """Reads the Broadcaster and the source at scrape time."""

    def __init__(
        self,
        broadcaster_stats: Callable[[], BroadcasterStats],
        status: Callable[[], dict[str, Any]],
        health: Callable[[], tuple[str, list[str]]],
    ) -> None:
        self._broadcaster_stats = broadcaster_stats
        self._status = status
        self._health = health

    def collect(self) -> Iterator[Metric]:
        yield from self._websocket_metrics(self._broadcaster_stats())
        yield from _status_metrics(self._status())
        state, _ = self._health()
        g = GaugeMetricFamily(
            "rtdecode_health", "1 for the service's current health state.", labels=["state"]
        )
        for s in HEALTH_STATES:
            g.add_metric([s], 1.0 if s == state else 0.0)
        yield g

    @staticmethod
    def _websocket_metrics(stats: BroadcasterStats) -> Iterator[Metric]:
        totals = {
            "published": "Frames handed to the broadcaster by the producer.",
            "sent": "Frames sent to viewers (all clients, including those gone).",
            "dropped": "Frames dropped because a viewer's queue was full.",
            "skipped": "Frames left out because a viewer asked for a lower rate.",
            "handoff_dropped": "Frames lost between the producer and a stalled event loop.",
            "unserved": "Frames published while the server was not running.",
        }
        for key, doc in totals.items():
            c = CounterMetricFamily(f"rtdecode_ws_frames_{key}", doc)
            c.add_metric([], getattr(stats, key))
            yield c
        for key, doc in {
            "connections": "Websocket viewers accepted (reconnects included).",
            "rejected": "Websocket viewers refused because max_clients were connected.",
        }.items():
            c = CounterMetricFamily(f"rtdecode_ws_{key}", doc)
            c.add_metric([], getattr(stats, key))
            yield c
        g = GaugeMetricFamily("rtdecode_ws_clients", "Websocket viewers connected now.")
        g.add_metric([], stats.n_clients)
        yield g
        per_client = {
            "sent": CounterMetricFamily(
                "rtdecode_ws_client_frames_sent", "Frames sent to this viewer.", labels=["client"]
            ),
            "dropped": CounterMetricFamily(
                "rtdecode_ws_client_frames_dropped",
                "Frames dropped for this viewer (its queue was full).",
                labels=["client"],
            ),
            "skipped": CounterMetricFamily(
                "rtdecode_ws_client_frames_skipped",
                "Frames left out by this viewer's rate limit.",
                labels=["client"],
            ),
        }
        queued = GaugeMetricFamily(
            "rtdecode_ws_client_queued", "Frames waiting in this viewer's queue.", labels=["client"]
        )
        for client in stats.clients:
            for key, family in per_client.items():
                family.add_metric([client.id], getattr(client, key))
            queued.add_metric([client.id], client.queued)
        yield from per_client.values()
        yield queued


def _status_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    """Metric families for the numeric leaves of ``source.status()``."""
    # Names the server exports itself are never taken from the status tree.
    seen: set[str] = {"rtdecode_health", "rtdecode_stage_latency_seconds"}
    quantiles = GaugeMetricFamily(
        "rtdecode_latency_quantile_ms",
        "Latency percentiles over the source's recent frames, in ms.",
        labels=["table", "stage", "quantile"],
    )
    seen.add("rtdecode_latency_quantile_ms")
    families: list[Metric] = [quantiles]

    def walk(node: dict[str, Any], path: list[str], in_counters: bool) -> None:
        for key, value in node.items():
            key = str(key)
            if key == "online_eval" and isinstance(value, dict):
                families.extend(_online_eval_metrics(value))
                seen.update(f.name for f in families[-4:])
                continue
            if key == "latency_ms" and isinstance(value, dict):
                table = ".".join(path) or "source"
                for stage, pct in value.items():
                    if not isinstance(pct, dict):
                        continue
                    for pkey, q in _QUANTILE_KEYS.items():
                        x = _number(pct.get(pkey))
                        if x is not None:
                            quantiles.add_metric([table, str(stage), q], x)
                continue
            if isinstance(value, dict):
                counters = key == "counters"
                walk(value, path if counters else [*path, key], in_counters or counters)
                continue
            x = _number(value)
            if x is None:
                continue
            name = _metric_name([*path, key])
            if name in seen or name.startswith("rtdecode_ws_"):
                continue
            seen.add(name)
            where = ".".join([*path, key])
            if (in_counters or key in KNOWN_COUNTERS) and x >= 0 and not isinstance(value, bool):
                family: Metric = CounterMetricFamily(name, f"Counter {where} of source.status().")
            else:
                family = GaugeMetricFamily(name, f"Value {where} of source.status().")
            family.add_metric([], x)
            families.append(family)

    walk(status, [], False)
    return iter(families)


def _online_eval_metrics(curve: dict[str, Any]) -> list[Metric]:
    """The session's decoding curve (``online_eval``): one series per lag bin."""
    windows = CounterMetricFamily(
        "rtdecode_online_eval_windows", "Windows with a known stimulus, per lag bin.",
        labels=["lag_s"],
    )
    top5 = GaugeMetricFamily(
        "rtdecode_online_eval_top5", "Top-5 accuracy of the true image, per lag bin.",
        labels=["lag_s"],
    )
    median_rank = GaugeMetricFamily(
        "rtdecode_online_eval_median_rank", "Median rank of the true image, per lag bin.",
        labels=["lag_s"],
    )
    for row in curve.get("per_lag") or []:
        label = [f"{float(row['lag_s']):.3f}"]
        windows.add_metric(label, float(row["n"]))
        top5.add_metric(label, float(row["top5"]))
        median_rank.add_metric(label, float(row["median_rank"]))
    chance = GaugeMetricFamily(
        "rtdecode_online_eval_chance_top5", "Top-5 accuracy of a random ranking."
    )
    x = _number(curve.get("chance_top5"))
    if x is not None:
        chance.add_metric([], x)
    return [windows, top5, median_rank, chance]
