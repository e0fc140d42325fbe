//! NetworkPolicy (`networking.k8s.io/v1`) in `br-int`: the policies that
//! select this node's pods become flows in `EGRESS_POLICY` and
//! `INGRESS_POLICY` (see `docs/network-policy.md`).
//!
//! - `watch`: NetworkPolicies, Pods (every node's: peers) and Namespaces,
//!   reduced to [`model`] values in one cache; every change wakes the
//!   agent's policy task.
//! - [`compile`]: pure, caches + this node's pods in, flows out
//!   (conjunctions; `except` as disjoint prefixes, [`prefix`]).
//! - [`incremental`]: per-policy fragments merged; a change recompiles
//!   only the policies it can affect (a pod's or namespace's membership in
//!   their selectors), so a label change costs its policies, not all.
//! - [`NetworkPolicies`]: the installed flows; an update recompiles what
//!   changed and sends only the difference (added, changed and removed
//!   flows) in one OpenFlow bundle; the agent's full resync (start, OVS reconnects)
//!   carries the policy flows in its own bundle under the new cookie
//!   generation ([`NetworkPolicies::full`]), so a restart never removes a
//!   flow before its replacement is in.
//!
//! The agent's flows are owned by generation: policy flows use the agent's
//! cookie space (objects [`cookie_object::POLICY`] and up) and the agent's
//! current generation.

pub mod compile;
pub mod incremental;
pub mod model;
pub mod prefix;
mod watch;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use switchyard_ovs::openflow::{self, Field, FlowMod, FlowStatsRequest};
use switchyard_pipeline::{Cookie, Owner, cookie_object};
use tokio::sync::Notify;

pub use compile::{Compiled, Direction, LocalPod, RuleRef};
use compile::{ConjIds, FlowKey, Inputs, with_generation};
use incremental::Changes;
use model::{Labels, PodInfo, Policy};

use crate::drivers::FlowSink;
use crate::metrics::{Metrics, PolicyRuleLabels};

/// Why policy flows could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The bundle (or a flow dump) failed.
    #[error("policy flows: {0}")]
    Flows(#[from] openflow::Error),
    /// A new pod's labels are unknown while policies exist in its namespace.
    #[error("pod {0}: labels unknown (API server unreachable) and policies exist in its namespace")]
    PodUnknown(String),
}

/// What the watches keep.
#[derive(Debug, Default)]
struct Caches {
    policies: BTreeMap<(String, String), Policy>,
    pods: BTreeMap<(String, String), PodInfo>,
    namespaces: BTreeMap<String, Labels>,
    /// Bit per watch whose first list arrived (see `watch`).
    listed: u8,
    /// What changed since the last compile.
    changes: Changes,
}

/// Says, when a policy naming SCTP is added or changed, what the datapath
/// does with it.
fn warn_sctp(key: &(String, String), policy: Option<&Policy>) {
    if policy.is_some_and(Policy::names_sctp) {
        tracing::warn!(
            policy = %format!("{}/{}", key.0, key.1),
            "NetworkPolicy names SCTP: its SCTP ports are matched on the first packet of an association, but {}",
            model::SCTP_CAVEAT
        );
    }
}

impl Caches {
    fn set_policy(&mut self, key: (String, String), policy: Option<Policy>) {
        let before = match policy {
            Some(p) => self.policies.insert(key.clone(), p),
            None => self.policies.remove(&key),
        };
        if before.as_ref() != self.policies.get(&key) {
            warn_sctp(&key, self.policies.get(&key));
            self.changes.policies.insert(key);
        }
    }

    fn set_pod(&mut self, key: (String, String), pod: Option<PodInfo>) {
        let before = match pod {
            Some(p) => self.pods.insert(key.clone(), p),
            None => self.pods.remove(&key),
        };
        if before.as_ref() != self.pods.get(&key) {
            self.changes.pod(key, before);
        }
    }

    fn set_namespace(&mut self, name: String, labels: Option<Labels>) {
        let before = match labels {
            Some(l) => self.namespaces.insert(name.clone(), l),
            None => self.namespaces.remove(&name),
        };
        if before.as_ref() != self.namespaces.get(&name) {
            self.changes.namespace(name, before);
        }
    }

    /// Replaces the policies with `new`, recording what differs.
    fn replace_policies(&mut self, new: BTreeMap<(String, String), Policy>) {
        let old = std::mem::take(&mut self.policies);
        for k in old.keys().chain(new.keys()) {
            if old.get(k) != new.get(k) {
                warn_sctp(k, new.get(k));
                self.changes.policies.insert(k.clone());
            }
        }
        self.policies = new;
    }

    /// Replaces the pods with `new`, recording what differs.
    fn replace_pods(&mut self, new: BTreeMap<(String, String), PodInfo>) {
        let old = std::mem::take(&mut self.pods);
        for k in new.keys() {
            if old.get(k) != new.get(k) {
                self.changes.pod(k.clone(), old.get(k).cloned());
            }
        }
        for (k, v) in old {
            if !new.contains_key(&k) {
                self.changes.pod(k, Some(v));
            }
        }
        self.pods = new;
    }

    /// Replaces the namespaces with `new`, recording what differs.
    fn replace_namespaces(&mut self, new: BTreeMap<String, Labels>) {
        let old = std::mem::take(&mut self.namespaces);
        for k in new.keys() {
            if old.get(k) != new.get(k) {
                self.changes.namespace(k.clone(), old.get(k).cloned());
            }
        }
        for (k, v) in old {
            if !new.contains_key(&k) {
                self.changes.namespace(k, Some(v));
            }
        }
        self.namespaces = new;
    }
}

/// What is compiled, and what is on the switch.
#[derive(Debug, Default)]
struct Installed {
    /// The compiled flows (what the switch should have).
    state: incremental::State,
    ids: ConjIds,
    /// The flows the switch has where they may differ from `state` (a
    /// bundle not sent or failed): `None` for a flow it lacks.
    unsent: BTreeMap<FlowKey, Option<openflow::Flow>>,
    /// Drop-flow packet counts last read, per (direction, ofport).
    denied: BTreeMap<(Direction, u32), u64>,
}

/// One update's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Flow mods sent (0: nothing changed, nothing sent).
    pub flow_mods: usize,
    /// Policy flows installed after the update.
    pub flows: usize,
}

/// The NetworkPolicy state of the agent.
pub struct NetworkPolicies {
    client: Option<kube::Client>,
    gateway_ip: Ipv4Addr,
    caches: Mutex<Caches>,
    changed: Notify,
    listed: tokio::sync::watch::Sender<u8>,
    installed: tokio::sync::Mutex<Installed>,
}

impl std::fmt::Debug for NetworkPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkPolicies")
            .field("gateway_ip", &self.gateway_ip)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NetworkPolicies {
    /// Starts the watches (tasks as long as the runtime runs).
    pub fn start(client: kube::Client, gateway_ip: Ipv4Addr) -> std::sync::Arc<NetworkPolicies> {
        let this = std::sync::Arc::new(NetworkPolicies::new(Some(client.clone()), gateway_ip));
        watch::spawn(this.clone(), client);
        this
    }

    /// Without watches (unit tests feed the caches).
    pub fn new(client: Option<kube::Client>, gateway_ip: Ipv4Addr) -> NetworkPolicies {
        NetworkPolicies {
            client,
            gateway_ip,
            caches: Mutex::new(Caches::default()),
            changed: Notify::new(),
            listed: tokio::sync::watch::channel(0).0,
            installed: tokio::sync::Mutex::new(Installed::default()),
        }
    }

    /// Waits until policies, pods and namespaces were listed once (the
    /// first full resync must know every policy: it replaces the flows a
    /// previous agent installed).
    pub async fn wait_listed(&self) {
        let mut rx = self.listed.subscribe();
        let mut warned = Instant::now();
        loop {
            if *rx.borrow_and_update() == watch::ALL_LISTED {
                return;
            }
            if tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .is_err()
                && warned.elapsed() >= Duration::from_secs(10)
            {
                warned = Instant::now();
                tracing::warn!(
                    "waiting for the first lists of NetworkPolicies, Pods and Namespaces"
                );
            }
        }
    }

    /// Resolves when a watched object changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn touch(&self) {
        self.changed.notify_one();
    }

    /// Asks for an update (after a failed one, or when this node's pods
    /// changed).
    pub fn poke(&self) {
        self.touch();
    }

    /// Replaces the caches' content (tests; the watches use their own path).
    pub fn set_inputs(
        &self,
        policies: Vec<Policy>,
        pods: BTreeMap<(String, String), PodInfo>,
        namespaces: BTreeMap<String, Labels>,
    ) {
        let mut c = lock(&self.caches);
        c.replace_policies(
            policies
                .into_iter()
                .map(|p| ((p.namespace.clone(), p.name.clone()), p))
                .collect(),
        );
        c.replace_pods(pods);
        c.replace_namespaces(namespaces);
        drop(c);
        self.touch();
    }

    /// Sets (`None`: deletes) one policy, as a watch event does.
    pub fn set_policy(&self, namespace: &str, name: &str, policy: Option<Policy>) {
        lock(&self.caches).set_policy((namespace.to_string(), name.to_string()), policy);
        self.touch();
    }

    /// Sets (`None`: deletes) one pod, as a watch event does.
    pub fn set_pod(&self, namespace: &str, name: &str, pod: Option<PodInfo>) {
        lock(&self.caches).set_pod((namespace.to_string(), name.to_string()), pod);
        self.touch();
    }

    /// Sets (`None`: deletes) one namespace's labels, as a watch event does.
    pub fn set_namespace(&self, name: &str, labels: Option<Labels>) {
        lock(&self.caches).set_namespace(name.to_string(), labels);
        self.touch();
    }

    /// Makes the next update compile every policy again (benchmarks
    /// compare it with the incremental compile).
    pub fn recompile_all(&self) {
        lock(&self.caches).changes.all = true;
        self.touch();
    }

    /// Makes sure a new pod's labels and ports are known before its flows
    /// are compiled (ADD may come before the pod watch delivers it).
    pub async fn ensure_pod(&self, namespace: &str, name: &str) -> Result<(), PolicyError> {
        let (known, policies_in_ns) = {
            let c = lock(&self.caches);
            (
                c.pods
                    .contains_key(&(namespace.to_string(), name.to_string())),
                c.policies.keys().any(|(ns, _)| ns == namespace),
            )
        };
        if known {
            return Ok(());
        }
        let fetched = match &self.client {
            Some(client) => {
                let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
                let get = api.get_opt(name);
                match tokio::time::timeout(crate::apiserver::REQUEST_TIMEOUT, get).await {
                    Ok(Ok(pod)) => pod,
                    _ => None,
                }
            }
            None => None,
        };
        match fetched {
            Some(p) => {
                let mut c = lock(&self.caches);
                let key = (namespace.to_string(), name.to_string());
                if !c.pods.contains_key(&key) {
                    c.set_pod(key, Some(PodInfo::from_api(&p)));
                }
                Ok(())
            }
            None if policies_in_ns => Err(PolicyError::PodUnknown(format!("{namespace}/{name}"))),
            None => Ok(()),
        }
    }

    /// Applies the changes since the last call to the compiled state; the
    /// flows changed are recorded as unsent with what the switch has.
    fn compile(&self, installed: &mut Installed, local: &[LocalPod]) {
        let mut c = lock(&self.caches);
        let changes = std::mem::take(&mut c.changes);
        let Installed {
            state, ids, unsent, ..
        } = installed;
        let changed = state.apply(
            Inputs {
                policies: &c.policies,
                pods: &c.pods,
                namespaces: &c.namespaces,
                local,
                gateway_ip: self.gateway_ip,
            },
            &changes,
            ids,
        );
        for (k, before) in changed {
            unsent.entry(k).or_insert(before);
        }
    }

    /// Brings the switch up to date: compiles what changed, and sends the
    /// flows that differ from the installed ones (adds, replacements,
    /// strict deletes) in one bundle, under cookie `generation`.
    pub async fn update(
        &self,
        generation: u8,
        local: &[LocalPod],
        sink: &dyn FlowSink,
        metrics: Option<&Metrics>,
    ) -> Result<UpdateStats, PolicyError> {
        let t0 = Instant::now();
        let mut installed = self.installed.lock().await;
        self.compile(&mut installed, local);
        let mods = diff(&installed.unsent, &installed.state.out.flows, generation);
        let stats = UpdateStats {
            flow_mods: mods.len(),
            flows: installed.state.out.flows.len(),
        };
        if !mods.is_empty() {
            sink.bundle(mods).await?;
            tracing::debug!(flow_mods = stats.flow_mods, flows = stats.flows, elapsed = ?t0.elapsed(), "policy flows updated");
        }
        installed.unsent.clear();
        if let Some(m) = metrics {
            m.policy_flows
                .set(i64::try_from(stats.flows).unwrap_or(i64::MAX));
            if stats.flow_mods > 0 {
                m.policy_update_seconds.observe(t0.elapsed().as_secs_f64());
            }
        }
        Ok(stats)
    }

    /// Every policy flow under `generation`, for the agent's full resync
    /// bundle (which also deletes the older generations); call
    /// [`NetworkPolicies::resynced`] once it was applied.
    pub async fn full(&self, generation: u8, local: &[LocalPod]) -> (Vec<FlowMod>, Compiled) {
        let mut installed = self.installed.lock().await;
        self.compile(&mut installed, local);
        let compiled = installed.state.out.clone();
        let mods = compiled
            .flows
            .values()
            .map(|f| {
                let mut f = f.clone();
                f.cookie = with_generation(f.cookie, generation);
                FlowMod::add(f)
            })
            .collect();
        (mods, compiled)
    }

    /// Records what a full resync installed.
    pub async fn resynced(&self, compiled: Compiled) {
        let mut installed = self.installed.lock().await;
        let Installed { state, unsent, .. } = &mut *installed;
        unsent.clear();
        let desired = &state.out.flows;
        for k in compiled.flows.keys().chain(desired.keys()) {
            if compiled.flows.get(k) != desired.get(k) {
                unsent.insert(k.clone(), compiled.flows.get(k).cloned());
            }
        }
    }

    /// The compiled rules, isolated pods and flows (generation 0).
    pub async fn compiled(&self) -> Compiled {
        self.installed.lock().await.state.out.clone()
    }

    /// Reads the rules' and the default drops' counters (flow stats by
    /// cookie) into `metrics`, and logs the denied new connections per pod
    /// since the last call (one line per pod and call: the log's rate is
    /// bounded by the caller's period).
    pub async fn read_counters(
        &self,
        sink: &dyn FlowSink,
        metrics: &Metrics,
    ) -> Result<(), PolicyError> {
        let rules_cookie = Cookie::new(Owner::Agent, 0, cookie_object::POLICY_RULE_FIRST).value();
        let rule_stats = sink
            .dump(FlowStatsRequest::cookie(
                rules_cookie,
                0xffff_ff00_f000_0000,
            ))
            .await?;
        let mut drops = Vec::new();
        for object in [
            cookie_object::POLICY_ISOLATION_INGRESS,
            cookie_object::POLICY_ISOLATION_EGRESS,
        ] {
            let (c, m) = Cookie::object_mask(Owner::Agent, object);
            drops.extend(sink.dump(FlowStatsRequest::cookie(c, m)).await?);
        }
        let mut installed = self.installed.lock().await;
        let mut per_rule: BTreeMap<PolicyRuleLabels, (u64, u64)> = BTreeMap::new();
        for s in &rule_stats {
            let Some(c) = Cookie::from_value(s.flow.cookie) else {
                continue;
            };
            let id = c.object - cookie_object::POLICY_RULE_FIRST;
            let Some(r) = installed.state.out.rules.get(&id) else {
                continue;
            };
            let e = per_rule.entry(PolicyRuleLabels::of(r)).or_default();
            e.0 += s.packet_count;
            e.1 += s.byte_count;
        }
        metrics.policy_rule_packets.clear();
        metrics.policy_rule_bytes.clear();
        for (labels, (packets, bytes)) in per_rule {
            metrics
                .policy_rule_packets
                .get_or_create(&labels)
                .set(i64::try_from(packets).unwrap_or(i64::MAX));
            metrics
                .policy_rule_bytes
                .get_or_create(&labels)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut totals: BTreeMap<Direction, u64> = BTreeMap::new();
        let mut seen = BTreeMap::new();
        for s in &drops {
            let Some(c) = Cookie::from_value(s.flow.cookie) else {
                continue;
            };
            let direction = if c.object == cookie_object::POLICY_ISOLATION_INGRESS {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let field = match direction {
                Direction::Ingress => switchyard_pipeline::reg::OUTPUT_PORT.subfield().field,
                Direction::Egress => Field::InPort,
            };
            let Some(ofport) = s
                .flow
                .matches
                .iter()
                .find(|m| m.field == field)
                .and_then(|m| u32::try_from(m.value).ok())
            else {
                continue;
            };
            *totals.entry(direction).or_default() += s.packet_count;
            let before = installed
                .denied
                .get(&(direction, ofport))
                .copied()
                .unwrap_or(0);
            if s.packet_count > before {
                let pod = installed
                    .state
                    .out
                    .isolated
                    .get(&(direction, ofport))
                    .cloned()
                    .unwrap_or_else(|| format!("ofport {ofport}"));
                tracing::info!(
                    %pod,
                    direction = direction.as_str(),
                    denied_packets = s.packet_count - before,
                    "NetworkPolicy denied new connections"
                );
            }
            seen.insert((direction, ofport), s.packet_count);
        }
        installed.denied = seen;
        for (direction, n) in totals {
            metrics
                .policy_denied_packets
                .get_or_create(&crate::metrics::DirectionLabel {
                    direction: direction.as_str().to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(())
    }
}

/// The flow mods bringing the flows `on_switch` has (for the keys it
/// names; `None`: absent) to `desired`: adds for new and changed flows (an
/// add replaces the flow with the same match and priority, counters aside),
/// strict deletes for flows gone.
pub fn diff(
    on_switch: &BTreeMap<FlowKey, Option<openflow::Flow>>,
    desired: &BTreeMap<FlowKey, openflow::Flow>,
    generation: u8,
) -> Vec<FlowMod> {
    let mut adds = Vec::new();
    let mut deletes = Vec::new();
    for (k, old) in on_switch {
        match (old, desired.get(k)) {
            (old, Some(f)) if old.as_ref() != Some(f) => {
                let mut f = f.clone();
                f.cookie = with_generation(f.cookie, generation);
                adds.push(FlowMod::add(f));
            }
            (Some(old), None) => deletes.push(FlowMod::delete_strict(old.clone())),
            _ => {}
        }
    }
    adds.extend(deletes);
    adds
}

#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod tests;
