#!/bin/bash
# The VLAN router (SWITCHYARD_SEGMENTS=vlan): the gateway of VLAN segments,
# with one 802.1Q sub-interface per VLAN on the trunk NIC, routing between
# them and NATing to the outside.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh
require_env TRUNK_IF

# VLAN id and gateway address of each segment (agent config: vlan, gateway).
vlans=("100 10.20.0.1/24")

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends iproute2 iptables >/dev/null
modprobe 8021q
ip link set "$TRUNK_IF" up
for entry in "${vlans[@]}"; do
    read -r id address <<<"$entry"
    sub="$TRUNK_IF.$id"
    ip link show "$sub" >/dev/null 2>&1 ||
        ip link add link "$TRUNK_IF" name "$sub" type vlan id "$id"
    ip address replace "$address" dev "$sub"
    ip link set "$sub" up
    log "VLAN $id: $address on $sub"
done
sysctl -qw net.ipv4.ip_forward=1
uplink=$(ip -4 route show default | awk '{print $5; exit}')
iptables -t nat -C POSTROUTING -o "$uplink" -j MASQUERADE 2>/dev/null ||
    iptables -t nat -A POSTROUTING -o "$uplink" -j MASQUERADE
