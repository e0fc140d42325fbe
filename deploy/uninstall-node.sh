#!/bin/sh
# Removes what Switchyard leaves on a node after `kubectl delete -f
# deploy/switchyard.yaml`: the CNI plugin and conflist, the agent's socket
# directory, and the Open vSwitch state (docs/install.md#uninstall).
# Run as root on each node, after the DaemonSet's pods are gone:
#   sh uninstall-node.sh            # bundled OVS (deploy/switchyard.yaml)
#   sh uninstall-node.sh --host-ovs # the node's own OVS: deletes only br-int
# Pods still running on the node lose their network: drain the node first.
set -eu

bridge=${SWITCHYARD_BRIDGE:-br-int}
mode=bundled
case "${1:-}" in
"") ;;
--host-ovs) mode=host ;;
*)
    echo "usage: uninstall-node.sh [--host-ovs]" >&2
    exit 2
    ;;
esac

rm -f /etc/cni/net.d/10-switchyard.conflist /opt/cni/bin/switchyard
rm -rf /var/run/switchyard

# The proxy's host side: its nftables table and its routes (protocol 0x54)
# into sy-gw0. Nothing else of the host's firewall or routing is touched.
if command -v nft >/dev/null 2>&1; then
    nft delete table ip switchyard-proxy 2>/dev/null || true
fi
ip -4 route flush proto 0x54 2>/dev/null || true

if [ "$mode" = host ]; then
    # The node's OVS keeps running; only Switchyard's bridge goes.
    ovs-vsctl --if-exists del-br "$bridge"
else
    # The bundled OVS has exited with its pod; its kernel datapath stays
    # until deleted (it holds br-int, sy-gw0 and the pods' host veths).
    if command -v ovs-dpctl >/dev/null 2>&1; then
        ovs-dpctl del-dp ovs-system 2>/dev/null || true
    else
        echo "switchyard: ovs-dpctl missing (package openvswitch-common): the kernel datapath" >&2
        echo "ovs-system stays until 'rmmod openvswitch' or a reboot" >&2
    fi
    ip link delete sy-gw0 2>/dev/null || true
    rm -rf /var/lib/switchyard
    rm -f /var/run/openvswitch/db.sock /var/run/openvswitch/*.mgmt \
        /var/run/openvswitch/*.snoop /var/run/openvswitch/*.pid /var/run/openvswitch/*.ctl
fi
echo "switchyard: node cleaned ($mode OVS)"
