//! Egress of overlay pods: traffic to addresses outside the cluster leaves
//! with the node's address as its source.
//!
//! Choice: the node kernel's MASQUERADE (iptables, nat table), not OVS
//! conntrack SNAT in `zone::SNAT`. An overlay pod's packet for the outside
//! leaves `br-int` through the gateway port (L3_FORWARDING's miss) and the
//! node kernel routes it out of its uplink: it must reach the kernel with
//! the pod's address, because a packet arriving on `sy-gw0` with one of the
//! node's own addresses as source is a martian and dropped. The kernel's
//! conntrack then picks the outgoing interface's address (the node IP),
//! un-NATs replies and routes them back to `sy-gw0` through the pod CIDR's
//! connected route. Pod-to-pod traffic is never SNATed: between nodes it is
//! tunnelled by OVS and never reaches the kernel, and traffic the kernel
//! routes back into `sy-gw0` (node to pod, remote pod CIDRs) is excluded by
//! `! -o sy-gw0`.
//!
//! The rules live in a chain of their own, [`CHAIN`], rewritten atomically
//! by `iptables-restore --noflush` and jumped to from POSTROUTING.

use std::process::Command;

use ipnet::Ipv4Net;

use crate::gateway::GATEWAY_PORT;

/// The agent's chain in the nat table.
pub const CHAIN: &str = "SWITCHYARD-EGRESS";

/// Why the egress rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// iptables could not run or failed.
    #[error("{what}: {detail}")]
    Iptables {
        /// The command.
        what: String,
        /// Its error output or the spawn error.
        detail: String,
    },
}

/// The `iptables-restore --noflush` input for the node's pod CIDR:
/// declaring the chain flushes it, so the rule set is replaced atomically.
pub fn restore_input(pod_cidr: Ipv4Net) -> String {
    format!(
        "*nat\n:{CHAIN} - [0:0]\n-A {CHAIN} -s {pod_cidr} ! -o {GATEWAY_PORT} -m comment --comment \"switchyard: overlay pods to the outside\" -j MASQUERADE\nCOMMIT\n"
    )
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<bool, EgressError> {
    use std::io::Write;
    let program = args[0];
    let what = args.join(" ");
    let mut cmd = match program {
        "iptables" => Command::new("iptables"),
        _ => Command::new("iptables-restore"),
    };
    cmd.args(&args[1..])
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let spawn_err = |e: std::io::Error| EgressError::Iptables {
        what: what.clone(),
        detail: e.to_string(),
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(true);
    }
    // `iptables -C` answers 1 for "no such rule".
    if args.contains(&"-C") && out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(EgressError::Iptables {
        what,
        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Installs (or re-installs, idempotently) the MASQUERADE rule for the
/// node's pod CIDR. Blocking: call it from `spawn_blocking` (it runs in the
/// caller's network namespace, the node's; no setns).
pub fn ensure_masquerade(pod_cidr: Ipv4Net) -> Result<(), EgressError> {
    run(
        &["iptables-restore", "-w", "--noflush"],
        Some(&restore_input(pod_cidr)),
    )?;
    let check = [
        "iptables",
        "-w",
        "-t",
        "nat",
        "-C",
        "POSTROUTING",
        "-j",
        CHAIN,
    ];
    if !run(&check, None)? {
        run(
            &[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-I",
                "POSTROUTING",
                "1",
                "-j",
                CHAIN,
            ],
            None,
        )?;
    }
    tracing::debug!(%pod_cidr, chain = CHAIN, "egress MASQUERADE in place");
    Ok(())
}

/// How often the rule is re-asserted (someone may flush the nat table).
const REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// Keeps the MASQUERADE rule in place until `stop`: installs it now and
/// every [`REFRESH`], logging failures (egress is the only thing missing
/// while it fails; pods and the overlay keep working).
pub async fn keep_masquerade(pod_cidr: Ipv4Net, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        match tokio::task::spawn_blocking(move || ensure_masquerade(pod_cidr)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot install the egress MASQUERADE rule; pods cannot reach the outside");
            }
            Err(e) => tracing::error!(error = %e, "egress rule task failed"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_input_golden() {
        assert_eq!(
            restore_input("10.244.3.0/24".parse().unwrap()),
            "*nat\n:SWITCHYARD-EGRESS - [0:0]\n-A SWITCHYARD-EGRESS -s 10.244.3.0/24 ! -o sy-gw0 -m comment --comment \"switchyard: overlay pods to the outside\" -j MASQUERADE\nCOMMIT\n"
        );
    }
}
