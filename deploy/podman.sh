#!/usr/bin/env bash
# podman with the settings of deploy/containers.sh (runc, cgroupfs, ulimits within the host's
# limits, the host's network): `deploy/podman.sh run --rm localhost/sfstream:latest --help`.
set -euo pipefail
# shellcheck source=deploy/containers.sh
. "$(dirname "$0")/containers.sh"
container_env
exec podman "$@"
