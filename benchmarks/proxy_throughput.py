"""`/task` round trips through our proxy + one leaf, in the same run as the anchors' references.

The load is exactly the anchors' (`/work/shared/anchors`): `wrk -t1 -c{16,64,256} -d10s --timeout 5s
--latency -s anchors/task.lua`, a new X-Flare-Device-ID per request; only the path's job id is ours
(task.lua reads it from WRK_PATH). Pinned phase: wrk on CPU 0, every process under test on CPU 1
(nvflare RP + 2 stub LCPs; nginx + its aiohttp backend; proxy + leaf + server). Unpinned phase:
nothing pinned, our proxy with `--workers 2`. Runs are interleaved (for rep: for c: for row), as in
anchors/run.sh, so a slow minute of this shared VM hits every row alike.

Rows (anchor rows are started from the anchors' own scripts, with their venv):
  nvflare_rp     NVFlare 2.9 routing proxy -> 2 gRPC stub LCPs        (anchors: stub_lcp.py)
  nginx_proxy    nginx -> aiohttp backend, upstream keepalive          (anchors: nginx.conf.tmpl, aio_server.py)
  aio_direct     aiohttp+uvloop answering itself                       (anchors: aio_server.py)
  aio_proxy      aiohttp proxy -> aiohttp backend                      (anchors: aio_proxy.py; off by default)
  nginx_static   nginx answering itself: load-generator headroom       (off by default)
  edgefl_retry   our proxy -> leaf, job with every slot taken: RETRY "Device not selected"
  edgefl_ok      our proxy -> leaf, job with 1,000,000 slots (xor): OK with the task (~1.2 kB)

    python benchmarks/proxy_throughput.py                       # both phases, 3 reps (~25 min)
    python benchmarks/proxy_throughput.py --quick               # 3 s runs, 1 rep, c=16 64 (~3 min)
    python benchmarks/proxy_throughput.py --phases pinned --rows nginx_proxy edgefl_retry --conns 64
Needs anchors/setup.sh's venv (/tmp/anchors/venv), wrk and nginx. Prints markdown tables; raw runs
go to --out (default /tmp/edgefl-bench/proxy-<time>/runs.jsonl).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as h

ANCHOR_BODY = b'{"status": "RETRY", "retry_wait": 5}'
LABELS = {
    "nvflare_rp": "NVFlare RP → gRPC stub LCP ×2 (incumbent)",
    "nginx_proxy": "nginx → aiohttp backend",
    "aio_direct": "aiohttp alone",
    "aio_proxy": "aiohttp proxy → aiohttp backend",
    "nginx_static": "nginx answers itself (wrk headroom)",
    "edgefl_retry": "**edgefl proxy → leaf, RETRY path**",
    "edgefl_ok": "**edgefl proxy → leaf, OK path (task handed out)**",
}
DEFAULT_ROWS = ["nvflare_rp", "nginx_proxy", "aio_direct", "edgefl_retry", "edgefl_ok"]
OURS = ("edgefl_retry", "edgefl_ok")
# Every slot taken after the first ask, leases that never run out within the benchmark: every
# other device is told RETRY "Device not selected" (PROTOCOL.md §4), the leaf's commonest answer.
# retry_wait 5 as the anchors' answer. (The leaf remembers waiting devices for 2·retry_wait+5 s
# and scans them on every sync, so its cost per request grows with retry_wait under this load.)
RETRY_JOB = {
    "name": "bench-retry",
    "model": "xor",
    "rounds": 1,
    "devices_per_round": 1,
    "over_selection": 0.0,
    "retry_wait": 5,
    "task_timeout": 86400.0,
    "round_timeout": 86400.0,
    "evaluate": False,
}
# Slots for a million devices, leases of 10 s (so they drain between rows): every new device id
# gets a task. A device's first ask waits for the leaf's next sync with the server (the leaf asks
# for slots only for devices that are waiting), so this row includes that hold.
OK_JOB = {
    "name": "bench-ok",
    "model": "xor",
    "rounds": 1,
    "devices_per_round": 1_000_000,
    "over_selection": 0.0,
    "retry_wait": 30,
    "task_timeout": 10.0,
    "round_timeout": 86400.0,
    "evaluate": False,
}


@dataclass
class Row:
    name: str
    url: str
    procs: dict[str, h.Proc]
    path: str = "/task?job_id=j1"
    far_end: Callable[[], int | None] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)


# -- rows ---------------------------------------------------------------------------------------
def start_anchor_rows(procs: h.Procs, names: list[str], run_dir: Path, cpus: str | None) -> list[Row]:
    rows: list[Row] = []
    a = h.ANCHORS
    run_dir.mkdir(parents=True, exist_ok=True)
    if "nvflare_rp" in names:
        l1, l2, port = h.free_port(), h.free_port(), h.free_port()
        lcp = {"C11": {"host": "127.0.0.1", "port": l1}, "C12": {"host": "127.0.0.1", "port": l2}}
        (run_dir / "nvflare_lcp_map.json").write_text(json.dumps(lcp))
        p1 = procs.start("lcp1", [h.ANCHOR_PY, str(a / "stub_lcp.py"), "serve", str(l1)], cpus=cpus)
        p2 = procs.start("lcp2", [h.ANCHOR_PY, str(a / "stub_lcp.py"), "serve", str(l2)], cpus=cpus)
        # ca_cert "" => insecure gRPC, as anchors/run.sh starts it.
        rp = procs.start(
            "nvflare_rp",
            [h.ANCHOR_PY, "-m", "nvflare.edge.web.routing_proxy", str(port), str(run_dir / "nvflare_lcp_map.json"), ""],
            cpus=cpus,
            cwd=run_dir,
        )

        def stub_count(l1: int = l1, l2: int = l2) -> int:
            return sum(
                int(
                    subprocess.run(
                        [h.ANCHOR_PY, str(a / "stub_lcp.py"), "stats", str(p)],
                        capture_output=True,
                        text=True,
                        timeout=30,
                    ).stdout
                )
                for p in (l1, l2)
            )

        rows.append(
            Row(
                "nvflare_rp", f"http://127.0.0.1:{port}", {"lcp1": p1, "lcp2": p2, "nvflare_rp": rp}, far_end=stub_count
            )
        )
    if "aio_direct" in names:
        port = h.free_port()
        p = procs.start("aio_direct", [h.ANCHOR_PY, str(a / "aio_server.py"), str(port)], cpus=cpus)
        rows.append(
            Row(
                "aio_direct",
                f"http://127.0.0.1:{port}",
                {"aio_direct": p},
                far_end=_stats_counter(f"http://127.0.0.1:{port}"),
            )
        )
    if "aio_proxy" in names:
        backend, port = h.free_port(), h.free_port()
        b = procs.start("aio_backend_b", [h.ANCHOR_PY, str(a / "aio_server.py"), str(backend)], cpus=cpus)
        h.wait_http(b, f"http://127.0.0.1:{backend}/__anchor_stats")
        p = procs.start(
            "aio_proxy", [h.ANCHOR_PY, str(a / "aio_proxy.py"), str(port), f"http://127.0.0.1:{backend}"], cpus=cpus
        )
        rows.append(
            Row(
                "aio_proxy",
                f"http://127.0.0.1:{port}",
                {"aio_backend_b": b, "aio_proxy": p},
                far_end=_stats_counter(f"http://127.0.0.1:{backend}"),
            )
        )
    if "nginx_proxy" in names or "nginx_static" in names:
        backend, port, static = h.free_port(), h.free_port(), h.free_port()
        b = procs.start("aio_backend_c", [h.ANCHOR_PY, str(a / "aio_server.py"), str(backend)], cpus=cpus)
        h.wait_http(b, f"http://127.0.0.1:{backend}/__anchor_stats")
        ngx = run_dir / "nginx"
        (ngx / "nginx_tmp").mkdir(parents=True, exist_ok=True)
        conf = (a / "nginx.conf.tmpl").read_text()
        for key, value in (
            ("@RUN@", str(ngx)),
            ("@PORT@", str(port)),
            ("@STATIC_PORT@", str(static)),
            ("@BACKEND_PORT@", str(backend)),
        ):
            conf = conf.replace(key, value)
        (ngx / "nginx.conf").write_text(conf)
        # daemon off: this pid is the master; its worker is counted as its child.
        n = procs.start(
            "nginx",
            ["nginx", "-p", str(ngx), "-e", str(ngx / "nginx_error.log"), "-c", str(ngx / "nginx.conf")],
            cpus=cpus,
        )
        if "nginx_proxy" in names:
            rows.append(
                Row(
                    "nginx_proxy",
                    f"http://127.0.0.1:{port}",
                    {"aio_backend_c": b, "nginx": n},
                    far_end=_stats_counter(f"http://127.0.0.1:{backend}"),
                )
            )
        if "nginx_static" in names:
            rows.append(Row("nginx_static", f"http://127.0.0.1:{static}", {"nginx": n}))
    for row in rows:
        body = _wait_body(row, lambda b: b.strip() == ANCHOR_BODY)
        row.info["answer"] = body.decode().strip()
    return rows


def _stats_counter(base: str) -> Callable[[], int | None]:
    return lambda: int(h.http("GET", base + "/__anchor_stats")[1])


def _wait_body(row: Row, ok: Callable[[bytes], bool], timeout: float = 60.0) -> bytes:
    deadline = time.monotonic() + timeout
    body = b""
    while time.monotonic() < deadline:
        try:
            status, body = h.post_task(row.url, row.path, "ready-check")
            if status == 200 and ok(body):
                return body
        except OSError:
            pass
        for p in row.procs.values():
            if not p.alive():
                raise RuntimeError(f"{p.name} exited:\n{p.log_tail()}")
        time.sleep(0.25)
    raise RuntimeError(f"{row.name}: unexpected answer {body[:200]!r}")


def start_our_rows(procs: h.Procs, names: list[str], run_dir: Path, cpus: str | None, workers: int) -> list[Row]:
    rows = []
    for name, spec, want in (("edgefl_retry", RETRY_JOB, "RETRY"), ("edgefl_ok", OK_JOB, "OK")):
        if name not in names:
            continue
        stack = h.start_stack(procs, run_dir / name, tag=name, workers=workers, cpus=cpus)
        job_id = stack.submit(spec)
        path = f"/task?job_id={job_id}"
        # RETRY row: the first asks take the job's only slot; then every answer is "Device not selected".
        h.wait_task_status(stack.proxy_url, path, "OK")
        body = h.wait_task_status(stack.proxy_url, path, want)
        row = Row(name, stack.proxy_url, stack.procs(), path=path, info={"job_id": job_id, "workers": workers})
        if name == "edgefl_ok":
            # Tasks the leaf handed out, as it reports them to the server (every 0.2 s).
            row.far_end = lambda s=stack, j=job_id: int(s.job_status(j)["tasks_issued"])
        row.info["answer"] = body.decode()[:160] + ("…" if len(body) > 160 else "")
        row.info["answer_bytes"] = len(body)
        rows.append(row)
    return rows


# -- measuring -----------------------------------------------------------------------------------
def run_phase(phase: str, args: argparse.Namespace, out: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    pin = phase == "pinned"
    cpus = h.SUT_CPU if pin else None
    workers = 1 if pin else args.unpinned_workers
    info: dict[str, Any] = {"phase": phase, "workers": workers, "census": {}, "answers": {}}
    with h.Procs(out / phase / "logs") as procs:
        print(
            f"== {phase}: starting {', '.join(args.rows)} (servers on {'CPU ' + cpus if cpus else 'any CPU'}, "
            f"our proxy with {workers} worker(s))",
            flush=True,
        )
        anchor_names = [r for r in args.rows if r not in OURS]
        rows = start_anchor_rows(procs, anchor_names, out / phase, cpus)
        rows += start_our_rows(procs, args.rows, out / phase, cpus, workers)
        rows.sort(key=lambda r: args.rows.index(r.name))
        for row in rows:
            info["answers"][row.name] = row.info.get("answer")
            h.wrk(row.url, 16, args.warmup, {}, pin=pin, path=row.path)
        for row in rows:
            if row.name in OURS:
                # What the leaf really answers under this load (wrk itself counts only HTTP statuses).
                info["census"][row.name] = h.census(row.url, row.path, 64, "2s", pin=pin)
                print(f"  census {row.name} c=64 2 s: {info['census'][row.name]}", flush=True)
        print(f"all rows ready and warmed up; load {h.loadavg()}", flush=True)
        for rep in range(1, args.repeat + 1):
            for conns in args.conns:
                for row in rows:
                    others = [p for p in procs.procs if p not in row.procs.values()]
                    settled = h.settle(others, args.settle_max)
                    before = _far_end(row)
                    run = h.wrk(
                        row.url,
                        conns,
                        args.duration,
                        row.procs,
                        pin=pin,
                        path=row.path,
                        quiet_max=args.quiet_max,
                        all_procs=procs.procs,
                        log=out / phase / "wrk" / f"{row.name}_c{conns}_r{rep}.txt",
                    )
                    time.sleep(0.5)
                    after = _far_end(row)
                    rec = {
                        "phase": phase,
                        "row": row.name,
                        "conns": conns,
                        "rep": rep,
                        **run.result,
                        "errors": run.errors(),
                        "us_per_req": {k: round(v, 1) for k, v in run.us_per_request().items()},
                        "proc_cpu_s": run.proc_cpu_s,
                        "wrk_cpu_s": run.wrk_cpu_s,
                        "foreign_cpu_s": run.foreign_cpu_s,
                        "idle_ours_cpu_s": run.idle_ours_cpu_s,
                        "settle_s": settled,
                        "cpu_busy": run.cpu_busy,
                        "loadavg": run.loadavg,
                        "quiet_wait_s": run.quiet_wait_s,
                        "far_end": None if before is None or after is None else after - before,
                        "workers": workers if row.name in OURS else None,
                    }
                    runs.append(rec)
                    with open(out / "runs.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(
                        f"  {phase} {row.name:<13} c={conns:<3} rep={rep} {rec['rps']:>8,.0f} req/s  "
                        f"p99 {rec['p99_ms']:7.1f} ms  errs {rec['errors']}  "
                        f"µs/req {sum(rec['us_per_req'].values()):5.0f}  foreign {run.foreign_cpu_s:5.2f} "
                        f"others {run.idle_ours_cpu_s:4.2f} settle {settled:4.1f}s load {run.loadavg}",
                        flush=True,
                    )
    return info


def _far_end(row: Row) -> int | None:
    try:
        return row.far_end()
    except Exception:  # a counter is a cross-check, never a reason to lose a run
        return None


# -- report -----------------------------------------------------------------------------------------
def _cells(runs: list[dict[str, Any]], phase: str, row: str, conns: int) -> list[dict[str, Any]]:
    return [r for r in runs if r["phase"] == phase and r["row"] == row and r["conns"] == conns]


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return h.median([r[key] for r in runs])


def report(runs: list[dict[str, Any]], infos: list[dict[str, Any]], args: argparse.Namespace) -> str:
    L: list[str] = []
    for info in infos:
        phase = info["phase"]
        rows = [r for r in args.rows if any(x["row"] == r for x in runs if x["phase"] == phase)]
        L += [
            f"### {phase}"
            + (
                " (wrk on CPU 0; every server process on CPU 1)"
                if phase == "pinned"
                else f" (nothing pinned; our proxy with --workers {info['workers']})"
            ),
            "",
        ]
        head = (
            "| row | "
            + " | ".join(f"req/s c={c}" for c in args.conns)
            + " | "
            + " | ".join(f"p99 ms c={c}" for c in args.conns)
            + " |"
        )
        L += [head, "|---|" + "---:|" * (2 * len(args.conns))]
        for row in rows:
            cells = [_cells(runs, phase, row, c) for c in args.conns]
            mark = lambda rs: "*" if any(r["errors"] for r in rs) else ""  # noqa: E731
            L.append(
                f"| {LABELS[row]} | "
                + " | ".join(f"{_med(rs, 'rps'):,.0f}{mark(rs)}" for rs in cells)
                + " | "
                + " | ".join(f"{_med(rs, 'p99_ms'):.1f}" for rs in cells)
                + " |"
            )
        L += [
            "",
            "Ratios (medians; req/s ratio, and p99 ratio where lower is better):",
            "",
            "| our row | c | req/s | × nginx→aiohttp | × incumbent | × aiohttp alone | p99 ms | p99 ÷ nginx p99 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in (r for r in rows if r in OURS):
            for c in args.conns:
                ours = _cells(runs, phase, row, c)
                ref = {n: _cells(runs, phase, n, c) for n in ("nginx_proxy", "nvflare_rp", "aio_direct")}
                rps = _med(ours, "rps")
                ratio = lambda n, rps=rps, ref=ref: f"{rps / _med(ref[n], 'rps'):.2f}" if ref[n] else "–"  # noqa: E731
                p99n = f"{_med(ours, 'p99_ms') / _med(ref['nginx_proxy'], 'p99_ms'):.2f}" if ref["nginx_proxy"] else "–"
                L.append(
                    f"| {row} | {c} | {rps:,.0f} | {ratio('nginx_proxy')} | {ratio('nvflare_rp')} | "
                    f"{ratio('aio_direct')} | {_med(ours, 'p99_ms'):.1f} | {p99n} |"
                )
        L += [
            "",
            "Server-side CPU µs per request (user+sys per process incl. children, median over reps):",
            "",
            "| row | c | µs/req by process | total |",
            "|---|---:|---|---:|",
        ]
        for row in rows:
            for c in args.conns:
                cells = _cells(runs, phase, row, c)
                names = list(cells[0]["us_per_req"]) if cells else []
                med = {n: h.median([r["us_per_req"].get(n, 0.0) for r in cells]) for n in names}
                L.append(
                    f"| {row} | {c} | "
                    + ", ".join(f"{n} {v:,.0f}" for n, v in med.items())
                    + f" | {sum(med.values()):,.0f} |"
                )
        L += [
            "",
            "Run conditions (each run: load average at its start, CPU of other tenants during it):",
            "",
            "| row | c | rep | req/s | p50 ms | p99 ms | errors | reached far end | foreign CPU s | other rows' CPU s | loadavg |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in (x for x in runs if x["phase"] == phase):
            fe = "n/a" if r["far_end"] is None else f"{r['far_end']:,}"
            L.append(
                f"| {r['row']} | {r['conns']} | {r['rep']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.1f} | {r['errors']} | {fe} | {r['foreign_cpu_s']} | {r['idle_ours_cpu_s']} | {r['loadavg']} |"
            )
        if info["census"]:
            L += [
                "",
                "What our rows answered under load (2 s census at c=64, `benchmarks/task_census.lua`): "
                + "; ".join(f"{k}: {v}" for k, v in info["census"].items()),
            ]
        L += ["", "First answers: " + "; ".join(f"{k}: `{v}`" for k, v in info["answers"].items()), ""]
    phases = {i["phase"] for i in infos}
    if {"pinned", "unpinned"} <= phases:
        L += [
            "### unpinned multi-worker ÷ pinned (same row, same c)",
            "",
            "| row | c | pinned req/s | unpinned req/s | ratio |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in [r for r in args.rows]:
            for c in args.conns:
                p, u = _cells(runs, "pinned", row, c), _cells(runs, "unpinned", row, c)
                if p and u:
                    L.append(
                        f"| {row} | {c} | {_med(p, 'rps'):,.0f} | {_med(u, 'rps'):,.0f} | "
                        f"{_med(u, 'rps') / _med(p, 'rps'):.2f} |"
                    )
        L.append("")
    return "\n".join(L)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="pinned,unpinned")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(LABELS))
    parser.add_argument("--conns", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--warmup", default="2s")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--unpinned-workers", type=int, default=2)
    parser.add_argument(
        "--quiet-max",
        type=float,
        default=60.0,
        help="seconds to wait before each run for other tenants to go idle (0: don't)",
    )
    parser.add_argument(
        "--settle-max",
        type=float,
        default=45.0,
        help="seconds to wait before each run until the other rows' processes are idle",
    )
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 rep, c=16 64")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeat, args.conns, args.warmup = "3s", 1, [16, 64], "1s"
    for tool in ("wrk", "taskset") + (("nginx",) if any(r.startswith("nginx") for r in args.rows) else ()):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: apt-get install wrk nginx-light (or run anchors/setup.sh)")
    if any(r not in OURS for r in args.rows) and not Path(h.ANCHOR_PY).exists():
        raise SystemExit(f"{h.ANCHOR_PY} missing: run {h.ANCHORS}/setup.sh first")
    out = args.out or Path("/tmp/edgefl-bench") / time.strftime("proxy-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {h.machine()}; load {h.loadavg()}; output {out}", flush=True)
    runs: list[dict[str, Any]] = []
    infos = [run_phase(p, args, out, runs) for p in args.phases.split(",")]
    text = report(runs, infos, args)
    (out / "report.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
