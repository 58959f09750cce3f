"""docker/k8s against docker/compose.yaml, without a cluster: the manifests parse, every Service
reaches a port its pods declare, and the pods run the very commands the tested compose stack runs
(same ports, same data and log directories, lcp_maps naming every leaf)."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def k8s_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return documents


def k8s(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    (only,) = containers
    return only


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    return services


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def env_value(spec: dict[str, Any], name: str) -> Any:
    (entry,) = [e for e in spec["env"] if e["name"] == name]
    return entry.get("value", entry.get("valueFrom"))


def image_name(image: str) -> str:
    return image.split(":", 1)[0]  # no registry host:port here; the tag may hold a ${VAR:-default}


def test_every_document_names_its_kind_and_itself() -> None:
    documents = k8s_documents()
    assert {d["kind"] for d in documents} >= {"Service", "StatefulSet", "Deployment", "ConfigMap"}
    for doc in documents:
        assert doc["apiVersion"] and doc["metadata"]["name"]


def test_every_service_selects_one_workload_and_targets_a_port_its_pods_declare() -> None:
    documents = k8s_documents()
    workloads = [d for d in documents if d["kind"] in WORKLOAD_KINDS]
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (d for d in documents if d["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        (selected,) = [w for w in workloads if selector <= w["spec"]["template"]["metadata"]["labels"].items()]
        declared = {p["name"] for p in container(selected)["ports"]} | {
            p["containerPort"] for p in container(selected)["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in declared, (service["metadata"]["name"], port)
    for stateful_set in (d for d in workloads if d["kind"] == "StatefulSet"):
        assert k8s("Service", stateful_set["spec"]["serviceName"])


def test_pods_run_the_commands_the_compose_stack_runs() -> None:
    services = compose_services()
    leaf_command = [arg.replace("leaf-0", "$(POD_NAME)") for arg in services["leaf-0"]["command"]]
    for workload, compose_command in (
        (k8s("StatefulSet", "server"), services["server"]["command"]),
        (k8s("StatefulSet", "leaf"), leaf_command),
        (k8s("Deployment", "proxy"), services["proxy"]["command"]),
    ):
        assert container(workload)["args"] == compose_command
    assert image_name(container(k8s("StatefulSet", "server"))["image"]) == image_name(services["server"]["image"])
    assert image_name(container(k8s("StatefulSet", "leaf"))["image"]) == image_name(services["leaf-0"]["image"])
    assert image_name(container(k8s("Deployment", "proxy"))["image"]) == image_name(services["proxy"]["image"])
    assert image_name(services["proxy"]["image"]) == "edgefl-proxy"
    assert image_name(services["server"]["image"]) == "edgefl"


def test_containers_declare_the_ports_their_processes_listen_on() -> None:
    server = container(k8s("StatefulSet", "server"))
    assert {p["containerPort"] for p in server["ports"]} == {
        int(flag(server["args"], "--http-port")),
        int(flag(server["args"], "--link-port")),
    }
    leaf = container(k8s("StatefulSet", "leaf"))
    leaf_ports = [int(flag(leaf["args"], "--port")), int(flag(leaf["args"], "--metrics-port"))]
    assert [p["containerPort"] for p in leaf["ports"]] == leaf_ports
    proxy = container(k8s("Deployment", "proxy"))
    assert proxy["args"][:3] == ["python", "-m", "routing_proxy"]
    proxy_ports = [int(proxy["args"][3]), int(flag(proxy["args"], "--metrics-port"))]
    assert [p["containerPort"] for p in proxy["ports"]] == proxy_ports


def test_every_process_serves_its_metrics() -> None:
    # The server on its job API port (always); the leaves and the proxy on a port of their own.
    services = compose_services()
    for name in ("leaf-0", "leaf-1", "proxy"):
        assert flag(services[name]["command"], "--metrics-port") == "9100", name


def test_leaves_reach_the_server_link_and_the_proxy_reaches_every_leaf() -> None:
    # Kubernetes: the leaves dial the server Service's link port; the lcp-map names every leaf pod.
    leaves = k8s("StatefulSet", "leaf")
    link_port = {p["name"]: p["port"] for p in k8s("Service", "server")["spec"]["ports"]}["link"]
    assert flag(container(leaves)["args"], "--server") == f"server:{link_port}"
    proxy = container(k8s("Deployment", "proxy"))
    (mount,) = proxy["volumeMounts"]
    map_path = proxy["args"][4]
    assert posixpath.dirname(map_path) == mount["mountPath"]
    lcp_map = json.loads(k8s("ConfigMap", "lcp-map")["data"][posixpath.basename(map_path)])
    leaf_port = int(flag(container(leaves)["args"], "--port"))
    names = [f"leaf-{i}" for i in range(leaves["spec"]["replicas"])]
    assert lcp_map == {name: {"host": f"{name}.{leaves['spec']['serviceName']}", "port": leaf_port} for name in names}

    # Compose: the leaves dial the server's link port; lcp_map.compose.json names every leaf service.
    services = compose_services()
    compose_leaves = sorted(name for name in services if name.startswith("leaf-"))
    for name in compose_leaves:
        assert (
            flag(services[name]["command"], "--server")
            == f"server:{flag(services['server']['command'], '--link-port')}"
        )
    (volume,) = services["proxy"]["volumes"]
    source, target, _ = volume.split(":")
    assert target == services["proxy"]["command"][4]
    compose_map = json.loads((DOCKER / source).read_text())
    assert compose_map == {
        name: {"host": name, "port": int(flag(services[name]["command"], "--port"))} for name in compose_leaves
    }


def test_the_server_keeps_its_data_and_each_leaf_its_log_on_a_volume() -> None:
    services = compose_services()
    server = services["server"]
    assert f"server-data:{flag(server['command'], '--data-dir')}" in server["volumes"]
    for name in (n for n in services if n.startswith("leaf-")):
        log_dir = posixpath.dirname(services[name]["environment"]["EDGEFL_LOG_FILE"])
        assert services[name]["volumes"] == [f"{name}-logs:{log_dir}"]
    declared = set(yaml.safe_load((DOCKER / "compose.yaml").read_text())["volumes"])
    assert {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])} - {"./lcp_map.compose.json"} <= (
        declared
    )

    for workload, directory in (
        (k8s("StatefulSet", "server"), flag(container(k8s("StatefulSet", "server"))["args"], "--data-dir")),
        (
            k8s("StatefulSet", "leaf"),
            posixpath.dirname(env_value(container(k8s("StatefulSet", "leaf")), "EDGEFL_LOG_FILE")),
        ),
    ):
        (claim,) = workload["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in container(workload)["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == directory


def test_every_process_gets_the_link_secret() -> None:
    for kind, name in (("StatefulSet", "server"), ("StatefulSet", "leaf"), ("Deployment", "proxy")):
        secret = env_value(container(k8s(kind, name)), "EDGEFL_LINK_SECRET")
        assert secret == {"secretKeyRef": {"name": "edgefl-link", "key": "EDGEFL_LINK_SECRET"}}
    for name, service in compose_services().items():
        assert service["environment"]["EDGEFL_LINK_SECRET"].startswith("${EDGEFL_LINK_SECRET:?"), name


def test_the_servers_status_page_shows_the_proxys_health() -> None:
    # Kubernetes: the proxy Service (any replica answers its /health); compose: the proxy service.
    proxy_port = {p["name"]: p["port"] for p in k8s("Service", "proxy")["spec"]["ports"]}["devices"]
    server = container(k8s("StatefulSet", "server"))
    assert env_value(server, "EDGEFL_SERVER_PROXY_URL") == f"http://proxy:{proxy_port}"
    services = compose_services()
    proxy_url = services["server"]["environment"]["EDGEFL_SERVER_PROXY_URL"]
    assert proxy_url == f"http://proxy:{services['proxy']['command'][3]}"


def test_the_job_api_listens_beyond_loopback_only_with_a_token() -> None:
    # The server refuses to start otherwise (edge_gateway/job_api_auth.py): both stacks must give one.
    server = container(k8s("StatefulSet", "server"))
    assert flag(server["args"], "--api-host") == "0.0.0.0"
    assert env_value(server, "EDGEFL_API_TOKEN") == {"secretKeyRef": {"name": "edgefl-api", "key": "EDGEFL_API_TOKEN"}}
    compose_server = compose_services()["server"]
    assert compose_server["environment"]["EDGEFL_API_TOKEN"].startswith("${EDGEFL_API_TOKEN:?")
