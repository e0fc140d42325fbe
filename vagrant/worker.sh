#!/bin/bash
# A worker joins the cluster with the command the control plane left, and
# gets its pod CIDR.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh
require_env NODE_INDEX

if [ -f /etc/kubernetes/kubelet.conf ]; then
    log "already joined"
else
    fetch_shared join.sh /var/tmp/switchyard-join.sh
    log "joining"
    bash /var/tmp/switchyard-join.sh
fi
fetch_shared admin.conf /var/tmp/switchyard-admin.conf
export KUBECONFIG=/var/tmp/switchyard-admin.conf
set_pod_cidr "$(hostname)" "$NODE_INDEX"
