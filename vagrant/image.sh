#!/bin/bash
# The Switchyard image on every node. The control plane builds it from the
# repository (deploy/Containerfile, with buildah) unless IMAGE_TAR names a
# prebuilt archive, and leaves the archive in the shared folder; every node
# imports it into containerd's k8s.io namespace (imagePullPolicy is
# IfNotPresent, so no registry is needed).
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh
require_env NODE_ROLE SHARED_DIR

image=switchyard:0.1.0
archive="$SHARED_DIR/switchyard-image.tar"
mkdir -p "$SHARED_DIR"

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
fi

[ -f "$archive" ] || die "$archive is missing: provision sy-cp first (vagrant up builds it there)"
log "importing $archive into containerd"
ctr -n k8s.io images import "$archive" >/dev/null
ctr -n k8s.io images ls -q | grep -qx "docker.io/library/$image" ||
    die "image docker.io/library/$image not in containerd after import"
