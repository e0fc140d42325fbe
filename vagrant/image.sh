#!/bin/bash
# The Switchyard image on every node. The control plane builds it from the
# repository (deploy/Containerfile, with buildah) unless IMAGE_TAR names a
# prebuilt archive, and serves its share directory (the archive, later the
# join command and kubeconfig) over HTTP on the node network; workers fetch
# the archive from there. Every node imports it into containerd's k8s.io
# namespace (imagePullPolicy is IfNotPresent, so no registry is needed).
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh
require_env NODE_ROLE NODE_IP SHARE_DIR SHARE_PORT

image=switchyard:0.1.0
archive="$SHARE_DIR/switchyard-image.tar"
mkdir -p "$SHARE_DIR"

if [ -n "${IMAGE_TAR:-}" ]; then
    archive="/vagrant/${IMAGE_TAR#./}"
    [ -f "$archive" ] || die "SWITCHYARD_IMAGE_TAR: $archive not found (give a path inside the repository)"
elif [ "$NODE_ROLE" = control-plane ]; then
    log "building $image from deploy/Containerfile (this compiles the workspace: several minutes)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
    buildah build --layers -f /vagrant/deploy/Containerfile \
        --ignorefile /vagrant/deploy/Containerfile.dockerignore -t "$image" /vagrant
    rm -f "$archive"
    buildah push "localhost/$image" "docker-archive:$archive:docker.io/library/$image"
else
    archive=/var/tmp/switchyard-image.tar
    fetch_shared switchyard-image.tar "$archive"
fi

if [ "$NODE_ROLE" = control-plane ] && ! systemctl is-active --quiet switchyard-share; then
    # Lab only: the node network is a private host-only network.
    systemd-run --unit=switchyard-share --property=Restart=always \
        python3 -m http.server "$SHARE_PORT" --bind "$NODE_IP" --directory "$SHARE_DIR"
    log "sharing $SHARE_DIR at http://$NODE_IP:$SHARE_PORT/"
fi
log "importing $archive into containerd"
ctr -n k8s.io images import "$archive" >/dev/null
ctr -n k8s.io images ls -q | grep -qx "docker.io/library/$image" ||
    die "image docker.io/library/$image not in containerd after import"
