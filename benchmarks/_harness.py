"""Plumbing shared by the benchmarks: processes started, pinned and stopped by PID, their CPU time,
wrk runs under the anchor load, and how busy the (shared, 2-core) machine was meanwhile.

Nothing here knows about a particular benchmark. Every process is started with `Procs.start` and
stopped by its own PID (SIGTERM, then SIGKILL after a grace); `Procs` is a context manager, so a
benchmark that fails half-way still stops what it started.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ANCHORS = Path(os.environ.get("EDGEFL_ANCHORS", "/work/shared/anchors"))
# The anchors' own venv (nvflare 2.9.0, aiohttp, uvloop), made by anchors/setup.sh.
ANCHOR_PY = os.environ.get("ANCHOR_VENV", "/tmp/anchors/venv") + "/bin/python"
PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOADGEN_CPU = "0"  # wrk, as in anchors/run.sh
SUT_CPU = "1"  # every process under test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ticks(pid: int) -> int:
    """user+sys clock ticks of `pid` and all its live descendants (nginx workers, proxy workers)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total = int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(_ticks(int(c)) for c in children)
    return total


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_s(self) -> float:
        return _ticks(self.pid) / CLK_TCK

    def stop(self, grace: float = 15.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} (pid {self.pid}) ignored SIGTERM for {grace:.0f} s: SIGKILL", flush=True)
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode or 0)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Procs:
    """Every process a benchmark started, stopped in reverse order on exit (by PID only)."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        prefix = ["taskset", "-c", cpus] if cpus else []
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                prefix + argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> int:
        code = proc.stop()
        self.procs.remove(proc)
        return code

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()

    def __enter__(self) -> Procs:
        # SIGTERM to the driver stops its children too (SIGINT already raises KeyboardInterrupt).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_file(proc: Proc, path: Path, timeout: float = 90.0) -> dict[str, Any]:
    """A ready file's JSON, failing early (with the log tail) if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_bytes()))
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f} s:\n{proc.log_tail()}")


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(proc: Proc | None, url: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """Poll `url` with GET until it answers at all (any HTTP status)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            return http("GET", url, timeout=2.0)
        except OSError as exc:
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: {last}")


# -- machine load ---------------------------------------------------------------------------------
def _cpu_stat() -> dict[str, tuple[int, int]]:
    """Per line of /proc/stat: (busy ticks incl. steal, total ticks)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *v = line.split()
            n = [int(x) for x in v[:8]]
            busy = n[0] + n[1] + n[2] + n[5] + n[6] + n[7]
            out[name] = (busy, busy + n[3] + n[4])
    return out


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def quiet_wait(max_s: float, threshold: float = 0.15, own: list[Proc] | None = None) -> float:
    """Wait (≤ max_s) until processes other than `own` use < `threshold` of a core; the seconds waited."""
    waited = 0.0
    while True:
        a, own_a = _cpu_stat()["cpu"][0], sum(p.cpu_s() for p in own or [])
        time.sleep(1.0)
        b, own_b = _cpu_stat()["cpu"][0], sum(p.cpu_s() for p in own or [])
        busy = (b - a) / CLK_TCK - (own_b - own_a)
        if busy < threshold or waited >= max_s:
            return waited
        if waited == 0:
            print(
                f"  machine busy ({busy:.2f} cores used by others, load {loadavg()}); waiting up to {max_s:.0f} s",
                flush=True,
            )
        time.sleep(4.0)
        waited += 5.0


def settle(procs: list[Proc], max_s: float, threshold: float = 0.08) -> float:
    """Wait (≤ max_s) until `procs` together use < `threshold` of a core: a row measured after another
    must not share its core with that row's after-work (e.g. a leaf still expiring waiting devices)."""
    start = time.monotonic()
    while True:
        a = sum(p.cpu_s() for p in procs)
        time.sleep(1.0)
        if sum(p.cpu_s() for p in procs) - a < threshold or time.monotonic() - start >= max_s:
            return round(time.monotonic() - start - 1.0, 1)


# -- wrk --------------------------------------------------------------------------------------------
@dataclass
class WrkRun:
    result: dict[str, Any]  # the ANCHOR_JSON line of anchors/task.lua
    wrk_cpu_s: float
    proc_cpu_s: dict[str, float]  # process name -> CPU seconds during the run
    foreign_cpu_s: float  # CPU of all cores that was neither wrk nor any process of ours
    idle_ours_cpu_s: float  # CPU of our processes that are not measured in this run (other rows)
    cpu_busy: dict[str, float]  # cpu0/cpu1 share of busy ticks
    loadavg: str
    quiet_wait_s: float

    def us_per_request(self) -> dict[str, float]:
        n = self.result["requests"] or 1
        return {k: v * 1e6 / n for k, v in self.proc_cpu_s.items()}

    def errors(self) -> int:
        r = self.result
        return r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"] + r["non2xx"]


def wrk(
    url: str,
    conns: int,
    duration: str,
    procs: dict[str, Proc],
    *,
    pin: bool,
    path: str = "/task?job_id=j1",
    script: Path | None = None,
    quiet_max: float = 0.0,
    all_procs: list[Proc] | None = None,
    log: Path | None = None,
) -> WrkRun:
    """One wrk run under the anchor load (anchors/task.lua, `path` via WRK_PATH), with CPU accounting."""
    waited = quiet_wait(quiet_max, own=all_procs) if quiet_max > 0 else 0.0
    load = loadavg()
    script = script or ANCHORS / "task.lua"
    argv = (["taskset", "-c", LOADGEN_CPU] if pin else []) + [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{duration}",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    before = {k: p.cpu_s() for k, p in procs.items()}
    others0 = sum(p.cpu_s() for p in all_procs or [])
    stat0 = _cpu_stat()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, "WRK_PATH": path})
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    stat1 = _cpu_stat()
    after = {k: p.cpu_s() for k, p in procs.items()}
    others1 = sum(p.cpu_s() for p in all_procs or [])
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout + done.stderr)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("ANCHOR_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result:\n{done.stdout}\n{done.stderr}")
    wrk_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    busy_all = (stat1["cpu"][0] - stat0["cpu"][0]) / CLK_TCK
    busy = {c: (stat1[c][0] - stat0[c][0]) / max(1, stat1[c][1] - stat0[c][1]) for c in ("cpu0", "cpu1") if c in stat1}
    return WrkRun(
        result=json.loads(line[len("ANCHOR_JSON ") :]),
        wrk_cpu_s=round(wrk_s, 2),
        proc_cpu_s={k: round(after[k] - before[k], 3) for k in procs},
        # Everything ours (all benchmark processes, idle or not) and wrk subtracted: other tenants.
        foreign_cpu_s=round(busy_all - wrk_s - (others1 - others0), 2),
        idle_ours_cpu_s=round((others1 - others0) - sum(after[k] - before[k] for k in procs), 2) if all_procs else 0.0,
        cpu_busy={k: round(v, 2) for k, v in busy.items()},
        loadavg=load,
        quiet_wait_s=waited,
    )


def post_task(base: str, path: str, device_id: str, accept: str | None = None) -> tuple[int, bytes]:
    """One request shaped like anchors/task.lua's."""
    headers = {
        "Content-Type": "application/json",
        "X-Flare-Device-ID": device_id,
        "X-Flare-Device-Info": "platform=android&app_name=anchor&app_version=1.0",
    }
    if accept:
        headers["Accept"] = accept
    return http("POST", base + path, b'{"capabilities":{"methods":["cnn"]}}', headers)


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return float("nan") if n == 0 else (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except OSError:
        head = "?"
    return f"{os.cpu_count()} vCPU ({cpu}), Python {sys.version.split()[0]}, edgefl at {head}"


# -- our stack --------------------------------------------------------------------------------------
@dataclass
class Stack:
    """server + leaves + proxy, each its own process, as `python -m edge_gateway ...` runs them."""

    server: Proc
    leaves: list[Proc]
    proxy: Proc
    proxy_url: str
    api_url: str

    def procs(self) -> dict[str, Proc]:
        return {"proxy": self.proxy, **{p.name.split(".", 1)[-1]: p for p in self.leaves}, "server": self.server}

    def submit(self, spec: dict[str, Any]) -> str:
        status, body = http(
            "POST",
            f"{self.api_url}/api/jobs",
            json.dumps(spec).encode(),
            {"Content-Type": "application/json"},
            timeout=120,
        )
        if status != 201:
            raise RuntimeError(f"job refused ({status}): {body[:300]!r}")
        return str(json.loads(body)["job_id"])

    def job_status(self, job_id: str) -> dict[str, Any]:
        return dict(json.loads(http("GET", f"{self.api_url}/api/jobs/{job_id}")[1]))


def start_stack(
    procs: Procs,
    run_dir: Path,
    *,
    tag: str,
    leaves: int = 1,
    workers: int = 1,
    cpus: str | None = None,
    server_cmd: list[str] | None = None,
    log_level: str = "warning",
    leaf_env: dict[str, str] | None = None,
) -> Stack:
    """Start a server, `leaves` leaves and a proxy with `workers` processes, all pinned to `cpus`.

    `server_cmd` replaces `python -m edge_gateway` for the server (benchmarks/_big_model_server.py);
    `log_level` applies to server and leaves (the proxy logs warnings only); `leaf_env` is added to
    the leaves' environment (e.g. EDGEFL_LEAF_RESULT_LOG)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {"EDGEFL_LINK_SECRET": os.urandom(16).hex()}
    m = [PY, "-m"]
    server = procs.start(
        f"{tag}.server",
        (server_cmd or m + ["edge_gateway"])
        + [
            "--log-level",
            log_level,
            "server",
            "--http-port",
            "0",
            "--link-port",
            "0",
            "--data-dir",
            str(run_dir / "server"),
            "--ready-file",
            str(run_dir / "server.ready"),
        ],
        cpus=cpus,
        env=env,
    )
    ready = wait_file(server, run_dir / "server.ready")
    leaf_procs, lcp = [], {}
    for i in range(leaves):
        name = f"leaf-{i}"
        leaf_procs.append(
            procs.start(
                f"{tag}.{name}",
                m
                + [
                    "edge_gateway",
                    "--log-level",
                    log_level,
                    "leaf",
                    "--name",
                    name,
                    "--port",
                    "0",
                    "--server",
                    f"127.0.0.1:{ready['link_port']}",
                    "--data-dir",
                    str(run_dir / name),
                    "--ready-file",
                    str(run_dir / f"{name}.ready"),
                ],
                cpus=cpus,
                env={**env, **(leaf_env or {})},
            )
        )
    for i, leaf in enumerate(leaf_procs):
        lcp[f"leaf-{i}"] = {"host": "127.0.0.1", "port": wait_file(leaf, run_dir / f"leaf-{i}.ready")["port"]}
    (run_dir / "lcp_map.json").write_text(json.dumps(lcp))
    port = free_port()
    proxy = procs.start(
        f"{tag}.proxy",
        m
        + [
            "routing_proxy",
            str(port),
            str(run_dir / "lcp_map.json"),
            "--host",
            "127.0.0.1",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cpus=cpus,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # every worker must see every leaf healthy; /health answers from whichever worker
        try:
            status, body = http("GET", url + "/health", timeout=2.0)
            if status == 200 and json.loads(body).get("healthy") == leaves:
                break
        except OSError:
            pass
        if not proxy.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"proxy not healthy:\n{proxy.log_tail()}")
        time.sleep(0.2)
    return Stack(server, leaf_procs, proxy, url, f"http://127.0.0.1:{ready['http_port']}")


def wait_task_status(base: str, path: str, want: str, timeout: float = 60.0, accept: str | None = None) -> bytes:
    """POST /task (fresh device ids) until the answer's status is `want`; the last body."""
    deadline = time.monotonic() + timeout
    i = 0
    while True:
        i += 1
        code, body = post_task(base, path, f"ready-check-{os.getpid()}-{i}", accept)
        try:
            if code == 200 and json.loads(body).get("status") == want:
                return body
        except ValueError:
            if accept and code == 200:
                return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base}{path}: no {want} within {timeout:.0f} s; last {code} {body[:200]!r}")
        time.sleep(0.2)


def census(url: str, path: str, conns: int = 64, duration: str = "2s", pin: bool = True) -> dict[str, int]:
    """Answers under load, counted by 'HTTP-status FEG-status message' (benchmarks/task_census.lua)."""
    argv = (["taskset", "-c", LOADGEN_CPU] if pin else []) + [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{duration}",
        "--timeout",
        "5s",
        "-s",
        str(HERE / "task_census.lua"),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, "WRK_PATH": path})
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("CENSUS_JSON ")), None)
    if line is None:
        raise RuntimeError(f"census gave no result:\n{done.stdout}\n{done.stderr}")
    return dict(json.loads(line[len("CENSUS_JSON ") :]))


# -- an aiohttp device for the transfer benchmarks --------------------------------------------------
def device_headers(device_id: str, content_type: str = "application/json", accept: str | None = None) -> dict[str, str]:
    headers = {
        "Content-Type": content_type,
        "X-Flare-Device-ID": device_id,
        "X-Flare-Device-Info": "platform=ios&app_name=bench&app_version=1.0",
    }
    if accept:
        headers["Accept"] = accept
    return headers


async def ask_task(
    session: Any, base: str, job_id: str, device_id: str, accept: str | None = None
) -> tuple[int, bytes]:
    """One `/task` (the JSON body the apps send); (HTTP status, body bytes)."""
    async with session.post(
        f"{base}/task", params={"job_id": job_id}, data=b"{}", headers=device_headers(device_id, accept=accept)
    ) as reply:
        return reply.status, await reply.read()


def pin_self(cpu: str = LOADGEN_CPU) -> None:
    """Pin this (client) process to the load generator's CPU."""
    os.sched_setaffinity(0, {int(cpu)})
