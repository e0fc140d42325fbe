//! What start-up waits for, with a log line now and then: OVSDB, the
//! bridge's OpenFlow socket and the Node's pod CIDR. Nothing here gives up;
//! errors that waiting cannot fix are found later in start-up.

use std::time::Duration;

use ipnet::Ipv4Net;
use switchyard_ovs::{openflow, ovsdb};

use crate::apiserver::ApiClient;
use crate::config::AgentConfig;

/// Delay between start-up attempts that wait for something external.
pub(crate) const RETRY_DELAY: Duration = Duration::from_millis(500);

pub(crate) async fn ovsdb(endpoint: &str) -> ovsdb::Client {
    let mut attempt = 0u32;
    loop {
        match ovsdb::Client::connect(endpoint).await {
            Ok(c) => return c,
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt.is_multiple_of(20) {
                    tracing::warn!(%endpoint, error = %e, attempt, "cannot reach OVSDB yet; retrying");
                }
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}

/// Settings of the OpenFlow connection: a short reconnect backoff, so the
/// flows are back soon after ovs-vswitchd restarts (the agent replays them on
/// every new connection generation, see the daemon).
fn openflow_config(config: &AgentConfig) -> openflow::ClientConfig {
    openflow::ClientConfig {
        request_timeout: Duration::from_secs(30),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(250),
        ..openflow::ClientConfig::for_bridge(&config.ovs_rundir, &config.bridge)
    }
}

/// Connects to the bridge's OpenFlow socket, retrying until ovs-vswitchd is
/// there (the client needs its first attempt to succeed; it reconnects by
/// itself afterwards).
pub(crate) async fn openflow(config: &AgentConfig) -> openflow::Client {
    let mut attempt = 0u32;
    loop {
        match openflow::Client::connect(openflow_config(config)).await {
            Ok(c) => return c,
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt.is_multiple_of(20) {
                    tracing::warn!(socket = %config.bridge_mgmt_socket().display(), error = %e, attempt, "cannot reach the bridge's OpenFlow socket yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub(crate) async fn pod_cidr(api: &ApiClient, node: &str) -> Ipv4Net {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let log = attempt == 1 || attempt.is_multiple_of(20);
        match api.node_pod_cidr(node).await {
            Ok(Some(cidr)) => return cidr,
            Ok(None) if log => {
                tracing::warn!(node, "Node has no spec.podCIDR yet; waiting")
            }
            Err(e) if log => {
                tracing::warn!(node, error = %e, "cannot read the Node's pod CIDR yet; retrying")
            }
            _ => {}
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}
