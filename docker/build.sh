#!/usr/bin/env bash
# Build edgefl's images on a Docker engine that reaches no image registry.
#   docker/build.sh base     a Python 3.11 base from Debian bookworm packages (mmdebstrap from this
#                            machine's apt mirror, piped into `docker import`); kept if the tag exists
#   docker/build.sh proxy    the routing proxy, no torch
#   docker/build.sh edgefl   server, leaves and simulated devices, on torch's CPU build
#   docker/build.sh all      the three, in that order (the default)
# Settings (environment):
#   EDGEFL_BASE_IMAGE      base image tag (default edgefl-base:bookworm-py311; any Debian bookworm
#                          image with python3 3.11 and python3-venv at /usr/bin/python3 will do)
#   EDGEFL_TAG             tag of edgefl-proxy and edgefl (default local)
#   EDGEFL_EXTRAS          extras of the edgefl image (default train; train,executorch adds ExecuTorch)
#   EDGEFL_TORCH_WHEEL     torch 2.13.0+cpu cp311 wheel (default: looked up in pip's find-links)
#   EDGEFL_DEBIAN_SOURCES  apt sources file for the base (default: this machine's Debian sources)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
base_image="${EDGEFL_BASE_IMAGE:-edgefl-base:bookworm-py311}"
tag="${EDGEFL_TAG:-local}"
extras="${EDGEFL_EXTRAS:-train}"
torch_wheel_glob='torch-2.13.0+cpu-cp311-cp311-*.whl'
default_index=https://pypi.org/simple

host_pip_config() { # the host pip's setting $1, or nothing
  python3 -m pip config get "$1" 2>/dev/null || true
}

build_base() {
  if docker image inspect "$base_image" >/dev/null 2>&1; then
    echo "build.sh: base image $base_image exists, kept"
    return
  fi
  local sources="${EDGEFL_DEBIAN_SOURCES:-}"
  if [[ -z "$sources" ]]; then
    for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
      if [[ -s "$candidate" ]]; then
        sources="$candidate"
        break
      fi
    done
  fi
  echo "build.sh: building $base_image from bookworm packages ($sources)"
  # Documentation and translations are left out of the image; licences stay.
  if ! mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm - "$sources" | docker import --change 'CMD ["python3"]' - "$base_image"; then
    docker image rm "$base_image" >/dev/null 2>&1 || true
    echo "build.sh: building the base image failed" >&2
    return 1
  fi
  docker run --rm "$base_image" python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
}

torch_wheel() {
  if [[ -n "${EDGEFL_TORCH_WHEEL:-}" ]]; then
    echo "$EDGEFL_TORCH_WHEEL"
    return
  fi
  local dirs dir wheel
  dirs="${PIP_FIND_LINKS:-} $(host_pip_config global.find-links)"
  for dir in $dirs; do
    for wheel in "${dir#file://}"/$torch_wheel_glob; do
      if [[ -f "$wheel" ]]; then
        echo "$wheel"
        return
      fi
    done
  done
  echo "build.sh: no $torch_wheel_glob in pip's find-links ($dirs); set EDGEFL_TORCH_WHEEL" \
    "(the wheel is on https://download.pytorch.org/whl/cpu)" >&2
  return 1
}

ca_bundle() { # the CA bundle the host's pip trusts (this machine's egress may present its own CA)
  local bundle="${PIP_CERT:-$(host_pip_config global.cert)}"
  echo "${bundle:-/etc/ssl/certs/ca-certificates.crt}"
}

index_url() { # the host pip's http(s) index, else PyPI; never one carrying credentials
  local url="${PIP_INDEX_URL:-$(host_pip_config global.index-url)}"
  case "$url" in
    *@*)
      echo "build.sh: the host's pip index URL carries credentials; the build uses $default_index" >&2
      url="$default_index"
      ;;
    http://* | https://*) ;;
    *) url="$default_index" ;;
  esac
  echo "$url"
}

# The build context, streamed as a tar: src/ (pyproject, README, the Python packages), docker/,
# build-certs/ (the host pip's CA bundle, used by the build stage only), and for the edgefl image
# wheelhouse/ (torch's CPU wheel and a constraint pinning it).
stream_context() { # [TORCH_WHEEL]
  local wheel="${1:-}" staging entry
  staging="$(mktemp -d)"
  trap 'rm -rf "$staging"' RETURN
  mkdir -p "$staging/src"
  ln -s "$root/pyproject.toml" "$root/README.md" "$staging/src/"
  for entry in "$root"/*/; do
    entry="${entry%/}"
    if [[ -f "$entry/__init__.py" && "${entry##*/}" != tests ]]; then
      ln -s "$entry" "$staging/src/"
    fi
  done
  ln -s "$root/docker" "$staging/docker"
  mkdir "$staging/build-certs"
  ln -s "$(ca_bundle)" "$staging/build-certs/ca-bundle.crt"
  if [[ -n "$wheel" ]]; then
    mkdir "$staging/wheelhouse"
    ln -s "$wheel" "$staging/wheelhouse/"
    echo "torch==2.13.0+cpu" >"$staging/wheelhouse/constraints.txt"
  fi
  tar -C "$staging" --dereference --exclude=__pycache__ --exclude='*.pyc' --exclude=docker/k8s -cf - .
}

build_image() { # IMAGE DOCKERFILE TORCH_WHEEL_OR_EMPTY [BUILD_ARG...]
  local image="$1" dockerfile="$2" wheel="$3"
  shift 3
  local args=(--network host --force-rm -f "$dockerfile" -t "$image"
    --build-arg "BASE_IMAGE=$base_image" --build-arg "PIP_INDEX_URL=$(index_url)")
  for arg in "$@"; do
    args+=(--build-arg "$arg")
  done
  local previous
  previous="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
  echo "build.sh: building $image"
  # The classic builder: it takes --network host (pip reaches the registry while the engine runs
  # with --iptables=false) and needs no buildx plugin.
  stream_context "$wheel" | DOCKER_BUILDKIT=0 docker build "${args[@]}" -
  echo "build.sh: $image is $(docker image inspect -f '{{.Size}}' "$image") bytes"
  # The image this one replaces would stay behind untagged (a GB for edgefl); the build cache stays.
  if [[ -n "$previous" && "$previous" != "$(docker image inspect -f '{{.Id}}' "$image")" ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
  fi
}

what="${1:-all}"
case "$what" in
  base) build_base ;;
  proxy) build_image "edgefl-proxy:$tag" docker/Dockerfile.proxy "" ;;
  edgefl)
    wheel="$(torch_wheel)"
    build_image "edgefl:$tag" docker/Dockerfile.edgefl "$wheel" "EXTRAS=$extras"
    ;;
  all)
    wheel="$(torch_wheel)"
    build_base
    build_image "edgefl-proxy:$tag" docker/Dockerfile.proxy ""
    build_image "edgefl:$tag" docker/Dockerfile.edgefl "$wheel" "EXTRAS=$extras"
    ;;
  *)
    echo "usage: docker/build.sh [base|proxy|edgefl|all]" >&2
    exit 2
    ;;
esac
