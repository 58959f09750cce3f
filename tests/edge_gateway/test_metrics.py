"""The pure parts of the gateway's metrics: refusal reasons, round times, what a scrape reads."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from device_protocol.errors import BodyTooLarge, InvalidRequest, MalformedBody
from edge_gateway.acknowledged import MemoryResults
from edge_gateway.config import ServerConfig
from edge_gateway.coordinator import Coordinator
from edge_gateway.leaf.metrics import LeafMetrics, endpoint_label, error_kind
from edge_gateway.server import Server
from edge_gateway.server_metrics import ServerMetrics


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_refusal_reasons_come_from_the_error_kind() -> None:
    assert error_kind(BodyTooLarge("x")) == "body_too_large"
    assert error_kind(MalformedBody("x")) == "malformed_body"
    assert error_kind(InvalidRequest("x")) == "invalid_request"


def test_an_endpoint_label_is_one_of_a_fixed_set() -> None:
    assert [endpoint_label(e) for e in ("job", "task", "result", "selection")] == ["job", "task", "result", "selection"]
    assert endpoint_label("x" * 1000) == endpoint_label("../etc") == "other"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_round_lasts_from_its_start_to_its_version() -> None:
    clock = Clock()
    metrics = ServerMetrics(Coordinator(boot="b"), clock)
    metrics.round_started("job-1")
    clock.now += 4.0
    metrics.version_made("job-1", "sync", done=False)  # round 1: 4 s
    clock.now += 6.0
    metrics.version_made("job-1", "sync", done=True)  # round 2: 6 s, and the job is done
    clock.now += 50.0
    metrics.version_made("job-1", "sync", done=True)  # a version after the end has no round to measure
    metrics.version_made("resumed", "async", done=False)  # resumed after a restart: no start known
    found = samples(metrics.registry)
    assert found["edgefl_server_round_duration_seconds_count", (("mode", "sync"),)] == 2
    assert found["edgefl_server_round_duration_seconds_sum", (("mode", "sync"),)] == 10.0
    assert ("edgefl_server_round_duration_seconds_count", (("mode", "async"),)) not in found


def test_leaves_report_as_long_as_they_sync() -> None:
    clock = Clock()
    metrics = ServerMetrics(Coordinator(boot="b"), clock)
    metrics.leaf_synced("C11")
    metrics.leaf_synced("C12")
    clock.now += 10.0
    metrics.leaf_synced("C12")
    found = samples(metrics.registry)
    assert found["edgefl_server_leaf_reporting", (("leaf", "C11"),)] == 0
    assert found["edgefl_server_leaf_reporting", (("leaf", "C12"),)] == 1
    assert found["edgefl_server_jobs", (("status", "running"),)] == 0


def test_a_leaf_without_a_result_log_reports_no_log_depth() -> None:
    metrics = LeafMetrics()
    metrics.watch(MemoryResults(), lambda: 7, lambda: False)
    found = samples(metrics.registry)
    assert found["edgefl_leaf_results_undelivered", ()] == 7
    assert found["edgefl_leaf_server_connected", ()] == 0
    assert not any(name.startswith("edgefl_leaf_result_log") for name, _ in found)
    assert found["process_resident_memory_bytes", ()] > 0


async def test_the_server_serves_metrics_on_its_api_port_and_a_metrics_only_one(tmp_path: Path) -> None:
    server = Server(ServerConfig(host="127.0.0.1", http_port=0, link_port=0, metrics_port=0, data_dir=tmp_path))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            for port in (server.http_port, server.metrics_port):
                async with http.get(f"http://127.0.0.1:{port}/metrics") as reply:
                    assert reply.status == 200 and "edgefl_server_jobs" in await reply.text()
            # A monitoring network given only the metrics port does not reach the job API.
            async with http.get(f"http://127.0.0.1:{server.metrics_port}/api/jobs") as reply:
                assert reply.status == 404
    finally:
        await server.stop()
