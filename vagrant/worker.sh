#!/bin/bash
# A worker joins the cluster with the command the control plane left (the
# controller-manager then gives its Node a pod CIDR).
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh

if [ -f /etc/kubernetes/kubelet.conf ]; then
    log "already joined"
else
    fetch_shared join.sh /var/tmp/switchyard-join.sh
    log "joining"
    bash /var/tmp/switchyard-join.sh
fi
