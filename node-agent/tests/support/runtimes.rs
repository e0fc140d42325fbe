//! What the container-runtime tests (`podman.rs`, `containerd.rs`) share: runc as this
//! machine lets it run, a busybox root file system, the node's pod CIDR.

use std::path::{Path, PathBuf};

use super::{NODE_NAME, NodeLab};

/// A script running runc with `process.rlimits` removed from what it reads (the bundle's
/// `config.json` for `create`, the process file for `exec`): this machine's root lacks
/// CAP_SYS_RESOURCE, so runc cannot apply the limits runtimes write into every OCI spec
/// ("operation not permitted"). Nothing about networking changes.
pub fn write_runc_wrapper(dir: &Path) -> PathBuf {
    let path = dir.join("runc-without-rlimits");
    std::fs::write(
        &path,
        r#"#!/bin/sh
strip() { sed -i -e 's/"rlimits":\[[^]]*\],//' -e 's/,"rlimits":\[[^]]*\]//' "$1"; }
prev=
for a in "$@"; do
  case "$prev" in
    --bundle|-b) [ -f "$a/config.json" ] && strip "$a/config.json" ;;
    --process|-p) [ -f "$a" ] && strip "$a" ;;
  esac
  case "$a" in
    --bundle=*) [ -f "${a#--bundle=}/config.json" ] && strip "${a#--bundle=}/config.json" ;;
    --process=*) [ -f "${a#--process=}" ] && strip "${a#--process=}" ;;
  esac
  prev=$a
done
exec runc "$@"
"#,
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// `dir/rootfs`: Debian's busybox-static as `/bin/busybox`, with `tools` linked to it.
pub fn busybox_rootfs(dir: &Path, tools: &[&str]) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox (Debian's busybox-static) installed");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for tool in tools {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    rootfs
}

/// The node's `spec.podCIDR`.
pub async fn node_pod_cidr(lab: &NodeLab) -> ipnet::Ipv4Net {
    let node = kube::Api::<k8s_openapi::api::core::v1::Node>::all(lab.kube.clone())
        .get(NODE_NAME)
        .await
        .unwrap();
    node.spec.unwrap().pod_cidr.unwrap().parse().unwrap()
}
