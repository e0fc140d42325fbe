#!/bin/bash
# Every node: kernel settings, containerd, kubeadm/kubelet/kubectl from
# pkgs.k8s.io, Open vSwitch (daemons for SWITCHYARD_OVS=host, tools only
# otherwise: the DaemonSet then runs its own), kubelet on the node network.
#
# No routes to other nodes' pod CIDRs: the Switchyard agent tunnels pod
# traffic between nodes (Geneve or VXLAN, the agent config's tunnel-type) to
# each Node's InternalIP, which is this node-network address (kubelet
# --node-ip below), and installs the routes it needs itself.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh
require_env NODE_IP K8S_VERSION OVS_MODE

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

# The VMs' first NIC is the NAT network every VM shares (the same address on
# every VM): kubelet must advertise the node-network address instead. It is
# the Node's InternalIP, where the other nodes' agents send their tunnels.
echo "KUBELET_EXTRA_ARGS=--node-ip=${NODE_IP}" >/etc/default/kubelet
systemctl enable --now kubelet
log "node ready for kubeadm"
