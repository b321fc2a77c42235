#!/usr/bin/env bash
# `make image`: build deploy/Dockerfile from the repository root with podman (or buildah),
# after bootstrapping its base image locally when it is missing (deploy/build-base.sh).
#
# usage: deploy/build-image.sh [IMAGE]     (default localhost/sfstream:latest; also tagged
#                                           with the package's version)
# The build pulls nothing (--pull=never: the base comes from build-base.sh), runs RUN steps in
# chroot isolation (no OCI runtime needed) on the host's network (never the CNI bridge), and
# writes the Docker image format, which keeps HEALTHCHECK (OCI's has no such field).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/containers.sh
. deploy/containers.sh

IMAGE=${1:-${IMAGE:-localhost/sfstream:latest}}
tool=$(container_tool) || {
    container_tools_missing
    exit 1
}
container_env

started=$SECONDS
deploy/build-base.sh
base_s=$((SECONDS - started))

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/sfstream/__init__.py)
digest=$(deploy/source-digest.sh)
build=(build)
if [ "$tool" = buildah ]; then
    build=(build --layers)
fi
previous=$("$tool" inspect --type image --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
echo "building $IMAGE (sfstream $version) with $tool"
built=$SECONDS
"$tool" "${build[@]}" --pull=never --isolation chroot --network host --format docker \
    --label "org.opencontainers.image.version=$version" \
    --label "sfstream.source-digest=$digest" \
    --file deploy/Dockerfile --tag "$IMAGE" .
image_s=$((SECONDS - built))
if [[ ${IMAGE##*/} == *:* ]] && [ -n "$version" ]; then
    "$tool" tag "$IMAGE" "${IMAGE%:*}:$version"
fi
# The image this one replaces goes if it has no name left (nor a container using it).
if [ "$tool" = podman ] && [ -n "$previous" ] &&
    [ "$(podman image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null)" = 0 ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
echo "image $IMAGE built: base ${base_s} s, image ${image_s} s, in all $((SECONDS - started)) s"
