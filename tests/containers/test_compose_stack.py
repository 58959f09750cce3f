"""The images and docker/compose.yaml, for real: a server, two leaves, the proxy and simulated
devices in containers run a job to its end through the job API. Needs the images built by
docker/build.sh and a Docker engine: scripts/test_containers.sh provides both."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
TAG = os.environ.get("EDGEFL_TAG", "local")
EDGEFL_IMAGE = f"edgefl:{TAG}"
PROXY_IMAGE = f"edgefl-proxy:{TAG}"
LEAVES = ["leaf-0", "leaf-1"]
# A digits job: the server evaluates every version (scikit-learn's digits), devices train with torch.
ROUNDS = 3
API_TOKEN = secrets.token_hex(16)  # the job API listens beyond the server container's loopback: it needs one
JOB = {
    "name": "digits",
    "model": "digits",
    "rounds": ROUNDS,
    "devices_per_round": 4,
    "retry_wait": 1,
    "task_timeout": 60.0,
    "round_timeout": 120.0,
}
SIMULATED_DEVICES = 8

T = TypeVar("T")


def run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def checked(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def wait_for(what: str, probe: Callable[[], T | None], within: float) -> T:
    """Poll `probe` once a second until it returns something, for at most `within` seconds."""
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError) as exc:  # not listening yet, connection reset, half a reply
            last_error, value = exc, None
        if value is not None:
            return value
        time.sleep(1.0)
    raise AssertionError(f"{what}: not within {within:.0f} s (last error: {last_error!r})")


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    api: str
    proxy: str

    def compose(self, *args: str, timeout: float = 180.0) -> str:
        command = [*compose_command(), "-p", self.project, "-f", str(COMPOSE_FILE), "--profile", "devices", *args]
        return checked(run(command, timeout, self.env))

    def container(self, service: str) -> str:
        container_id = self.compose("ps", "-q", service).strip()
        assert container_id, f"no container for {service}"
        return container_id

    def logs(self) -> str:
        command = [*compose_command(), "-p", self.project, "-f", str(COMPOSE_FILE), "--profile", "devices"]
        result = run([*command, "logs", "--no-color", "--tail", "60"], 60, self.env)
        return result.stdout + result.stderr


@pytest.fixture
def stack() -> Iterator[Stack]:
    api_port, proxy_port = free_port(), free_port()
    env = os.environ | {
        "EDGEFL_TAG": TAG,
        "EDGEFL_LINK_SECRET": secrets.token_hex(16),
        "EDGEFL_API_TOKEN": API_TOKEN,
        "EDGEFL_API_PORT": str(api_port),
        "EDGEFL_PROXY_PORT": str(proxy_port),
        "EDGEFL_SIM_JOB": str(JOB["name"]),
        "EDGEFL_SIM_DEVICES": str(SIMULATED_DEVICES),
    }
    stack = Stack(f"edgefltest{os.getpid()}", env, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{proxy_port}")
    try:
        stack.compose("up", "-d", "server", *LEAVES, "proxy")
        yield stack
    finally:
        print(stack.logs())  # pytest shows it when the test fails
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30")


def test_a_job_runs_to_its_end_through_the_compose_stack(stack: Stack) -> None:
    def all_leaves_healthy() -> dict[str, Any] | None:
        health = http_json(f"{stack.proxy}/health")
        return health if health["healthy"] == len(LEAVES) else None

    def job_done() -> dict[str, Any] | None:
        status = http_json(f"{stack.api}/api/jobs/{job_id}")
        return status if status["status"] == "done" else None

    # The proxy reached both leaves by their service names, with the stack's link secret.
    health = wait_for("the proxy reporting both leaves healthy", all_leaves_healthy, within=180)
    assert sorted(health["leaves"]) == LEAVES

    job_id = http_json(f"{stack.api}/api/jobs", JOB)["job_id"]
    stack.compose("up", "-d", "simulator")
    status = wait_for("the job reaching done", job_done, within=300)

    assert status["model_version"] == ROUNDS
    assert [entry["round"] for entry in status["history"]] == list(range(1, ROUNDS + 1))
    assert all(entry["results"] >= 1 for entry in status["history"])
    assert all(0.0 <= entry["accuracy"] <= 1.0 for entry in status["history"])  # the server evaluated each
    assert status["refused"] == 0
    assert sorted(status["leaves"]) == LEAVES

    # The simulated devices saw the job end and stopped on their own, successfully.
    simulator = stack.container("simulator")
    assert checked(run(["docker", "wait", simulator], timeout=120)).strip() == "0"

    # The server's checkpoints are on its volume.
    checkpoints = stack.compose("exec", "-T", "server", "ls", f"/var/lib/edgefl/jobs/{job_id}").split()
    assert f"v{ROUNDS}.npz" in checkpoints

    # SIGTERM reaches a leaf through the entrypoint, it drains and exits 0, and its whole log,
    # to the last line, outlives the container on the leaf's volume.
    leaf = stack.container("leaf-0")
    stack.compose("stop", "leaf-0", timeout=90)
    assert checked(run(["docker", "inspect", "-f", "{{.State.ExitCode}}", leaf], timeout=30)).strip() == "0"
    volume = f"{stack.project}_leaf-0-logs"
    log = checked(run(["docker", "run", "--rm", "-v", f"{volume}:/logs:ro", EDGEFL_IMAGE, "cat", "/logs/leaf.log"], 60))
    assert "leaf leaf-0 listening on 0.0.0.0:9003" in log
    assert "leaf leaf-0 drained in" in log.strip().splitlines()[-1]


def test_the_proxy_image_has_no_torch() -> None:
    no_torch = run(["docker", "run", "--rm", "--network", "none", PROXY_IMAGE, "python", "-c", "import torch"], 60)
    assert no_torch.returncode != 0
    assert "No module named 'torch'" in no_torch.stderr
    checked(
        run(["docker", "run", "--rm", "--network", "none", PROXY_IMAGE, "python", "-c", "import routing_proxy.cli"], 60)
    )


def test_the_edgefl_image_has_torch_cpu_and_no_cuda_libraries() -> None:
    probe = (
        "import importlib.metadata as m, torch; "
        "print(torch.__version__, sorted(d.metadata['Name'] for d in m.distributions() "
        "if d.metadata['Name'].lower().startswith('nvidia')))"
    )
    out = checked(run(["docker", "run", "--rm", "--network", "none", EDGEFL_IMAGE, "python", "-c", probe], 120))
    assert out.split() == ["2.13.0+cpu", "[]"]
