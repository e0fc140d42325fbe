#!/bin/bash
# A worker joins the cluster with the command the control plane left, and
# gets its pod CIDR.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh
require_env SHARED_DIR NODE_INDEX

if [ -f /etc/kubernetes/kubelet.conf ]; then
    log "already joined"
else
    [ -f "$SHARED_DIR/join.sh" ] || die "$SHARED_DIR/join.sh is missing: provision sy-cp first"
    log "joining"
    bash "$SHARED_DIR/join.sh"
fi
export KUBECONFIG="$SHARED_DIR/admin.conf"
set_pod_cidr "$(hostname)" "$NODE_INDEX"
