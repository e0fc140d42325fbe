//! What a failed lab test prints: per node the flows of br-int, `ovs-vsctl
//! show`, routes and the tails of the agent and proxy logs.

use std::process::Command;

use switchyard_lab::cluster::sys;

use super::Lab;

/// A command's stdout and stderr, or why it could not run.
pub fn run_text(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_else(|e| e.to_string())
}

/// `ovs-ofctl -O OpenFlow15 dump-flows br-int` on `node`.
pub fn flows(lab: &Lab, node: &str) -> String {
    run_text(
        Command::new("ovs-ofctl")
            .env("OVS_RUNDIR", lab.state.ovs_dir(node))
            .args(["-O", "OpenFlow15", "dump-flows", "br-int"]),
    )
}

/// `ovs-vsctl show` on `node`.
pub fn vsctl_show(lab: &Lab, node: &str) -> String {
    run_text(
        Command::new("ovs-vsctl")
            .arg(format!(
                "--db=unix:{}",
                lab.state.ovsdb_socket(node).display()
            ))
            .arg("show"),
    )
}

/// `ip route` in network namespace `netns`.
pub fn routes(netns: &str) -> String {
    run_text(Command::new("ip").args(["netns", "exec", netns, "ip", "route"]))
}

/// One node's flows, OVS configuration, routes and log tails.
pub fn node_diagnostics(lab: &Lab, node: &str) -> String {
    let dir = lab.state.node_dir(node);
    let netns = lab
        .state
        .load_info()
        .ok()
        .and_then(|info| info.nodes.into_iter().find(|n| n.name == node))
        .map(|n| n.netns);
    format!(
        "\n=== {node}: ovs-ofctl -O OpenFlow15 dump-flows br-int\n{}\n=== {node}: ovs-vsctl show\n{}\n=== {node}: ip route\n{}\n=== {node}: agent log (last 60 lines)\n{}\n=== {node}: proxy log (last 30 lines)\n{}\n",
        flows(lab, node),
        vsctl_show(lab, node),
        netns.as_deref().map(routes).unwrap_or_default(),
        sys::tail(&dir.join("agent.log"), 60),
        sys::tail(&dir.join("proxy.log"), 30),
    )
}

/// Every node's diagnostics (removed nodes are named as such) and the
/// runtime log's tail.
pub fn diagnostics(lab: &Lab) -> String {
    let Ok(info) = lab.state.load_info() else {
        return "(lab state unreadable)".into();
    };
    let mut out = String::new();
    for n in &info.nodes {
        if sys::netns_exists(&n.netns) {
            out.push_str(&node_diagnostics(lab, &n.name));
        } else {
            out.push_str(&format!("\n=== {} (removed)\n", n.name));
        }
    }
    out.push_str(&format!(
        "\n=== runtime log (last 30 lines)\n{}\n",
        sys::tail(&lab.state.root().join("runtime.log"), 30)
    ));
    out
}

/// Prints the lab's diagnostics if the scope is left by a panic; the
/// string names the step that failed.
pub struct DiagnosticsOnPanic<'a>(pub &'a Lab, pub &'a str);

impl Drop for DiagnosticsOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n##### `{}` failed; lab diagnostics:{}",
                self.1,
                diagnostics(self.0)
            );
        }
    }
}
