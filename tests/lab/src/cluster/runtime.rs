//! The runtime driver (`switchyard-lab runtime`): the lab's kubelet + container runtime.
//!
//! It watches every Pod. Pods without `spec.nodeName` are assigned to the lab's nodes round-robin
//! (a tiny scheduler). For each pod on a lab node it creates a network namespace
//! `<lab>-pod-<namespace>-<name>`, runs the node's conflist through the `switchyard` CNI plugin
//! exactly as libcni does ([`super::cni_exec`]), starts the pod's process in that namespace
//! (`switchyard-lab echo-server`, answering with the pod name on HTTP 8080 and UDP 5353) and
//! reports the pod Running and Ready with its IP through `/status`. When a pod is deleted (or
//! gets a `deletionTimestamp`) it stops the process, calls DEL and removes the namespace, then
//! completes the deletion as kubelet does. Failed set-ups are retried with backoff; the reason
//! is in the pod's Ready condition (`kubectl describe pod`). Every 30 s it calls GC per node with
//! the attachments that should exist.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};

use super::LabError;
use super::cni_exec::{CniConfig, RuntimeConf};
use super::state::{Entry, LabInfo, StateDir, UnderlayMode};
use super::sys;
use super::up::{chrono_like_now, client};

/// HTTP port of the pod process.
pub const POD_HTTP_PORT: u16 = 8080;
/// UDP port of the pod process.
pub const POD_UDP_PORT: u16 = 5353;
/// How long the pod process gets to bind its ports.
const PROCESS_START_DEADLINE: Duration = Duration::from_secs(10);
/// Interval of the GC pass.
const GC_INTERVAL: Duration = Duration::from_secs(30);

type Key = (String, String);

#[derive(Debug)]
struct RunningPod {
    uid: String,
    node: String,
    netns: String,
    rt: RuntimeConf,
    pid: Option<(u32, Option<u64>)>,
}

#[derive(Debug)]
struct Driver {
    state: StateDir,
    info: LabInfo,
    api: Api<Pod>,
    cni: HashMap<String, CniConfig>,
    running: HashMap<Key, RunningPod>,
    retry: HashMap<Key, (Instant, u32)>,
    /// Deleted pods still running their preStop sleep: when they stop.
    draining: HashMap<Key, Instant>,
    next_node: usize,
    last_gc: Instant,
}

/// How long a deleted pod keeps running, as kubelet runs a `preStop` `sleep` action
/// (`lifecycle.preStop.sleep.seconds`, the longest of its containers) before stopping it,
/// capped by `terminationGracePeriodSeconds` (default 30). Zero without one.
fn pre_stop_sleep(pod: &Pod) -> Duration {
    let Some(spec) = pod.spec.as_ref() else {
        return Duration::ZERO;
    };
    let sleep = spec
        .containers
        .iter()
        .filter_map(|c| c.lifecycle.as_ref()?.pre_stop.as_ref()?.sleep.as_ref())
        .map(|s| s.seconds.max(0))
        .max()
        .unwrap_or(0);
    let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0);
    Duration::from_secs(u64::try_from(sleep.min(grace)).unwrap_or(0))
}

fn key(pod: &Pod) -> Key {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn container_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Runs the driver until SIGTERM/SIGINT.
pub async fn run(state: StateDir) -> Result<(), LabError> {
    let info = state.load_info()?;
    let url = info
        .api_url
        .clone()
        .ok_or_else(|| LabError::Other("lab.json has no API server URL".into()))?;
    let api: Api<Pod> = Api::all(client(&url)?);
    let mut cni = HashMap::new();
    for n in &info.nodes {
        let config = CniConfig::load(
            &state.conflist(&n.name),
            vec![state.cni_bin_dir(), PathBuf::from("/usr/lib/cni")],
            state.cni_cache_dir(&n.name),
        )
        .map_err(|e| LabError::Other(e.to_string()))?;
        cni.insert(n.name.clone(), config);
    }
    let mut driver = Driver {
        state: state.clone(),
        info,
        api: api.clone(),
        cni,
        running: HashMap::new(),
        retry: HashMap::new(),
        draining: HashMap::new(),
        next_node: 0,
        last_gc: Instant::now(),
    };
    let mut pods: HashMap<Key, Pod> = HashMap::new();
    let mut init: HashMap<Key, Pod> = HashMap::new();
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| LabError::io("installing the SIGTERM handler", e))?;
    let mut ready = false;
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(Event::Apply(p))) => { pods.insert(key(&p), p); }
                Some(Ok(Event::Delete(p))) => { pods.remove(&key(&p)); }
                Some(Ok(Event::Init)) => init.clear(),
                Some(Ok(Event::InitApply(p))) => { init.insert(key(&p), p); }
                Some(Ok(Event::InitDone)) => {
                    pods = std::mem::take(&mut init);
                    if !ready {
                        std::fs::write(state.runtime_ready(), b"ready\n")
                            .map_err(|e| LabError::io("writing runtime.ready", e))?;
                        tracing::info!("runtime driver watching pods");
                        ready = true;
                    }
                }
                Some(Err(e)) => { tracing::warn!(error = %e, "pod watch failed; retrying"); continue; }
                None => return Err(LabError::Other("pod watch ended".into())),
            },
            _ = tick.tick() => {}
            _ = term.recv() => { tracing::info!("SIGTERM: runtime driver exits"); return Ok(()); }
            r = tokio::signal::ctrl_c() => { let _ = r; return Ok(()); }
        }
        if ready {
            driver.reconcile(&pods).await;
        }
    }
}

impl Driver {
    async fn reconcile(&mut self, pods: &HashMap<Key, Pod>) {
        self.schedule(pods).await;
        // Tear down what should no longer run.
        let now = Instant::now();
        let draining = &mut self.draining;
        let stale: Vec<Key> = self
            .running
            .iter()
            .filter(|(k, r)| match pods.get(*k) {
                None => true,
                Some(p) => {
                    let moved = p.metadata.uid.as_deref() != Some(r.uid.as_str())
                        || p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                            != Some(r.node.as_str());
                    let deleted = p.metadata.deletion_timestamp.is_some() && {
                        // Runs its preStop sleep first (serving, its endpoint terminating).
                        let stop_at = *draining
                            .entry((*k).clone())
                            .or_insert_with(|| now + pre_stop_sleep(p));
                        now >= stop_at
                    };
                    moved || deleted
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.draining.remove(&k);
            if let Some(r) = self.running.remove(&k) {
                self.teardown(&k, r).await;
            }
        }
        self.draining.retain(|k, _| self.running.contains_key(k));
        for (k, pod) in pods {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            let Some(node) = node.filter(|n| self.info.node(n).is_some()) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                if !self.running.contains_key(k) {
                    self.finish_delete(k, pod).await;
                }
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if self.running.contains_key(k) || matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            if self
                .retry
                .get(k)
                .is_some_and(|(at, _)| Instant::now() < *at)
            {
                continue;
            }
            match self.setup(k, pod, &node).await {
                Ok(r) => {
                    self.retry.remove(k);
                    self.running.insert(k.clone(), r);
                }
                Err(e) => {
                    let attempts = self.retry.get(k).map_or(0, |(_, a)| *a) + 1;
                    let wait = Duration::from_secs(1u64 << attempts.min(5));
                    tracing::warn!(pod = %format!("{}/{}", k.0, k.1), error = %e, retry_in = ?wait, "pod set-up failed");
                    self.retry
                        .insert(k.clone(), (Instant::now() + wait, attempts));
                    self.report_failure(k, &node, &e.to_string()).await;
                }
            }
        }
        self.retry.retain(|k, _| pods.contains_key(k));
        if self.last_gc.elapsed() >= GC_INTERVAL {
            self.last_gc = Instant::now();
            self.gc().await;
            self.refresh_tunnel_neighbours();
        }
    }

    async fn schedule(&mut self, pods: &HashMap<Key, Pod>) {
        let mut unscheduled: Vec<&Pod> = pods
            .values()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.spec.as_ref().is_some_and(|s| s.node_name.is_none())
            })
            .collect();
        unscheduled.sort_by_key(|p| key(p));
        for pod in unscheduled {
            let node = &self.info.nodes[self.next_node % self.info.nodes.len()].name;
            self.next_node += 1;
            let (ns, name) = key(pod);
            let api: Api<Pod> = Api::namespaced(self.api.clone().into_client(), &ns);
            match api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"nodeName": node}})),
                )
                .await
            {
                Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), %node, "scheduled"),
                Err(e) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "scheduling failed")
                }
            }
        }
    }

    async fn setup(&mut self, k: &Key, pod: &Pod, node: &str) -> Result<RunningPod, LabError> {
        let (ns, name) = k;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let node_info = self
            .info
            .node(node)
            .cloned()
            .ok_or_else(|| LabError::Other(format!("unknown node {node}")))?;
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            // Host-network pods share the node namespace: no CNI, no process of their own.
            self.report_running(k, pod, &node_info.address.to_string(), node, "")
                .await?;
            return Ok(RunningPod {
                uid,
                node: node.into(),
                netns: String::new(),
                rt: RuntimeConf::for_pod("", "", ns, name, "", &BTreeMap::new()),
                pid: None,
            });
        }
        let cni = self
            .cni
            .get(node)
            .ok_or_else(|| LabError::Other(format!("no CNI configuration for node {node}")))?;
        let netns = self.info.pod_netns(ns, name);
        if !sys::netns_exists(&netns) {
            self.state.record(&Entry::Netns(netns.clone()))?;
            sys::ip(&["netns", "add", &netns])?;
        }
        sys::ip_in(&netns, &["link", "set", "lo", "up"])?;
        // dnsPolicy ClusterFirst: the cluster DNS through the pod's resolv.conf (mounted over
        // /etc/resolv.conf by `ip netns exec`, for the pod's process and `kubectl exec`).
        sys::write_netns_resolv_conf(&netns, &super::dns::resolv_conf(ns))?;
        let cid = container_id();
        let annotations: BTreeMap<String, String> =
            pod.metadata.annotations.clone().unwrap_or_default();
        let rt = RuntimeConf::for_pod(
            &cid,
            &format!("/run/netns/{netns}"),
            ns,
            name,
            &uid,
            &annotations,
        );
        let result = match cni.add(&rt).await {
            Ok(r) => r,
            Err(e) => {
                // As kubelet does after a failed sandbox: DEL, then drop the sandbox.
                let _ = cni.del(&rt).await;
                let _ = sys::ip(&["netns", "del", &netns]);
                sys::remove_netns_etc(&netns);
                return Err(LabError::Other(format!("CNI ADD failed: {e}")));
            }
        };
        let ip = pod_ip(&result).ok_or_else(|| {
            LabError::Other(format!("the CNI result has no IPv4 address: {result}"))
        });
        let ip = match ip {
            Ok(ip) => ip,
            Err(e) => {
                let _ = cni.del(&rt).await;
                let _ = sys::ip(&["netns", "del", &netns]);
                sys::remove_netns_etc(&netns);
                return Err(e);
            }
        };
        let mut running = RunningPod {
            uid,
            node: node.into(),
            netns: netns.clone(),
            rt,
            pid: None,
        };
        match self.start_process(ns, name, &netns, &declared_ports(pod)) {
            Ok(pid) => running.pid = Some(pid),
            Err(e) => {
                self.teardown(k, running).await;
                return Err(e);
            }
        }
        if let Err(e) = self.report_running(k, pod, &ip, node, &cid).await {
            self.teardown(k, running).await;
            return Err(e);
        }
        tracing::info!(pod = %format!("{ns}/{name}"), %node, %ip, %netns, "pod running");
        Ok(running)
    }

    fn start_process(
        &self,
        ns: &str,
        name: &str,
        netns: &str,
        extra: &[(bool, u16)],
    ) -> Result<(u32, Option<u64>), LabError> {
        let dir = self.state.pod_dir(ns, name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let mut cmd: Command = sys::netns_exec(netns, &self.info.binaries.lab);
        cmd.arg("echo-server")
            .arg("--name")
            .arg(name)
            .arg("--http")
            .arg(POD_HTTP_PORT.to_string())
            .arg("--udp")
            .arg(POD_UDP_PORT.to_string())
            .arg("--ready-file")
            .arg(&ready);
        for (udp, port) in extra {
            cmd.arg(if *udp { "--extra-udp" } else { "--extra-http" })
                .arg(port.to_string());
        }
        let log = dir.join("process.log");
        let mut child = sys::spawn_background(&mut cmd, &log)?;
        let pid = child.id();
        self.state.record_pid(pid, &format!("pod {ns}/{name}"))?;
        let start = sys::start_time(pid);
        let ok = sys::poll_until(PROCESS_START_DEADLINE, || {
            if ready.exists() {
                return Some(Ok(()));
            }
            match child.try_wait() {
                Ok(Some(status)) => Some(Err(LabError::Other(format!(
                    "pod process exited ({status}): {}",
                    sys::tail(&log, 5)
                )))),
                _ => None,
            }
        })
        .unwrap_or_else(|| {
            Err(LabError::Other(format!(
                "pod process did not bind its ports within {PROCESS_START_DEADLINE:?}"
            )))
        });
        match ok {
            Ok(()) => Ok((pid, start)),
            Err(e) => {
                sys::stop_pid(pid, start);
                Err(e)
            }
        }
    }

    async fn teardown(&mut self, k: &Key, r: RunningPod) {
        let (ns, name) = k;
        if let Some((pid, start)) = r.pid {
            sys::stop_pid(pid, start);
        }
        if !r.netns.is_empty() {
            if let Some(cni) = self.cni.get(&r.node)
                && let Err(e) = cni.del(&r.rt).await
            {
                // The cache entry stays; the next GC retries the DEL.
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "CNI DEL failed");
            }
            if let Err(e) = sys::ip(&["netns", "del", &r.netns]) {
                tracing::warn!(netns = %r.netns, error = %e, "could not delete pod namespace");
            }
            sys::remove_netns_etc(&r.netns);
        }
        let _ = std::fs::remove_dir_all(self.state.pod_dir(ns, name));
        tracing::info!(pod = %format!("{ns}/{name}"), node = %r.node, "pod stopped");
        if let Ok(pod) = Api::<Pod>::namespaced(self.api.clone().into_client(), ns)
            .get(name)
            .await
            && pod.metadata.deletion_timestamp.is_some()
            && pod.metadata.uid.as_deref() == Some(r.uid.as_str())
        {
            self.finish_delete(k, &pod).await;
        }
    }

    /// Completes a graceful deletion once the pod is stopped, as kubelet does (grace 0).
    async fn finish_delete(&self, k: &Key, pod: &Pod) {
        let api: Api<Pod> = Api::namespaced(self.api.clone().into_client(), &k.0);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(e) = api.delete(&k.1, &dp).await {
            tracing::debug!(pod = %format!("{}/{}", k.0, k.1), error = %e, "final delete");
        }
    }

    async fn report_running(
        &self,
        k: &Key,
        pod: &Pod,
        ip: &str,
        node: &str,
        cid: &str,
    ) -> Result<(), LabError> {
        let now = chrono_like_now();
        let host_ip = self
            .info
            .node(node)
            .map(|n| n.address.to_string())
            .unwrap_or_default();
        let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        let containers: Vec<Value> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "ready": true, "started": true, "restartCount": 0,
                    "image": c.image.clone().unwrap_or_default(), "imageID": "",
                    "containerID": format!("lab://{cid}"),
                    "state": {"running": {"startedAt": now}}
                })
            })
            .collect();
        let patch = json!({"status": {
            "phase": "Running",
            "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": now,
            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
            "containerStatuses": containers
        }});
        Api::<Pod>::namespaced(self.api.clone().into_client(), &k.0)
            .patch_status(&k.1, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    async fn report_failure(&self, k: &Key, node: &str, message: &str) {
        let now = chrono_like_now();
        let host_ip = self
            .info
            .node(node)
            .map(|n| n.address.to_string())
            .unwrap_or_default();
        let patch = json!({"status": {
            "phase": "Pending", "hostIP": host_ip,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "reason": "NetworkSetupFailed", "message": message, "lastTransitionTime": now}
            ]
        }});
        if let Err(e) = Api::<Pod>::namespaced(self.api.clone().into_client(), &k.0)
            .patch_status(&k.1, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            tracing::debug!(error = %e, "could not report the failure");
        }
    }

    /// Keeps the fixed underlay neighbours in every node's OVS tunnel neighbour cache (entries
    /// age out after a few minutes; the lab notes saw re-resolution stall for 15 s or more).
    fn refresh_tunnel_neighbours(&self) {
        if self.info.underlay_mode != UnderlayMode::Ovs {
            return;
        }
        let peers = super::up::underlay_peers(&self.info);
        for n in &self.info.nodes {
            if let Err(e) = super::node::set_tunnel_neighbours(&self.state, n, &peers) {
                tracing::warn!(node = %n.name, error = %e, "could not refresh tunnel neighbours");
            }
        }
    }

    async fn gc(&self) {
        for n in &self.info.nodes {
            if !self.state.cni_socket(&n.name).exists() {
                continue;
            }
            let Some(cni) = self.cni.get(&n.name) else {
                continue;
            };
            let valid: Vec<(String, String)> = self
                .running
                .values()
                .filter(|r| r.node == n.name && !r.netns.is_empty())
                .map(|r| (r.rt.container_id.clone(), r.rt.ifname.clone()))
                .collect();
            match cni.gc(&valid).await {
                Ok(deleted) if deleted > 0 => {
                    tracing::info!(node = %n.name, deleted, "CNI GC removed stale attachments")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(node = %n.name, error = %e, "CNI GC failed"),
            }
        }
    }
}

/// The first IPv4 address of a CNI result (`ips[].address` without the prefix length).
pub fn pod_ip(result: &Value) -> Option<String> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let addr = ip["address"].as_str()?;
        let host = addr.split('/').next()?;
        host.parse::<std::net::Ipv4Addr>()
            .ok()
            .map(|a| a.to_string())
    })
}

/// The pod's declared container ports other than the echo server's own
/// (TCP 8080, UDP 5353), as (udp, port): the process serves them too
/// (NetworkPolicy tests declare TCP and UDP 80 and 81).
fn declared_ports(pod: &Pod) -> Vec<(bool, u16)> {
    let mut out: Vec<(bool, u16)> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let udp = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => false,
                "UDP" => true,
                _ => return None,
            };
            let port = u16::try_from(p.container_port).ok()?;
            let own = if udp { POD_UDP_PORT } else { POD_HTTP_PORT };
            (port != own && port != 0).then_some((udp, port))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_ip_takes_the_first_ipv4() {
        let r = serde_json::json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.244.1.7/24", "gateway": "10.244.1.1"}]});
        assert_eq!(super::pod_ip(&r).as_deref(), Some("10.244.1.7"));
        assert_eq!(super::pod_ip(&serde_json::json!({})), None);
    }

    #[test]
    fn container_ids_are_64_hex() {
        let id = super::container_id();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
