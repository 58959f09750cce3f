"""The proxy's `/metrics` in Prometheus' text format, served on its own port (`--metrics-port`).

A custom collector reads at scrape time the plain counts the request path keeps (`stats.py`,
the HTTP front-end's byte and refusal counts) and the links' health: nothing on the request path
touches a metric object or a lock. Not on the devices' port: devices must not read the gateway's
counts, and with several workers sharing that port a scrape would reach any one of them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from .http1 import HttpServer, Reply, Request, Response, invalid_request
from .stats import ProxyStats
from .upstreams import Upstreams

# The HTTP front-end's own refusals, by the HTTP status it answers (http1/connection.py).
FRONT_END_REFUSALS = {
    200: "no_memory_for_body",  # RETRY: the body budget is full now
    400: "malformed_http",
    408: "slow_client",
    413: "body_too_large",
    431: "head_too_large",
    505: "http_version",
}


class ProxyCollector(Collector):
    """Reads one worker's counts and its links when scraped."""

    def __init__(self, stats: ProxyStats, http: HttpServer, upstreams: Upstreams) -> None:
        self._stats = stats
        self._http = http
        self._upstreams = upstreams

    def collect(self) -> Iterator[Metric]:
        stats, http = self._stats, self._http
        answered = CounterMetricFamily(
            "edgefl_proxy_answers",
            "Leaf answers passed on to devices, by endpoint and HTTP status",
            labels=["endpoint", "code"],
        )
        for (endpoint, code), count in list(stats.answered.items()):
            answered.add_metric([endpoint, str(code)], count)
        yield answered
        unanswered = CounterMetricFamily(
            "edgefl_proxy_unanswered",
            "Devices told RETRY because no leaf answered, by endpoint and cause",
            labels=["endpoint", "cause"],
        )
        for (endpoint, cause), count in list(stats.unanswered.items()):
            unanswered.add_metric([endpoint, cause], count)
        yield unanswered
        refused = CounterMetricFamily(
            "edgefl_proxy_refusals", "Requests the proxy refused before any leaf saw them, by reason", labels=["reason"]
        )
        reasons = dict(stats.refused)
        for status, count in list(http.refused.items()):
            reason = FRONT_END_REFUSALS.get(status, f"http_{status}")
            reasons[reason] = reasons.get(reason, 0) + count
        for reason, count in sorted(reasons.items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily("edgefl_proxy_received_bytes", "Bytes read from devices", value=http.bytes_in)
        yield CounterMetricFamily("edgefl_proxy_sent_bytes", "Bytes written to devices", value=http.bytes_out)
        yield GaugeMetricFamily("edgefl_proxy_connections", "Open device connections", value=len(http.connections))
        yield GaugeMetricFamily("edgefl_proxy_sessions", "Live device sessions (/ws)", value=stats.sessions)
        connected = GaugeMetricFamily(
            "edgefl_proxy_leaf_connected", "1 while the link to the leaf is connected", labels=["leaf"]
        )
        healthy = GaugeMetricFamily(
            "edgefl_proxy_leaf_healthy", "1 while the leaf is connected and answers health pings", labels=["leaf"]
        )
        # Leaf names come from the lcp map: a fixed, small set.
        for upstream in self._upstreams.members:
            connected.add_metric([upstream.leaf.name], float(upstream.client.connected))
            healthy.add_metric([upstream.leaf.name], float(upstream.healthy))
        yield connected
        yield healthy


def proxy_registry(stats: ProxyStats, http: HttpServer, upstreams: Upstreams) -> CollectorRegistry:
    """This worker's metrics: its counts and links, and its process (memory, CPU, open files)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ProxyCollector(stats, http, upstreams))
    ProcessCollector(registry=registry)
    return registry


_GET = frozenset({"GET", "HEAD"})


class MetricsPage:
    """The dispatcher of the metrics port: `GET /metrics`, and JSON errors for anything else."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def __call__(self, request: Request, reply: Reply) -> None:
        if request.path != b"/metrics":
            reply(invalid_request(404, "only /metrics is served on this port"))
        elif request.method not in _GET:
            response = invalid_request(405, f"method {request.method} not allowed on /metrics; use GET")
            response.headers = (("Allow", "GET, HEAD"),)
            reply(response)
        else:
            reply(Response(200, CONTENT_TYPE_LATEST, generate_latest(self._registry)))
