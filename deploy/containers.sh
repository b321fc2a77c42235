# Sourced by the image scripts of deploy/ (build-base.sh, build-image.sh, podman.sh): podman
# and buildah set up for a machine like the CI's without changing the host's configuration.
#
# `container_env` exports CONTAINERS_CONF (unless it is set already) naming a containers.conf
# written under $SFSTREAM_CONTAINERS_DIR (default: $TMPDIR/sfstream-containers). With it set,
# podman and buildah read no other containers.conf. What it changes from their defaults:
#   - runtime runc: crun refuses a host whose cgroups are in hybrid (v1 + v2) mode;
#   - cgroupfs and a file events log: no systemd needed;
#   - ulimits within the host's hard limits: podman's defaults ask for more open files than
#     root may have where it lacks CAP_SYS_RESOURCE, and nproc above 32768 is refused too;
#   - the host's network by default: never the CNI bridge, which would add iptables chains
#     and turn on IP forwarding on the host.
# Images live in the default storage (/var/lib/containers/storage for root), where
# `podman images` shows them.

container_tool() {
    # The tool that builds: podman, else buildah; fails when neither is installed.
    if command -v podman >/dev/null 2>&1; then
        echo podman
    elif command -v buildah >/dev/null 2>&1; then
        echo buildah
    else
        return 1
    fi
}

container_tools_missing() {
    echo "building the image needs podman or buildah, with runc (and mmdebstrap to bootstrap" \
        "the base image without a registry). On Debian or Ubuntu, as root:" >&2
    echo "  apt-get install -y --no-install-recommends podman buildah runc mmdebstrap" >&2
    echo "or, with Docker: docker build -f deploy/Dockerfile -t sfstream ." >&2
}

container_env() {
    if [ -n "${CONTAINERS_CONF:-}" ]; then
        return 0
    fi
    local dir=${SFSTREAM_CONTAINERS_DIR:-${TMPDIR:-/tmp}/sfstream-containers}
    mkdir -p "$dir"
    local nofile nproc runtime=""
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    if [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ]; then
        nofile=1048576
    fi
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then
        nproc=32768
    fi
    if command -v runc >/dev/null 2>&1; then
        runtime='runtime = "runc"'
    fi
    local conf="$dir/containers.conf"
    cat >"$conf.$$" <<CONF
# Written by deploy/containers.sh; see there.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
netns = "host"

[engine]
$runtime
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    mv -f "$conf.$$" "$conf"
    export CONTAINERS_CONF="$conf"
}
