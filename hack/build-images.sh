#!/usr/bin/env bash
# Build the mmo container images (needs a Docker engine; run from anywhere in the repo).
#
#   hack/build-images.sh                    # build REGISTRY/mmo-operator:TAG and REGISTRY/mmo-serving:TAG
#   hack/build-images.sh --push             # ... and push them
#   hack/build-images.sh --kind mmo         # ... and load them into the kind cluster "mmo"
#   hack/build-images.sh --only operator    # one image
#
# Environment: REGISTRY (default ghcr.io/mmo-dev), TAG (default: the version in pyproject.toml),
# DOCKER (default docker), extra `docker build` flags in BUILD_FLAGS (e.g. --build-arg ...).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
registry=${REGISTRY:-ghcr.io/mmo-dev}
docker_cmd=${DOCKER:-docker}
push=false
kind_cluster=""
only=""

usage() {
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --push) push=true ;;
    --kind) kind_cluster=${2:?--kind needs a cluster name}; shift ;;
    --only) only=${2:?--only needs operator or serving}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "${repo_root}/pyproject.toml" | head -n 1)
tag=${TAG:-${version}}
if [[ -z "${tag}" ]]; then
  echo "could not read the version from pyproject.toml; set TAG" >&2
  exit 1
fi

read -r -a extra_flags <<< "${BUILD_FLAGS:-}"

build() {
  local name=$1 dockerfile=$2
  local image="${registry}/mmo-${name}:${tag}"
  echo ">> building ${image} from ${dockerfile}"
  "${docker_cmd}" build "${extra_flags[@]}" \
    --file "${repo_root}/${dockerfile}" \
    --tag "${image}" \
    --label "org.opencontainers.image.version=${tag}" \
    --label "org.opencontainers.image.source=https://github.com/mmo-dev/mmo" \
    "${repo_root}"
  if [[ "${push}" == true ]]; then
    "${docker_cmd}" push "${image}"
  fi
  if [[ -n "${kind_cluster}" ]]; then
    kind load docker-image --name "${kind_cluster}" "${image}"
  fi
}

if [[ -z "${only}" || "${only}" == operator ]]; then
  build operator operator/Dockerfile
fi
if [[ -z "${only}" || "${only}" == serving ]]; then
  build serving serving/Dockerfile
fi
