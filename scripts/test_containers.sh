#!/usr/bin/env bash
# Build the images and run a whole stack in containers (tests/containers), as CI's own step.
# As root it installs what is missing (docker.io, docker-compose, mmdebstrap) with apt-get, starts
# dockerd when none is running and stops that one (by its PID) at the end. The engine runs with
# --iptables=false: containers reach each other and ports published on 127.0.0.1, nothing else
# (image builds use the host's network, for pip). Build times and image sizes go to
# run/containers/report.txt. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
out=run/containers
mkdir -p "$out"
report="$out/report.txt"
: >"$report"
started_at=$(date +%s)
export EDGEFL_TAG="${EDGEFL_TAG:-local}"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

dockerd_pid=""
stop_dockerd() {
  if [[ -n "$dockerd_pid" ]]; then
    kill -TERM "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 30); do
      kill -0 "$dockerd_pid" 2>/dev/null || return 0
      sleep 1
    done
    kill -KILL "$dockerd_pid" 2>/dev/null || true
  fi
}
trap stop_dockerd EXIT
if ! docker info >/dev/null 2>&1; then
  dockerd --iptables=false --ip-masq=false >"$out/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || break
    sleep 1
  done
  docker info >/dev/null 2>&1 || {
    echo "test_containers.sh: dockerd did not start; see $out/dockerd.log" >&2
    exit 1
  }
fi

timed() { # STEP COMMAND...: run it, write its wall time to the report
  local begin=$SECONDS
  "${@:2}"
  echo "$1: $((SECONDS - begin)) s" | tee -a "$report"
}
# timeout: a build stuck on the network fails the step instead of hanging it.
timed "build base image" timeout 900 docker/build.sh base
timed "build edgefl-proxy:$EDGEFL_TAG" timeout 900 docker/build.sh proxy
timed "build edgefl:$EDGEFL_TAG" timeout 1200 docker/build.sh edgefl
for image in "${EDGEFL_BASE_IMAGE:-edgefl-base:bookworm-py311}" "edgefl-proxy:$EDGEFL_TAG" "edgefl:$EDGEFL_TAG"; do
  size=$(docker image inspect -f '{{.Size}}' "$image")
  echo "size of $image: $((size / 1000000)) MB" | tee -a "$report"
done

[[ -x .venv/bin/python ]] || scripts/install.sh test
timed "container tests" env EDGEFL_CONTAINER_TESTS=1 \
  .venv/bin/python -m pytest -p no:cacheprovider -m containers tests/containers -v "$@"
echo "test_containers.sh: $(($(date +%s) - started_at)) s in all" | tee -a "$report"
