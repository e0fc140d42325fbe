//! The demo's Service whose endpoint is outside the cluster: a selector-less Service `outside`
//! with a hand-written EndpointSlice naming a server on the internet host (a database or an
//! API outside Kubernetes, as kube-proxy users have them). The server answers with the source
//! address it saw, so the demo shows the node's egress masquerade at work.

use std::fs;
use std::time::Duration;

use super::LabError;
use super::demo::kubectl;
use super::echo::ANSWER_PEER;
use super::fabric;
use super::state::{LabInfo, StateDir};
use super::sys;

/// The outside server's HTTP port on the internet host.
pub const OUTSIDE_PORT: u16 = 9090;

/// How long the client gets to be answered through the Service.
const ANSWER_DEADLINE: Duration = Duration::from_secs(20);

/// The Service (ClusterIP, port 80, no selector) and its EndpointSlice: one ready endpoint,
/// the internet host's server.
pub fn manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: outside\n  namespace: default\nspec:\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: outside-manual\n  namespace: default\n  labels:\n    kubernetes.io/service-name: outside\naddressType: IPv4\nports:\n- name: http\n  protocol: TCP\n  port: {OUTSIDE_PORT}\nendpoints:\n- addresses: [\"{host}\"]\n  conditions:\n    ready: true\n",
        host = fabric::INTERNET_HOST
    )
}

/// Starts the server in the internet namespace (recorded in the lab's journal, so `down`
/// stops it), applies [`manifest`] and curls the Service's cluster IP from `client_netns`
/// until the server answers. Returns the address the server saw, or why it did not answer.
pub fn check(state: &StateDir, info: &LabInfo, client_netns: &str) -> Result<String, String> {
    let fabric = info.fabric.as_ref().ok_or("the lab has no fabric")?;
    let setup = || -> Result<String, LabError> {
        let dir = state.root().join("demo");
        fs::create_dir_all(&dir).map_err(|e| LabError::io("creating the demo directory", e))?;
        let log = dir.join("outside-server.log");
        let mut server = sys::netns_exec(&fabric.internet_netns, &info.binaries.lab);
        server.args(["echo-server", "--name", ANSWER_PEER, "--udp", "0"]);
        server.args(["--http", &OUTSIDE_PORT.to_string()]);
        // `echo-server` binds the wildcard address: the internet host's loopback address too.
        println!(
            "   $ {} &   (log: {})",
            sys::command_line(&server),
            log.display()
        );
        let child = sys::spawn_background(&mut server, &log)?;
        state.record_pid(child.id(), "outside-server")?;
        let path = dir.join("outside.yaml");
        fs::write(&path, manifest()).map_err(|e| LabError::io("writing outside.yaml", e))?;
        let mut apply = kubectl(state);
        apply.arg("apply").arg("-f").arg(&path);
        println!("   $ {}", sys::command_line(&apply));
        for line in sys::run(&mut apply)?.lines() {
            println!("   {line}");
        }
        let ip = sys::run(kubectl(state).args([
            "get",
            "service",
            "outside",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ]))?;
        Ok(ip.trim().to_string())
    };
    let vip = setup().map_err(|e| e.to_string())?;
    let url = format!("http://{vip}/");
    let mut last = String::new();
    sys::poll_until(ANSWER_DEADLINE, || {
        let (line, r) = super::demo::curl_in(client_netns, &url);
        match r {
            Ok(seen) if !seen.is_empty() => {
                println!("   $ {line}");
                Some(seen)
            }
            Ok(_) => {
                last = format!("{line}: empty answer");
                None
            }
            Err(e) => {
                last = format!("{line}: {e}");
                None
            }
        }
    })
    .ok_or_else(|| {
        format!(
            "no answer within {ANSWER_DEADLINE:?} ({last}); the server's log: {}",
            state.root().join("demo/outside-server.log").display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_the_internet_host_as_the_only_endpoint() {
        let m = manifest();
        let docs: Vec<serde_json::Value> = m
            .split("\n---\n")
            .map(|d| serde_norway::from_str(d).unwrap())
            .collect();
        assert_eq!(docs[0]["kind"], "Service");
        assert!(docs[0]["spec"].get("selector").is_none());
        assert_eq!(
            docs[1]["metadata"]["labels"]["kubernetes.io/service-name"],
            "outside"
        );
        assert_eq!(
            docs[1]["endpoints"][0]["addresses"][0],
            fabric::INTERNET_HOST
        );
        assert_eq!(docs[1]["ports"][0]["port"], OUTSIDE_PORT);
    }
}
