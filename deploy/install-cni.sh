#!/bin/sh
# switchyard-install-cni: the DaemonSet's init container. Installs the
# `switchyard` CNI plugin into the node's CNI binary directory and the conflist
# into its CNI config directory. Each file is copied to a temporary name in the
# destination directory and renamed over the old one, so the container runtime
# never executes or reads a half-written file (and a running plugin keeps its
# old inode). The portmap plugin the conflist chains is installed only if the
# node lacks one. The conflist's cniVersion becomes 1.1.0 (so that runtimes
# call STATUS and GC) only when every plugin of the chain, as installed on
# this node, lists 1.1.0 in its VERSION answer; otherwise it stays as shipped
# (1.0.0), which every chained plugin of the 1.x line accepts.
#
# Environment (defaults are the DaemonSet's mounts):
#   CNI_BIN_DIR          /host/opt/cni/bin
#   CNI_CONF_DIR         /host/etc/cni/net.d
#   CNI_CONFLIST         /etc/switchyard/10-switchyard.conflist
#   SWITCHYARD_CNI_BIN   /usr/local/bin/switchyard
#   CHAINED_PLUGINS_DIR  /usr/lib/cni (Debian's containernetworking-plugins)
set -eu

bin_dir=${CNI_BIN_DIR:-/host/opt/cni/bin}
conf_dir=${CNI_CONF_DIR:-/host/etc/cni/net.d}
conflist=${CNI_CONFLIST:-/etc/switchyard/10-switchyard.conflist}
plugin=${SWITCHYARD_CNI_BIN:-/usr/local/bin/switchyard}
chained_dir=${CHAINED_PLUGINS_DIR:-/usr/lib/cni}

log() {
    echo "switchyard-install-cni: $*" >&2
}

# install_atomically SOURCE DESTINATION MODE
install_atomically() {
    src=$1
    dst=$2
    mode=$3
    tmp="$(dirname "$dst")/.$(basename "$dst").tmp"
    rm -f "$tmp"
    cp "$src" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dst"
    log "installed $dst"
}

for f in "$plugin" "$conflist"; do
    if [ ! -f "$f" ]; then
        log "missing $f"
        exit 1
    fi
done
mkdir -p "$bin_dir" "$conf_dir"

# The binary first: the conflist makes kubelet consider the network ready.
install_atomically "$plugin" "$bin_dir/switchyard" 0755
if [ ! -e "$bin_dir/portmap" ] && [ -f "$chained_dir/portmap" ]; then
    install_atomically "$chained_dir/portmap" "$bin_dir/portmap" 0755
fi
# supports_version TYPE VERSION: the installed plugin TYPE lists VERSION in
# the supportedVersions of its VERSION answer.
supports_version() {
    answer=$(CNI_COMMAND=VERSION "$bin_dir/$1" </dev/null 2>/dev/null) || return 1
    printf '%s' "$answer" | tr -d ' \n' |
        sed -n 's/.*"supportedVersions":\[\([^]]*\)\].*/\1/p' | grep -q "\"$2\""
}

types=$(grep -o '"type": *"[^"]*"' "$conflist" | sed 's/.*"\([^"]*\)"$/\1/')
upgrade=1.1.0
for t in $types; do
    if ! supports_version "$t" "$upgrade"; then
        log "plugin $t does not list CNI $upgrade; the conflist keeps its cniVersion"
        upgrade=
        break
    fi
done
if [ -n "$upgrade" ]; then
    rendered=$(mktemp)
    sed "0,/\"cniVersion\": *\"[^\"]*\"/s//\"cniVersion\": \"$upgrade\"/" "$conflist" >"$rendered"
    log "every plugin of the chain supports CNI $upgrade: cniVersion $upgrade (STATUS and GC)"
    install_atomically "$rendered" "$conf_dir/10-switchyard.conflist" 0644
    rm -f "$rendered"
else
    install_atomically "$conflist" "$conf_dir/10-switchyard.conflist" 0644
fi
