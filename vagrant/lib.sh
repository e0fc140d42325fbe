#!/bin/bash
# Helpers sourced by the provisioning scripts.

log() {
    echo "==> [$(hostname)] $*" >&2
}

die() {
    echo "==> [$(hostname)] ERROR: $*" >&2
    exit 1
}

# retry ATTEMPTS DELAY COMMAND...: runs COMMAND until it succeeds.
retry() {
    local attempts=$1 delay=$2 i
    shift 2
    for ((i = 1; i <= attempts; i++)); do
        if "$@"; then
            return 0
        fi
        sleep "$delay"
    done
    return 1
}

require_env() {
    local name
    for name in "$@"; do
        [ -n "${!name:-}" ] || die "$name is not set (the Vagrantfile sets it)"
    done
}

# fetch_shared NAME DEST: a file the control plane shares (see image.sh).
fetch_shared() {
    local name=$1 dest=$2
    require_env CP_IP SHARE_PORT
    retry 120 5 curl -fsS -o "$dest" "http://$CP_IP:$SHARE_PORT/$name" ||
        die "cannot fetch $name from sy-cp (http://$CP_IP:$SHARE_PORT/): provision sy-cp first"
}
