#!/bin/bash
# The control plane: kubeadm init without kube-proxy (switchyard-proxy serves
# ClusterIPs), the API server address for host-network clients, then
# Switchyard itself. Leaves the join command and an admin kubeconfig in the
# share directory for the workers and the smoke test (see image.sh).
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh
require_env NODE_IP SHARE_DIR OVS_MODE SEGMENTS TUNNEL_TYPE

pod_cidr=10.244.0.0/16
service_cidr=10.96.0.0/12
export KUBECONFIG=/etc/kubernetes/admin.conf

if [ ! -f /etc/kubernetes/admin.conf ]; then
    log "kubeadm init (kube-proxy addon skipped)"
    # --pod-network-cidr makes the controller-manager give every Node a
    # spec.podCIDR (a /24), which the agent's overlay segment uses.
    kubeadm init \
        --apiserver-advertise-address="$NODE_IP" \
        --pod-network-cidr="$pod_cidr" \
        --service-cidr="$service_cidr" \
        --skip-phases=addon/kube-proxy
fi

mkdir -p /home/vagrant/.kube "$SHARE_DIR"
install -o vagrant -g vagrant -m 0600 /etc/kubernetes/admin.conf /home/vagrant/.kube/config
install -m 0644 /etc/kubernetes/admin.conf "$SHARE_DIR/admin.conf"
kubeadm token create --print-join-command >"$SHARE_DIR/join.sh"

log "installing Switchyard ($OVS_MODE OVS, $SEGMENTS segments, $TUNNEL_TYPE overlay)"
manifest=/vagrant/deploy/switchyard.yaml
if [ "$OVS_MODE" = host ]; then
    manifest=/vagrant/deploy/switchyard-host-ovs.yaml
fi
kubectl apply -f - <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: switchyard-system
YAML
# Host-network pods (the agent and proxy) cannot use the kubernetes Service
# before a service proxy runs: give them the API server's own address.
kubectl -n switchyard-system create configmap switchyard-api-server \
    --from-literal=host="$NODE_IP" --from-literal=port=6443 \
    --dry-run=client -o yaml | kubectl apply -f -
# The manifest's agent config says tunnel-type: geneve; SWITCHYARD_TUNNEL
# chooses it (the same on every node: one DaemonSet, one ConfigMap).
tunnel_line='    tunnel-type: geneve'
[ "$(grep -cx "$tunnel_line" "$manifest")" -eq 1 ] ||
    die "$manifest: expected one line '$tunnel_line' in the agent config"
sed "s/^$tunnel_line\$/    tunnel-type: $TUNNEL_TYPE/" "$manifest" | kubectl apply -f -
if [ "$SEGMENTS" = vlan ]; then
    # Segment "blue": VLAN 100 on the trunk NIC eth2; the router VM is its gateway.
    kubectl -n switchyard-system get configmap switchyard-config -o json |
        python3 /vagrant/vagrant/add-vlan-segment.py blue 100 10.20.0.0/24 10.20.0.1 eth2 |
        kubectl apply -f -
    kubectl -n switchyard-system rollout restart daemonset/switchyard-node
fi
log "control plane up; workers join with $SHARE_DIR/join.sh"
