#!/bin/bash
# A worker joins the cluster with the command the control plane left.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh
require_env SHARED_DIR

if [ -f /etc/kubernetes/kubelet.conf ]; then
    log "already joined"
    exit 0
fi
[ -f "$SHARED_DIR/join.sh" ] || die "$SHARED_DIR/join.sh is missing: provision sy-cp first"
log "joining"
bash "$SHARED_DIR/join.sh"
