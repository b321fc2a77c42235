#!/usr/bin/env bash
# Bootstrap a local stand-in for the base image deploy/Dockerfile starts from
# (docker.io/library/python:3.11-slim), for a machine that reaches Debian's package mirror but
# no container registry. Does nothing when an image of that name is present already.
#
# The stand-in is Debian bookworm (Python 3.11) made with mmdebstrap, changed as the official
# image behaves: pip may install into the system Python (EXTERNALLY-MANAGED removed),
# `python` exists (python-is-python3), and the host's extra CA certificates
# (/usr/local/share/ca-certificates, e.g. a TLS-intercepting proxy's) are trusted, so that pip
# reaches PyPI from inside the build. Unlike the official image, Python lives in /usr/bin.
#
# usage: deploy/build-base.sh [--force]        (root; podman or buildah, and mmdebstrap)
# env:   BASE_IMAGE (default docker.io/library/python:3.11-slim), BASE_SUITE (bookworm),
#        DEBIAN_MIRROR (default: the one apt uses)
set -euo pipefail
# shellcheck source=deploy/containers.sh
. "$(dirname "$0")/containers.sh"

BASE_IMAGE=${BASE_IMAGE:-docker.io/library/python:3.11-slim}
BASE_SUITE=${BASE_SUITE:-bookworm}
force=${1:-}

tool=$(container_tool) || {
    container_tools_missing
    exit 1
}
container_env

exists() {
    if [ "$tool" = podman ]; then
        podman image exists "$BASE_IMAGE"
    else
        buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1
    fi
}

if [ "$force" != --force ] && exists; then
    echo "base image $BASE_IMAGE: present"
    exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "the base image $BASE_IMAGE is missing and mmdebstrap, which bootstraps it, is not" \
        "installed: apt-get install -y --no-install-recommends mmdebstrap" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "bootstrapping the base image needs root (mmdebstrap, image storage)" >&2
    exit 1
fi

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d)
container=""
cleanup() {
    if [ -n "$container" ]; then
        buildah umount "$container" >/dev/null 2>&1 || true
        buildah rm "$container" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "bootstrapping $BASE_IMAGE: Debian $BASE_SUITE from $mirror"
started=$SECONDS
mmdebstrap --quiet --variant=apt \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates,passwd \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='for crt in /usr/local/share/ca-certificates/*.crt; do [ -e "$crt" ] && cp "$crt" "$1/usr/local/share/ca-certificates/"; done; chroot "$1" update-ca-certificates >/dev/null' \
    --customize-hook='chroot "$1" apt-get clean; rm -rf "$1"/var/lib/apt/lists/*' \
    "$BASE_SUITE" "$work/base.tar" "$mirror"

if [ "$tool" = podman ]; then
    podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        "$work/base.tar" "$BASE_IMAGE" >/dev/null
else
    container=$(buildah from scratch)
    tar -C "$(buildah mount "$container")" -xf "$work/base.tar"
    buildah umount "$container" >/dev/null
    buildah config --env LANG=C.UTF-8 --cmd python3 "$container"
    buildah commit --quiet "$container" "$BASE_IMAGE" >/dev/null
fi
echo "base image $BASE_IMAGE: bootstrapped in $((SECONDS - started)) s"
