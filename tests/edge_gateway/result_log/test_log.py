"""The result log on real files: replay, crash recovery, damage, truncation and group commit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_gateway.result_log import Checkpointed, ResultLog, ResultRecord
from edge_gateway.result_log.records import HEADER_SIZE, encode_record

from .records_helpers import same_records

REPO = Path(__file__).resolve().parents[3]


def _result(task_id: str, job_id: str = "job", version: int = 1, floats: int = 1000) -> ResultRecord:
    seed = sum(task_id.encode())
    return ResultRecord(job_id, version, task_id, 3.0, {"w": np.full(floats, seed, np.float32), "b": np.ones(2)})


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.log"))


async def _reopen(directory: Path, **options: int) -> tuple[ResultLog, list[ResultRecord]]:
    log = ResultLog(directory, **options)
    return log, [record async for record in log.replay()]


async def test_records_appended_are_replayed_after_close(tmp_path: Path) -> None:
    log, replayed = await _reopen(tmp_path)
    assert replayed == []
    records = [_result(f"t{i}", floats=10**i) for i in range(5)]
    for record in records:
        await log.append(record)
    await log.close()

    log, replayed = await _reopen(tmp_path)
    same_records(replayed, records)
    await log.append(_result("more"))
    await log.close()
    log, replayed = await _reopen(tmp_path)
    same_records(replayed, [*records, _result("more")])
    await log.close()


async def test_a_task_id_appended_twice_is_replayed_once(tmp_path: Path) -> None:
    log, _ = await _reopen(tmp_path)
    await log.append(_result("t1"))
    await log.append(_result("t1"))
    await log.append(_result("t1", job_id="other-job"))
    await log.close()
    log, replayed = await _reopen(tmp_path)
    assert [(r.job_id, r.task_id) for r in replayed] == [("job", "t1"), ("other-job", "t1")]
    await log.close()


def test_every_acknowledged_result_survives_kill_9(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.edge_gateway.result_log.crash_appender", str(tmp_path), "16", "100000"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        while len(acknowledged) < 400 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
        assert len(acknowledged) >= 400, "the appender stopped early"
        os.kill(child.pid, signal.SIGKILL)  # mid-stream: appends and flushes are in progress
        acknowledged += [line.strip() for line in child.stdout]  # printed before it died
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(_segments(tmp_path)) > 1  # it rolled segments (1 MiB each) before it was killed

    async def check() -> None:
        log, replayed = await _reopen(tmp_path)
        found = {r.task_id for r in replayed}
        assert set(acknowledged) <= found, f"lost {sorted(set(acknowledged) - found)[:5]}"
        await log.append(_result("after-crash"))
        await log.close()
        log, replayed = await _reopen(tmp_path)
        assert {r.task_id for r in replayed} == found | {"after-crash"}
        await log.close()

    asyncio.run(check())


async def test_a_torn_tail_is_cut_and_appends_follow(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log, _ = await _reopen(tmp_path)
    records = [_result(f"t{i}") for i in range(3)]
    for record in records:
        await log.append(record)
    await log.close()
    (segment,) = _segments(tmp_path)
    whole = segment.stat().st_size
    with segment.open("ab") as f:  # a crash half-way through the next append
        f.write(encode_record(_result("torn"))[: HEADER_SIZE + 100])

    with caplog.at_level(logging.WARNING, logger="edge_gateway.result_log"):
        log, replayed = await _reopen(tmp_path)
    same_records(replayed, records)
    assert segment.stat().st_size == whole
    assert any("torn tail" in r.getMessage() for r in caplog.records)
    await log.append(_result("next"))
    await log.close()
    log, replayed = await _reopen(tmp_path)
    same_records(replayed, [*records, _result("next")])
    await log.close()


async def test_a_flipped_bit_loses_only_its_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log, _ = await _reopen(tmp_path)
    records = [_result(f"t{i}") for i in range(5)]
    for record in records:
        await log.append(record)
    await log.close()
    (segment,) = _segments(tmp_path)
    data = bytearray(segment.read_bytes())
    frame = len(encode_record(records[0]))  # all five frames are the same size
    data[2 * frame + HEADER_SIZE + 40] ^= 0x10
    segment.write_bytes(bytes(data))

    with caplog.at_level(logging.ERROR, logger="edge_gateway.result_log"):
        log, replayed = await _reopen(tmp_path)
    same_records(replayed, records[:2] + records[3:])
    assert segment.read_bytes() == bytes(data)  # damage in the middle is reported, not cut
    assert any("checksum mismatch" in r.getMessage() for r in caplog.records)
    await log.close()


async def test_truncate_deletes_only_segments_whose_results_are_all_checkpointed(tmp_path: Path) -> None:
    frame = len(encode_record(_result("x")))
    options = {"segment_bytes": 2 * frame + 200}  # two results per segment, and the marks
    log, _ = await _reopen(tmp_path, **options)
    for task_id, job_id in [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("c1", "C")]:
        await log.append(_result(task_id, job_id))
    _only_a, mixed, newest = log.segment_names()

    await log.truncate("A", 1)
    assert log.segment_names() == [mixed, newest]
    await log.append(_result("c2", "C"))
    await log.append(_result("c3", "C"))  # rolls: the new segment begins with A's mark
    assert log.segment_names()[:2] == [mixed, newest] and len(log.segment_names()) == 3
    await log.truncate("C", 1)  # deletes the segment holding A's mark as written by truncate
    assert log.segment_names()[0] == mixed and newest not in log.segment_names()
    await log.close()
    assert [p.name for p in _segments(tmp_path)] == log.segment_names()

    # a3 is not replayed from the segment still kept for b1: A's mark is at the head of a newer one.
    log, replayed = await _reopen(tmp_path, **options)
    assert [r.task_id for r in replayed] == ["b1"]
    await log.truncate("B", 1)
    assert len(log.segment_names()) == 1
    await log.truncate("B", 1)  # once is enough
    await log.close()
    log, replayed = await _reopen(tmp_path, **options)
    assert replayed == []
    await log.close()


async def test_concurrent_appends_share_flushes(tmp_path: Path) -> None:
    log, _ = await _reopen(tmp_path)
    await asyncio.gather(*(log.append(_result(f"t{i}", floats=10)) for i in range(1000)))
    assert log.appended == 1000
    assert log.flushes <= 20, log.flushes
    await log.close()
    log, replayed = await _reopen(tmp_path)
    assert len(replayed) == 1000
    await log.close()


@pytest.mark.parametrize(("options", "least"), [({"batch_records": 100}, 10), ({"batch_bytes": 40_000}, 100)])
async def test_a_flush_is_bounded_by_count_and_by_bytes(tmp_path: Path, options: dict[str, int], least: int) -> None:
    log, _ = await _reopen(tmp_path, **options)
    # 1000 records of about 4 kB: at most 100 a flush by count, at most about 10 by bytes.
    await asyncio.gather(*(log.append(_result(f"t{i}", floats=1000)) for i in range(1000)))
    assert least <= log.flushes <= 2 * least, log.flushes
    await log.close()


async def test_a_record_that_cannot_be_encoded_fails_alone(tmp_path: Path) -> None:
    log, _ = await _reopen(tmp_path)
    bad = ResultRecord("job", 1, "bad", 1.0, {"w": np.zeros(3, np.int64)})
    outcomes = await asyncio.gather(
        log.append(_result("good-1")), log.append(bad), log.append(_result("good-2")), return_exceptions=True
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], ValueError)
    await log.close()
    log, replayed = await _reopen(tmp_path)
    assert [r.task_id for r in replayed] == ["good-1", "good-2"]
    await log.close()


async def test_checkpoint_marks_are_records_too(tmp_path: Path) -> None:
    log, _ = await _reopen(tmp_path)
    await log.append(_result("old", version=1))
    await log.append(Checkpointed("job", 1))
    await log.append(_result("new", version=2))
    await log.close()
    log, replayed = await _reopen(tmp_path)
    assert [r.task_id for r in replayed] == ["new"]
    await log.close()


async def test_appends_and_truncation_may_go_on_while_replaying(tmp_path: Path) -> None:
    frame = len(encode_record(_result("x")))
    options = {"segment_bytes": frame + 100}  # one result per segment
    log, _ = await _reopen(tmp_path, **options)
    for task_id, job_id in [("a1", "A"), ("b1", "B"), ("b2", "B")]:
        await log.append(_result(task_id, job_id))
    await log.close()

    log = ResultLog(tmp_path, **options)
    seen = []
    async for record in log.replay():
        seen.append(record.task_id)
        if record.task_id == "a1":
            await log.append(_result("c1", "C"))  # goes to the new segment, not into this replay
            await log.truncate("B", 1)  # deletes the segments not read yet
    assert seen == ["a1"]
    await log.close()
    log, replayed = await _reopen(tmp_path, **options)
    assert [r.task_id for r in replayed] == ["a1", "c1"]
    await log.close()


_FILE_TOO_BIG = """
import asyncio, resource, signal, sys
import numpy as np
from edge_gateway.result_log import ResultLog, ResultLogBroken, ResultRecord

async def main():
    log = ResultLog(sys.argv[1])
    async for _ in log.replay():
        pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
    update = {"w": np.ones(25_000, np.float32)}  # 100 kB: the third append passes the limit
    for i in range(5):
        try:
            await log.append(ResultRecord("job", 1, f"t{i}", 1.0, update))
            print("ok", i)
        except ResultLogBroken:
            print("broken", i)
    await log.close()

asyncio.run(main())
"""


async def test_after_a_write_error_every_append_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FILE_TOO_BIG, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == ["ok 0", "ok 1", "broken 2", "broken 3", "broken 4"]
    assert "writing the result log failed" in done.stderr
    log, replayed = await _reopen(tmp_path)  # the partial third record is a torn tail
    assert [r.task_id for r in replayed] == ["t0", "t1"]
    await log.close()
