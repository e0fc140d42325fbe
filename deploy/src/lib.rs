//! Generates Switchyard's Kubernetes manifests (`deploy/switchyard.yaml` and
//! `deploy/switchyard-host-ovs.yaml`) from the sources in `deploy/sources/`.
//!
//! The output is text assembled from the sources, so their comments reach the
//! user. The agent's config file and the CNI conflist become the keys of the
//! `switchyard-config` ConfigMap verbatim; the DaemonSet source marks the
//! bundled Open vSwitch parts with `# BEGIN bundled-ovs` / `# END bundled-ovs`
//! lines, which the host-OVS variant leaves out.

use std::fmt::Write as _;

/// Namespace every namespaced object lives in.
pub const NAMESPACE: &str = "switchyard-system";
/// Name of the ConfigMap holding the agent config and the conflist.
pub const CONFIG_MAP: &str = "switchyard-config";
/// ConfigMap key (and file name under `/etc/switchyard`) of the agent config.
pub const AGENT_CONFIG_KEY: &str = "agent.yaml";
/// ConfigMap key (and file name) of the CNI conflist.
pub const CONFLIST_KEY: &str = "10-switchyard.conflist";

/// `deploy/sources/namespace.yaml`.
pub const NAMESPACE_SOURCE: &str = include_str!("../sources/namespace.yaml");
/// `deploy/sources/rbac.yaml`.
pub const RBAC_SOURCE: &str = include_str!("../sources/rbac.yaml");
/// `deploy/sources/agent.yaml`: the agent's config file.
pub const AGENT_CONFIG_SOURCE: &str = include_str!("../sources/agent.yaml");
/// `deploy/sources/10-switchyard.conflist`.
pub const CONFLIST_SOURCE: &str = include_str!("../sources/10-switchyard.conflist");
/// `deploy/sources/daemonset.yaml`.
pub const DAEMONSET_SOURCE: &str = include_str!("../sources/daemonset.yaml");
/// `deploy/sources/controller.yaml`: the LoadBalancer controller's Deployment.
pub const CONTROLLER_SOURCE: &str = include_str!("../sources/controller.yaml");
/// `deploy/sources/metrics.yaml`: the headless Services of the metrics endpoints.
pub const METRICS_SOURCE: &str = include_str!("../sources/metrics.yaml");
/// `deploy/servicemonitor.yaml` (not part of the generated manifests: it needs
/// the Prometheus Operator's CRD).
pub const SERVICE_MONITOR: &str = include_str!("../servicemonitor.yaml");

const BEGIN_BUNDLED: &str = "# BEGIN bundled-ovs";
const END_BUNDLED: &str = "# END bundled-ovs";

/// Which Open vSwitch the pods use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The DaemonSet runs ovsdb-server and ovs-vswitchd in its `ovs` container.
    BundledOvs,
    /// The node's own Open vSwitch (`openvswitch-switch` service) is used.
    HostOvs,
}

impl Variant {
    /// Both variants.
    pub const ALL: [Variant; 2] = [Variant::BundledOvs, Variant::HostOvs];

    /// The generated file, relative to `deploy/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Variant::BundledOvs => "switchyard.yaml",
            Variant::HostOvs => "switchyard-host-ovs.yaml",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Variant::BundledOvs => {
                "Open vSwitch runs in the DaemonSet's `ovs` container (the node must not run its own)."
            }
            Variant::HostOvs => {
                "Uses the node's own Open vSwitch (openvswitch-switch, sockets in /var/run/openvswitch)."
            }
        }
    }
}

/// The block of a YAML mapping value holding `text` as a literal block.
fn literal_block(out: &mut String, key: &str, text: &str, indent: usize) {
    let pad = " ".repeat(indent);
    let _ = writeln!(out, "{pad}{key}: |");
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}  {line}");
        }
    }
}

/// The `switchyard-config` ConfigMap.
pub fn config_map() -> String {
    let mut out = String::new();
    out.push_str("# The agent's config file and the CNI conflist the install-cni init container\n");
    out.push_str("# copies to /etc/cni/net.d. Generated from deploy/sources/agent.yaml and\n");
    out.push_str("# deploy/sources/10-switchyard.conflist.\n");
    out.push_str("apiVersion: v1\nkind: ConfigMap\nmetadata:\n");
    let _ = writeln!(out, "  name: {CONFIG_MAP}\n  namespace: {NAMESPACE}");
    out.push_str("  labels:\n    app.kubernetes.io/name: switchyard\ndata:\n");
    literal_block(&mut out, AGENT_CONFIG_KEY, AGENT_CONFIG_SOURCE, 2);
    literal_block(&mut out, CONFLIST_KEY, CONFLIST_SOURCE, 2);
    out
}

/// The DaemonSet source with the bundled-OVS blocks kept or removed.
pub fn daemonset(variant: Variant) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in DAEMONSET_SOURCE.lines() {
        match line.trim() {
            BEGIN_BUNDLED => inside = true,
            END_BUNDLED => inside = false,
            _ if inside && variant == Variant::HostOvs => {}
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The whole manifest of `variant`.
pub fn render(variant: Variant) -> String {
    let mut out = String::new();
    out.push_str("# Switchyard: Open vSwitch pod networking for Kubernetes.\n");
    let _ = writeln!(out, "# {}", variant.description());
    out.push_str("# Install: kubectl apply -f <this file> (docs/install.md).\n");
    out.push_str(
        "#\n# GENERATED by `cargo run -p switchyard-deploy -- generate` from deploy/sources/;\n",
    );
    out.push_str("# edit the sources, not this file (a test checks they agree).\n");
    let docs = [
        NAMESPACE_SOURCE.to_string(),
        RBAC_SOURCE.to_string(),
        config_map(),
        daemonset(variant),
        CONTROLLER_SOURCE.to_string(),
        METRICS_SOURCE.to_string(),
    ];
    for doc in docs {
        out.push_str("---\n");
        out.push_str(doc.trim_end());
        out.push('\n');
    }
    out
}
