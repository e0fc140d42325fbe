#!/bin/bash
# switchyard-ovs: runs ovsdb-server and ovs-vswitchd in the DaemonSet's `ovs`
# container (the bundled-OVS variant).
#
#   switchyard-ovs run      start both daemons and stay until SIGTERM/SIGINT
#   switchyard-ovs health   exit 0 when both daemons answer (liveness)
#   switchyard-ovs ready    health, and no flow restore pending (startup probe)
#
# Restarts keep the datapath forwarding. On SIGTERM the flows and groups of
# the bridge are saved to $SWITCHYARD_STATE_DIR/saved-flows, then ovs-vswitchd
# exits without removing the datapath. On start, when saved flows exist,
# ovs-vswitchd starts with other_config:flow-restore-wait=true (it neither
# flushes nor revalidates the kernel's datapath flows), the saved flows and
# groups are put back in one bundle, and flow-restore-wait is removed. The
# agent and the proxy then reconcile their flows by cookie as usual.
#
# The logs are rotated by size while the daemons run: when ovsdb-server.log or
# ovs-vswitchd.log passes $SWITCHYARD_OVS_LOG_MAX_BYTES (default 10 MiB) it is
# renamed to .1 (older ones shifted, $SWITCHYARD_OVS_LOG_KEEP kept, default 3)
# and the daemon reopens its log (`ovs-appctl vlog/reopen`). Checked every 5 s.
#
# The database lives in $OVS_DBDIR (/etc/openvswitch, a hostPath), the
# sockets and pid files in $OVS_RUNDIR (/var/run/openvswitch, a hostPath
# shared with the agent and proxy), the logs in $OVS_LOGDIR. The OVS tools
# find the daemons through the same variables, so the script also runs
# against a private instance (deploy/tests/ovs_script.rs does).
set -euo pipefail

bridge=${SWITCHYARD_BRIDGE:-br-int}
state_dir=${SWITCHYARD_STATE_DIR:-/var/lib/switchyard}
export OVS_RUNDIR=${OVS_RUNDIR:-/var/run/openvswitch}
export OVS_DBDIR=${OVS_DBDIR:-/etc/openvswitch}
export OVS_LOGDIR=${OVS_LOGDIR:-/var/log/openvswitch}
schema=${OVS_SCHEMA:-/usr/share/openvswitch/vswitch.ovsschema}
run_dir=$OVS_RUNDIR
db="$OVS_DBDIR/conf.db"
saved="$state_dir/saved-flows"
ofp=OpenFlow15
log_max_bytes=${SWITCHYARD_OVS_LOG_MAX_BYTES:-10485760}
log_keep=${SWITCHYARD_OVS_LOG_KEEP:-3}

log() {
    echo "switchyard-ovs: $*" >&2
}

health() {
    ovs-appctl -t ovsdb-server version >/dev/null &&
        ovs-appctl -t ovs-vswitchd version >/dev/null
}

ready() {
    health && ! ovs-vsctl --no-wait --timeout=5 get Open_vSwitch . \
        other_config:flow-restore-wait >/dev/null 2>&1
}

# Rotates a daemon's log once it passes $log_max_bytes (see the header).
rotate_log() {
    local daemon=$1 file i size
    file="$OVS_LOGDIR/$daemon.log"
    size=$(stat -c %s "$file" 2>/dev/null || echo 0)
    if [ "$size" -le "$log_max_bytes" ]; then
        return 0
    fi
    rm -f "$file.$log_keep"
    for ((i = log_keep - 1; i >= 1; i--)); do
        if [ -e "$file.$i" ]; then
            mv -f "$file.$i" "$file.$((i + 1))"
        fi
    done
    mv -f "$file" "$file.1"
    if ovs-appctl -t "$daemon" vlog/reopen; then
        log "rotated $daemon.log ($size bytes)"
    else
        log "rotated $daemon.log, but $daemon did not reopen it"
    fi
}

bridge_exists() {
    ovs-vsctl --no-wait --timeout=5 br-exists "$bridge"
}

save_flows() {
    if ! bridge_exists; then
        return 0
    fi
    mkdir -p "$saved"
    # Headers removed so the files are what add-groups/replace-flows read.
    if ovs-ofctl -O "$ofp" dump-groups "$bridge" |
        sed -e '/^OFPST_GROUP_DESC/d' -e '/^NXST_GROUP_DESC/d' >"$saved/$bridge.groups.tmp" &&
        ovs-ofctl -O "$ofp" dump-flows --no-names --no-stats "$bridge" |
        sed -e '/^OFPST_FLOW/d' -e '/^NXST_FLOW/d' >"$saved/$bridge.flows.tmp"; then
        mv -f "$saved/$bridge.groups.tmp" "$saved/$bridge.groups"
        mv -f "$saved/$bridge.flows.tmp" "$saved/$bridge.flows"
        log "saved $(wc -l <"$saved/$bridge.flows") flows of $bridge"
    else
        log "could not save the flows of $bridge; the agent and proxy will reinstall them"
        rm -f "$saved/$bridge".*
    fi
}

restore_flows() {
    local waited=0
    while [ ! -S "$run_dir/$bridge.mgmt" ] && [ "$waited" -lt 60 ]; do
        sleep 0.5
        waited=$((waited + 1))
    done
    if ovs-ofctl -O "$ofp" add-groups "$bridge" "$saved/$bridge.groups" &&
        ovs-ofctl -O "$ofp" --bundle replace-flows "$bridge" "$saved/$bridge.flows"; then
        log "restored $(wc -l <"$saved/$bridge.flows") flows of $bridge"
    else
        log "restoring the flows of $bridge failed; the agent and proxy will reinstall them"
    fi
    # Always: ovs-vswitchd forwards nothing new while the flag is set.
    ovs-vsctl --no-wait remove Open_vSwitch . other_config flow-restore-wait
    rm -f "$saved/$bridge".*
}

start_ovsdb() {
    if [ ! -e "$db" ]; then
        ovsdb-tool create "$db" "$schema"
    elif [ "$(ovsdb-tool needs-conversion "$db" "$schema")" = yes ]; then
        log "upgrading the database schema"
        ovsdb-tool convert "$db" "$schema"
    fi
    ovsdb-server "$db" \
        --remote="punix:$run_dir/db.sock" \
        --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
        --pidfile="$run_dir/ovsdb-server.pid" \
        --log-file="$OVS_LOGDIR/ovsdb-server.log" --detach
    ovs-vsctl --no-wait init
}

start_vswitchd() {
    # The kernel datapath needs the module; the userspace one does not.
    if [ ! -d /sys/module/openvswitch ] && ! modprobe openvswitch 2>/dev/null; then
        log "cannot load the openvswitch kernel module: only datapath-type netdev will work"
    fi
    ovs-vswitchd "unix:$run_dir/db.sock" \
        --pidfile="$run_dir/ovs-vswitchd.pid" \
        --log-file="$OVS_LOGDIR/ovs-vswitchd.log" --detach
}

stop() {
    log "stopping"
    save_flows || true
    local pids daemon pid waited
    pids=$(cat "$run_dir/ovs-vswitchd.pid" "$run_dir/ovsdb-server.pid" 2>/dev/null || true)
    # `exit` without --cleanup keeps the datapath and its flows.
    for daemon in ovs-vswitchd ovsdb-server; do
        ovs-appctl -t "$daemon" exit || true
    done
    for pid in $pids; do
        waited=0
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 100 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
    done
    log "stopped"
    exit 0
}

run() {
    mkdir -p "$run_dir" "$state_dir" "$OVS_DBDIR" "$OVS_LOGDIR"
    if ovs-vsctl --no-wait --timeout=2 show >/dev/null 2>&1; then
        log "an ovsdb-server already answers on $run_dir/db.sock: this node runs Open vSwitch itself;"
        log "stop it, or install deploy/switchyard-host-ovs.yaml instead"
        exit 1
    fi
    # Pid files of a previous container name processes of another pid namespace.
    rm -f "$run_dir"/*.pid "$run_dir"/*.ctl

    start_ovsdb
    local restore=no
    if [ -s "$saved/$bridge.flows" ] && bridge_exists; then
        restore=yes
        ovs-vsctl --no-wait set Open_vSwitch . other_config:flow-restore-wait=true
    fi
    if [ "$restore" = no ]; then
        # A flag left by an interrupted restore would stop forwarding for good.
        ovs-vsctl --no-wait remove Open_vSwitch . other_config flow-restore-wait
    fi
    start_vswitchd
    if [ "$restore" = yes ]; then
        restore_flows
    fi
    trap stop TERM INT
    log "running"
    while health; do
        rotate_log ovsdb-server
        rotate_log ovs-vswitchd
        sleep 5 &
        wait $! || true
    done
    log "a daemon exited"
    exit 1
}

case "${1:-}" in
run) run ;;
health) health ;;
ready) ready ;;
*)
    echo "usage: switchyard-ovs run|health|ready" >&2
    exit 2
    ;;
esac
