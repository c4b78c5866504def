#!/usr/bin/env bash
# Builds the gateway image (default tag sluice:local) and the compose stack's Redis image (sluice-redis:local)
# from this checkout. When no base image can be pulled (no registry reachable), builds local stand-ins first
# (scripts/docker-base-image.sh). When npm is configured with a CA file (a TLS-intercepting proxy), that file
# is put in the build context for the build stage only and removed afterwards.
# Usage: scripts/docker-build.sh [tag]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tag="${1:-sluice:local}"

for base in node:20-bookworm-slim debian:bookworm-slim; do
  if ! docker image inspect "$base" >/dev/null 2>&1 && ! docker pull -q "$base" >/dev/null 2>&1; then
    echo "docker-build: $base cannot be pulled; building a local stand-in"
    bash scripts/docker-base-image.sh
    break
  fi
done

args=()
cafile="$(npm config get cafile 2>/dev/null || true)"
if [ -n "$cafile" ] && [ "$cafile" != "null" ] && [ "$cafile" != "undefined" ] && [ -f "$cafile" ]; then
  cp "$cafile" .npm-build-ca.pem
  trap 'rm -f .npm-build-ca.pem' EXIT
fi
registry="$(npm config get registry 2>/dev/null || true)"
if [ -n "$registry" ] && [ "$registry" != "https://registry.npmjs.org/" ]; then args+=(--build-arg "NPM_REGISTRY=$registry"); fi

docker build "${args[@]}" -t "$tag" .
rm -f .npm-build-ca.pem
docker build -t sluice-redis:local deploy/redis
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(${tag}|sluice-redis:local) "
