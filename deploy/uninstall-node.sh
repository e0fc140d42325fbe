#!/bin/sh
# Removes what Switchyard leaves on a node after `kubectl delete -f
# deploy/switchyard.yaml` (docs/install.md#uninstalling), and says what it
# removed, one line each:
#   - the CNI plugin, its conflist and its log files;
#   - the agent's socket directory and the state directory;
#   - the agent's SWITCHYARD-EGRESS chain in iptables' nat table (and the
#     POSTROUTING jump to it) and the proxy's nftables table;
#   - the routes the agent (protocol 0x53) and the proxy (0x54) added, and the
#     proxy-ARP entries the agent answers LoadBalancer addresses with (0x53);
#   - Open vSwitch: with the bundled OVS the kernel datapath, sy-gw0, any pod
#     link left and the OVS run files; with --host-ovs only br-int.
# Nothing untagged is touched: other chains, tables, routes and bridges stay.
# Run as root on each node, after the DaemonSet's pods are gone:
#   sh uninstall-node.sh            # bundled OVS (deploy/switchyard.yaml)
#   sh uninstall-node.sh --host-ovs # the node's own OVS: deletes only br-int
# Pods still running on the node lose their network: drain the node first.
# The paths can be moved with SWITCHYARD_CNI_CONF_DIR, SWITCHYARD_CNI_BIN_DIR,
# SWITCHYARD_CNI_LOG, SWITCHYARD_RUN_DIR, SWITCHYARD_STATE_DIR and OVS_RUNDIR
# (the tests do).
set -eu

bridge=${SWITCHYARD_BRIDGE:-br-int}
cni_conf_dir=${SWITCHYARD_CNI_CONF_DIR:-/etc/cni/net.d}
cni_bin_dir=${SWITCHYARD_CNI_BIN_DIR:-/opt/cni/bin}
cni_log=${SWITCHYARD_CNI_LOG:-/var/log/switchyard-cni.log}
run_dir=${SWITCHYARD_RUN_DIR:-/var/run/switchyard}
state_dir=${SWITCHYARD_STATE_DIR:-/var/lib/switchyard}
ovs_run_dir=${OVS_RUNDIR:-/var/run/openvswitch}
mode=bundled
case "${1:-}" in
"") ;;
--host-ovs) mode=host ;;
*)
    echo "usage: uninstall-node.sh [--host-ovs]" >&2
    exit 2
    ;;
esac

removed=0
say() {
    echo "switchyard: removed $*"
    removed=$((removed + 1))
}

for f in "$cni_conf_dir/10-switchyard.conflist" "$cni_bin_dir/switchyard" \
    "$cni_log" "$cni_log.1" "$cni_log.lock"; do
    if [ -e "$f" ]; then
        rm -f "$f"
        say "$f"
    fi
done
if [ -e "$run_dir" ]; then
    rm -rf "$run_dir"
    say "$run_dir"
fi

# The agent's egress MASQUERADE: the jump, then the chain.
if command -v iptables >/dev/null 2>&1 &&
    iptables -w -t nat -S SWITCHYARD-EGRESS >/dev/null 2>&1; then
    while iptables -w -t nat -D POSTROUTING -j SWITCHYARD-EGRESS 2>/dev/null; do :; done
    iptables -w -t nat -F SWITCHYARD-EGRESS
    iptables -w -t nat -X SWITCHYARD-EGRESS
    say "iptables nat chain SWITCHYARD-EGRESS"
fi
# The proxy's host side.
if command -v nft >/dev/null 2>&1 && nft list table ip switchyard-proxy >/dev/null 2>&1; then
    nft delete table ip switchyard-proxy
    say "nftables table ip switchyard-proxy"
fi
for proto in 0x53 0x54; do
    routes=$(ip -4 route show proto "$proto" 2>/dev/null || true)
    if [ -n "$routes" ]; then
        ip -4 route flush proto "$proto"
        say "routes of protocol $proto: $(echo "$routes" | wc -l)"
    fi
done
# Proxy-ARP entries (`ip neigh ... proxy ... protocol 0x53`), one by one.
ip -4 neigh show proxy proto 0x53 2>/dev/null | while read -r addr _ dev _; do
    if ip neigh del proxy "$addr" dev "$dev" 2>/dev/null; then
        echo "switchyard: removed proxy-ARP entry $addr on $dev"
    fi
done

if [ "$mode" = host ]; then
    # The node's OVS keeps running; only Switchyard's bridge goes (with its ports).
    if ovs-vsctl --timeout=10 br-exists "$bridge" 2>/dev/null; then
        ovs-vsctl --timeout=10 del-br "$bridge"
        say "OVS bridge $bridge"
    fi
else
    # The bundled OVS has exited with its pod; its kernel datapath stays
    # until deleted (it holds br-int, sy-gw0 and the pods' host veths).
    if command -v ovs-dpctl >/dev/null 2>&1; then
        if ovs-dpctl del-dp ovs-system 2>/dev/null; then
            say "OVS kernel datapath ovs-system"
        fi
    else
        echo "switchyard: ovs-dpctl missing (package openvswitch-common): the kernel datapath" >&2
        echo "ovs-system stays until 'rmmod openvswitch' or a reboot" >&2
    fi
    for f in "$ovs_run_dir/db.sock" "$ovs_run_dir"/*.mgmt "$ovs_run_dir"/*.snoop \
        "$ovs_run_dir"/*.pid "$ovs_run_dir"/*.ctl; do
        if [ -e "$f" ]; then
            rm -f "$f"
            say "$f"
        fi
    done
    if [ -e "$state_dir" ]; then
        rm -rf "$state_dir"
        say "$state_dir (OVS database, saved flows)"
    fi
fi
# The gateway port and pod host ends (sy + 11 hex digits) left by either variant.
for link in $(ip -o link show 2>/dev/null | sed -n 's/^[0-9]*: \([^:@]*\)[:@].*/\1/p' |
    grep -E '^(sy-gw0|sy[0-9a-f]{11})$' || true); do
    if ip link delete "$link" 2>/dev/null; then
        say "link $link"
    fi
done
echo "switchyard: node cleaned ($mode OVS, $removed items removed)"
