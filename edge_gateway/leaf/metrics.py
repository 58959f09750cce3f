"""A leaf's metrics: the device funnel, refusals, task turnaround, bytes, its link and result log.

Counted where the leaf decides an answer (service.py, endpoints.py); what the leaf already keeps
(undelivered results, the log's segments, the link's state) is read at scrape time. Labels take
values from fixed sets only: endpoints, protocol statuses, verdicts, error kinds. Never a device
or job id.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from device_protocol.errors import ProtocolError
from internal_link.request_streams import UploadLedger

from ..acknowledged import AcknowledgedResults
from ..metrics_http import process_registry
from ..result_log import ResultLog

if TYPE_CHECKING:
    from .session_service import SessionService

# From a few seconds of training on a phone to a task's whole lease (minutes).
TURNAROUND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


_ENDPOINTS = frozenset({"job", "task", "result", "selection"})


def endpoint_label(endpoint: str) -> str:
    """The endpoint as a label value: a peer's unknown endpoint name is not one (`other`)."""
    return endpoint if endpoint in _ENDPOINTS else "other"


def error_kind(exc: ProtocolError) -> str:
    """A refusal reason from the error's class: `BodyTooLarge` -> `body_too_large`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


class LeafMetrics:
    """One leaf's registry and the counts its answer paths move.

    Plain ints and `collections.Counter`s, read by a collector at scrape time: a
    `prometheus_client` counter takes a lock and a label lookup per increment, several per device
    request (the leaf's hot path). Only the turnaround histogram, moved once per counted result, is
    a `prometheus_client` instrument.
    """

    def __init__(self) -> None:
        self.registry = process_registry()
        self.answers: collections.Counter[tuple[str, str]] = collections.Counter()  # (endpoint, status)
        self.tasks_issued = 0
        self.results: collections.Counter[str] = collections.Counter()  # by verdict
        self.refusals: collections.Counter[str] = collections.Counter()  # by reason
        self.received_bytes = 0
        self.sent_bytes = 0
        self.turnaround = Histogram(
            "edgefl_leaf_task_turnaround_seconds",
            "From a task handed out to its result counted",
            buckets=TURNAROUND_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LeafCounts(self))

    def watch(
        self, results: AcknowledgedResults, undelivered: Callable[[], int], server_connected: Callable[[], bool]
    ) -> None:
        """Read these at every scrape: the result log, the results not delivered, the server link."""
        self.registry.register(_LeafState(results, undelivered, server_connected))

    def watch_sessions(self, sessions: SessionService) -> None:
        """Read the live sessions at every scrape: how many in each phase, and what closed them."""
        self.registry.register(_LeafSessions(sessions))

    def watch_streams(self, counts: collections.Counter[str], open_streams: Callable[[], int]) -> None:
        """Read the proxy link's streamed answers (large task downloads) at every scrape."""
        self.registry.register(_LeafStreams(counts, open_streams))

    def watch_uploads(self, ledger: UploadLedger, open_uploads: Callable[[], int]) -> None:
        """Read the proxy link's streamed requests (large result uploads) at every scrape."""
        self.registry.register(_LeafUploads(ledger, open_uploads))


class _LeafUploads(Collector):
    def __init__(self, ledger: UploadLedger, open_uploads: Callable[[], int]) -> None:
        self._ledger = ledger
        self._open = open_uploads

    def collect(self) -> Iterator[Metric]:
        uploads = CounterMetricFamily(
            "edgefl_leaf_upload_streams",
            "Requests received from the proxy in chunks (a large result), by outcome: started, then "
            "completed, cancelled (the device left), stopped (this leaf stopping) or lost (the link "
            "dropped); refused: no room to receive them",
            labels=["outcome"],
        )
        for outcome, count in list(self._ledger.outcomes.items()):
            uploads.add_metric([outcome], count)
        yield uploads
        yield GaugeMetricFamily(
            "edgefl_leaf_upload_streams_open", "Streamed requests being received", value=self._open()
        )
        yield GaugeMetricFamily(
            "edgefl_leaf_upload_streams_bytes",
            "Bytes of the streamed requests being received (their whole bodies, bounded)",
            value=self._ledger.held,
        )


class _LeafStreams(Collector):
    def __init__(self, counts: collections.Counter[str], open_streams: Callable[[], int]) -> None:
        self._counts = counts
        self._open = open_streams

    def collect(self) -> Iterator[Metric]:
        streams = CounterMetricFamily(
            "edgefl_leaf_download_streams",
            "Answers streamed to the proxy in chunks, by outcome: started, then completed, cancelled "
            "(the device left) or lost (the link dropped)",
            labels=["outcome"],
        )
        for outcome, count in list(self._counts.items()):
            streams.add_metric([outcome], count)
        yield streams
        yield GaugeMetricFamily(
            "edgefl_leaf_download_streams_open", "Streamed answers with bytes left to send", value=self._open()
        )


class _LeafCounts(Collector):
    def __init__(self, metrics: LeafMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        answers = CounterMetricFamily(
            "edgefl_leaf_answers", "Answers to devices, by endpoint and protocol status", labels=["endpoint", "status"]
        )
        for (endpoint, status), count in list(m.answers.items()):
            answers.add_metric([endpoint, status], count)
        yield answers
        yield CounterMetricFamily(
            "edgefl_leaf_tasks_issued", "Tasks handed to devices (new leases)", value=m.tasks_issued
        )
        results = CounterMetricFamily(
            "edgefl_leaf_results", "Results judged, by verdict (result_verdicts.py)", labels=["verdict"]
        )
        for verdict, count in list(m.results.items()):
            results.add_metric([verdict], count)
        yield results
        refusals = CounterMetricFamily(
            "edgefl_leaf_refusals",
            "Device requests refused: malformed ones by error kind, results by why they did not count",
            labels=["reason"],
        )
        for reason, count in list(m.refusals.items()):
            refusals.add_metric([reason], count)
        yield refusals
        yield CounterMetricFamily(
            "edgefl_leaf_received_bytes", "Bytes of device request bodies", value=m.received_bytes
        )
        yield CounterMetricFamily("edgefl_leaf_sent_bytes", "Bytes of answers to devices", value=m.sent_bytes)


class _LeafState(Collector):
    def __init__(
        self, results: AcknowledgedResults, undelivered: Callable[[], int], server_connected: Callable[[], bool]
    ) -> None:
        self._results = results
        self._undelivered = undelivered
        self._server_connected = server_connected

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "edgefl_leaf_results_undelivered",
            "Acknowledged results the server has not taken yet",
            value=self._undelivered(),
        )
        yield GaugeMetricFamily(
            "edgefl_leaf_server_connected",
            "1 while the link to the server is connected",
            value=self._server_connected(),
        )
        if isinstance(self._results, ResultLog):  # benchmarks run without a log
            log = self._results
            yield GaugeMetricFamily(
                "edgefl_leaf_result_log_pending", "Results waiting for the log's next fsync", value=log.pending()
            )
            yield GaugeMetricFamily(
                "edgefl_leaf_result_log_segments",
                "Segment files of the write-ahead log",
                value=len(log.segment_names()),
            )
            yield CounterMetricFamily(
                "edgefl_leaf_result_log_appended", "Records made durable in the log", value=log.appended
            )


class _LeafSessions(Collector):
    def __init__(self, sessions: SessionService) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        service = self._sessions
        phases = GaugeMetricFamily(
            "edgefl_leaf_sessions", "Live sessions (PROTOCOL.md §9) held by this leaf, by phase", labels=["phase"]
        )
        for phase, count in service.table.phase_counts().items():
            phases.add_metric([phase.value], count)
        yield phases
        yield CounterMetricFamily(
            "edgefl_leaf_sessions_silent", "Sessions closed for missing heartbeats", value=service.silent
        )
        yield CounterMetricFamily(
            "edgefl_leaf_session_bad_messages",
            "Malformed or out-of-order session messages, answered with `error`",
            value=service.bad_messages,
        )
        yield CounterMetricFamily(
            "edgefl_leaf_session_rounds_pushed",
            "`round` pushed to a session the moment it was selected",
            value=service.rounds_pushed,
        )
