#!/bin/bash
# Every node: kernel settings, containerd, kubeadm/kubelet/kubectl from
# pkgs.k8s.io, Open vSwitch (daemons for SWITCHYARD_OVS=host, tools only
# otherwise: the DaemonSet then runs its own), kubelet on the node network,
# and routes to the other nodes' pod CIDRs.
#
# Pod CIDRs: node i gets 10.244.i.0/24 (control-plane.sh and worker.sh set
# it on the Node object). Switchyard's Geneve/VXLAN overlay between nodes is
# not built yet; until it is, the lab routes pod CIDRs over the node network
# (all VMs share one L2 network), so pods on different nodes reach each other
# through the nodes' own routing.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh
require_env NODE_IP NODE_INDEX NODE_COUNT NET_PREFIX K8S_VERSION OVS_MODE

export DEBIAN_FRONTEND=noninteractive

log "kernel modules and sysctls"
swapoff -a
sed -i '/\sswap\s/d' /etc/fstab
cat >/etc/modules-load.d/switchyard.conf <<'MODULES'
overlay
br_netfilter
openvswitch
MODULES
for m in overlay br_netfilter openvswitch; do
    modprobe "$m"
done
cat >/etc/sysctl.d/90-switchyard.conf <<'SYSCTL'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
SYSCTL
sysctl --system >/dev/null

log "packages"
apt-get update -qq
ovs_packages=(openvswitch-common)
if [ "$OVS_MODE" = host ]; then
    ovs_packages=(openvswitch-switch)
fi
apt-get install -y -qq --no-install-recommends \
    containerd curl gpg ca-certificates apt-transport-https conntrack ethtool \
    iproute2 python3 "${ovs_packages[@]}" >/dev/null

log "containerd (systemd cgroups)"
mkdir -p /etc/containerd
containerd config default >/etc/containerd/config.toml
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
systemctl restart containerd

log "Kubernetes $K8S_VERSION packages"
mkdir -p /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/v${K8S_VERSION}/deb/Release.key" |
    gpg --batch --yes --dearmor -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v${K8S_VERSION}/deb/ /" \
    >/etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
apt-get install -y -qq kubelet kubeadm kubectl >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null

# The VMs' first NIC is the NAT network every VM shares: kubelet must
# advertise the node-network address instead.
echo "KUBELET_EXTRA_ARGS=--node-ip=${NODE_IP}" >/etc/default/kubelet
systemctl enable --now kubelet

log "routes to the other nodes' pod CIDRs"
for ((j = 0; j < NODE_COUNT; j++)); do
    if [ "$j" -ne "$NODE_INDEX" ]; then
        ip route replace "10.244.$j.0/24" via "$NET_PREFIX.$((10 + j))"
    fi
done
log "node ready for kubeadm"
