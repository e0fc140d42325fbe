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

# set_pod_cidr NODE INDEX: gives the Node object its pod CIDR 10.244.INDEX.0/24
# (the controller-manager does not allocate them in this lab: see node.sh).
set_pod_cidr() {
    local node=$1 index=$2 cidr
    cidr="10.244.$index.0/24"
    retry 60 2 kubectl get node "$node" >/dev/null 2>&1 || die "Node $node never registered"
    if [ -z "$(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}')" ]; then
        kubectl patch node "$node" --type merge \
            -p "{\"spec\":{\"podCIDR\":\"$cidr\",\"podCIDRs\":[\"$cidr\"]}}"
    fi
    log "Node $node: pod CIDR $(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}')"
}

# fetch_shared NAME DEST: a file the control plane shares (see image.sh).
fetch_shared() {
    local name=$1 dest=$2
    require_env CP_IP SHARE_PORT
    retry 120 5 curl -fsS -o "$dest" "http://$CP_IP:$SHARE_PORT/$name" ||
        die "cannot fetch $name from sy-cp (http://$CP_IP:$SHARE_PORT/): provision sy-cp first"
}
