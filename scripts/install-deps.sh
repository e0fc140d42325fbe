#!/usr/bin/env bash
# Installs the Debian packages Switchyard's lab and tests need. Idempotent and
# non-interactive; does nothing when everything is already there.
set -euo pipefail

packages=(
    openvswitch-switch          # ovsdb-server, ovs-vswitchd, ovs-vsctl, ovs-ofctl, ovs-appctl
    iproute2                    # ip netns, veth
    ethtool                     # checksum offload checks
    iputils-ping                # ping in e2e tests
    curl                        # HTTP probes in e2e tests
    conntrack                   # conntrack inspection
    iptables                    # kube-proxy iptables baseline in benchmarks
    nftables                    # nft: switchyard-proxy's NodePort/external IP table, its tests
    containernetworking-plugins # reference plugins: chaining tests and the bridge/host-local baseline
    python3                     # tiny echo servers in datapath tests
    podman                      # a runtime other than kubelet on a Switchyard network (agent tests)
    runc                        # the OCI runtime of the podman and containerd tests
    busybox-static              # the root file system of that test's containers (and containerd's sandboxes)
    containerd                  # kubelet's path, containerd's CRI, driven by an agent test
    protobuf-compiler           # protoc: builds that test's CRI client (k8s-cri)
    shellcheck                  # lints every shell script (deploy tests)
    vagrant                     # `vagrant validate` of the Vagrant lab (deploy tests)
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# kubectl drives the lab's API server in tests. The machine image ships it; on
# a bare Debian, the distribution's (older) kubernetes-client provides it.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: missing packages (${missing[*]}); run as root" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
