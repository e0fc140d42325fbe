//! Egress per namespace: one SNAT rule per namespace network on the upstream router, through
//! the router driver of the RouteTarget named by `--namespace-route-target`.
//!
//! Each pass of the namespace task computes the rules from the Segments it listed
//! ([`desired`], pure): for every Segment of this cluster carrying a namespace UID and a
//! `snatAddress`, the rule `<cluster>-<segment>` translating the Segment's subnets to that
//! address, tagged `switchyard.io/cluster`, `switchyard.io/owner: ns` and
//! `switchyard.io/namespace-uid`. The [`NatSyncer`] reads, compares and repairs the router's
//! rules ([`diff`], pure) on every change and at least every resync; rules of this owner that
//! are not wanted (their namespace is gone) are deleted; nothing untagged is ever listed, so
//! never touched. A failed call is retried with the Route mode's backoff; the error goes back
//! to the pass, which shows it in the Segment's `status.message`, and into the metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::{Client, ResourceExt};
use switchyard_api::RouteTarget;
use switchyard_router::{NatDriver, NatRule, RouterError};
use tokio::sync::watch;
use tokio::time::Instant;

use super::plan::Seg;
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::routes::{SyncResult, backoff, retry_text, target};

/// Owner tag of the namespace networks' NAT rules.
pub const OWNER: &str = "ns";

/// The NAT rule id of a namespace's Segment: `<cluster>-<segment>`.
pub fn rule_id(cluster: &str, segment: &str) -> String {
    format!("{cluster}-{segment}")
}

/// The rules the router should hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Want {
    /// Rules by id.
    pub rules: BTreeMap<String, NatRule>,
    /// The Segment of each rule id.
    pub segments: BTreeMap<String, String>,
}

/// One rule per Segment of `cluster` with a namespace UID and an SNAT address (also while it
/// is being deleted: its pods still run until their addresses are released).
pub fn desired(cluster: &str, segs: &[Seg]) -> Want {
    let mut out = Want::default();
    for s in segs {
        let (Some(uid), Some(snat)) = (
            &s.namespace_uid,
            s.spec
                .snat_address
                .as_deref()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok()),
        ) else {
            continue;
        };
        if s.cluster.as_deref() != Some(cluster) {
            continue;
        }
        let Ok(subnets) = s.spec.parsed_subnets(&s.name) else {
            continue;
        };
        if subnets.is_empty() {
            continue;
        }
        let id = rule_id(cluster, &s.name);
        let rule = NatRule::snat(
            id.clone(),
            subnets.into_iter().map(|p| p.cidr.into()).collect(),
            snat,
            OWNER,
            format!("switchyard {cluster}: egress of segment {}", s.name),
        )
        .with_namespace_uid(uid.clone());
        out.rules.insert(id.clone(), rule);
        out.segments.insert(id, s.name.clone());
    }
    out
}

/// What to change on the router.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// Rules to write (missing or different).
    pub put: Vec<NatRule>,
    /// Rule ids of this owner to delete (not wanted).
    pub delete: Vec<String>,
    /// Rules already as wanted.
    pub held: usize,
}

/// Compares the router's rules of this cluster (`have`) with `want`; only rules of
/// [`OWNER`] are ever deleted.
pub fn diff(want: &BTreeMap<String, NatRule>, have: &[NatRule]) -> Diff {
    let have: BTreeMap<&str, &NatRule> = have
        .iter()
        .filter(|r| r.owner == OWNER)
        .map(|r| (r.id.as_str(), r))
        .collect();
    let mut out = Diff::default();
    for (id, rule) in want {
        if have.get(id.as_str()).is_some_and(|h| h.same_rule(rule)) {
            out.held += 1;
        } else {
            out.put.push(rule.clone());
        }
    }
    out.delete = have
        .keys()
        .filter(|id| !want.contains_key(**id))
        .map(|id| id.to_string())
        .collect();
    out
}

/// Read, compare, repair: makes `driver` hold exactly `want` among its rules of [`OWNER`].
/// Writes stop as soon as `fence` is no longer valid.
pub async fn sync_nat(
    driver: &dyn NatDriver,
    driver_name: &str,
    want: &BTreeMap<String, NatRule>,
    fence: Option<&Fence>,
    metrics: Option<&Metrics>,
) -> Result<SyncResult, RouterError> {
    let count_err = |e: &RouterError| {
        if let Some(m) = metrics {
            m.driver_error(driver_name, e.kind());
        }
    };
    let have = driver.list_nat().await.inspect_err(count_err)?;
    let d = diff(want, &have);
    let mut out = SyncResult {
        held: d.held as i64,
        ..Default::default()
    };
    let fenced = || fence.is_some_and(|f| !f.valid());
    for rule in &d.put {
        if fenced() {
            return Ok(out);
        }
        match driver.put_nat(rule).await {
            Ok(()) => {
                tracing::info!(rule = %rule.id, sources = ?rule.source_networks, translated = %rule.translated, "SNAT rule written");
                out.put.push(rule.id.clone());
                out.held += 1;
            }
            Err(e) => {
                count_err(&e);
                out.retriable |= e.retriable();
                out.failed.insert(rule.id.clone(), e.to_string());
            }
        }
    }
    for id in &d.delete {
        if fenced() {
            return Ok(out);
        }
        match driver.delete_nat(id).await {
            Ok(()) => {
                tracing::info!(rule = %id, "SNAT rule of a gone namespace deleted");
                out.deleted.push(id.clone());
            }
            Err(e) => {
                count_err(&e);
                out.retriable |= e.retriable();
                out.failed.insert(id.clone(), e.to_string());
            }
        }
    }
    Ok(out)
}

/// What the syncer is given by each pass.
#[derive(Debug, Clone, Default)]
pub struct NatPlan {
    /// The rules.
    pub want: Want,
    /// The RouteTarget as last listed (`None`: it does not exist).
    pub target: Option<RouteTarget>,
}

/// Per Segment, the error of its SNAT rule (absent: fine or not synced yet).
pub type NatErrors = BTreeMap<String, String>;

#[derive(Debug, Default)]
struct State {
    built: Option<target::Built>,
    failures: u32,
    next_attempt: Option<Instant>,
    last_sync: Option<Instant>,
    last_synced: Option<Want>,
}

/// The NAT rule syncer of one leadership term.
pub struct NatSyncer {
    /// API client (the RouteTarget's Secret).
    pub client: Client,
    /// The controller's namespace (where credentials Secrets live).
    pub namespace: String,
    /// The cluster tag value.
    pub cluster: String,
    /// The RouteTarget holding the rules.
    pub target: String,
    /// Period of the read-compare-repair without changes.
    pub resync: Duration,
    /// Leadership check before each router write.
    pub fence: Fence,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for NatSyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatSyncer")
            .field("target", &self.target)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl NatSyncer {
    /// Runs until `plans` closes or the fence is lost; reports the errors per Segment.
    pub async fn run(
        self,
        mut plans: watch::Receiver<Option<NatPlan>>,
        report: watch::Sender<NatErrors>,
    ) {
        let mut st = State::default();
        loop {
            let wake = match (st.failures, st.next_attempt, st.last_sync) {
                (f, Some(t), _) if f > 0 => t,
                (_, _, Some(t)) => t + self.resync,
                _ => Instant::now() + self.resync,
            };
            tokio::select! {
                r = plans.changed() => if r.is_err() { return; },
                _ = tokio::time::sleep_until(wake) => {}
            }
            let Some(plan) = plans.borrow_and_update().clone() else {
                continue;
            };
            if !self.fence.valid() {
                return;
            }
            let now = Instant::now();
            let due = if st.failures > 0 {
                st.next_attempt.is_none_or(|t| now >= t)
            } else {
                st.last_synced.as_ref() != Some(&plan.want)
                    || st.last_sync.is_none_or(|t| now >= t + self.resync)
            };
            if !due {
                continue;
            }
            let errors = self.sync(&plan, &mut st).await;
            report.send_if_modified(|r| {
                if *r == errors {
                    false
                } else {
                    *r = errors;
                    true
                }
            });
        }
    }

    /// One read-compare-repair; returns the errors per Segment.
    async fn sync(&self, plan: &NatPlan, st: &mut State) -> NatErrors {
        let now = Instant::now();
        let name = &self.target;
        let result = match &plan.target {
            None => Err((
                false,
                target::TargetError::Missing(name.clone()).to_string(),
            )),
            Some(t) => match target::driver(
                &self.client,
                &self.namespace,
                &self.cluster,
                t,
                st.built.as_ref(),
            )
            .await
            {
                Err(e) => {
                    self.metrics.driver_error("config", "config");
                    Err((matches!(e, target::TargetError::Api { .. }), e.to_string()))
                }
                Ok(built) => {
                    st.built = Some(built.clone());
                    let driver = built.driver.as_ref();
                    match driver.nat() {
                        None => Err((
                            false,
                            format!(
                                "RouteTarget {name}: driver {} does not write NAT rules",
                                driver.name()
                            ),
                        )),
                        Some(nat) => sync_nat(
                            nat,
                            driver.name(),
                            &plan.want.rules,
                            Some(&self.fence),
                            Some(&self.metrics),
                        )
                        .await
                        .map_err(|e| (e.retriable(), e.to_string())),
                    }
                }
            },
        };
        st.last_sync = Some(now);
        let mut errors = NatErrors::new();
        match result {
            Ok(r) if r.failed.is_empty() => {
                st.failures = 0;
                st.next_attempt = None;
                st.last_synced = Some(plan.want.clone());
                self.metrics.ns_nat_rules.set(r.held);
                self.metrics.ns_nat_failing.set(0);
            }
            Ok(r) => {
                st.failures += 1;
                let delay = if r.retriable {
                    backoff(st.failures)
                } else {
                    self.resync
                };
                let suffix = retry_text(r.retriable, st.failures, delay);
                tracing::warn!(target = %name, failed = ?r.failed, attempt = st.failures, retry_in = ?delay, "some SNAT rules failed");
                st.next_attempt = Some(now + delay);
                st.last_synced = None;
                for (id, e) in &r.failed {
                    if let Some(seg) = plan.want.segments.get(id) {
                        errors.insert(
                            seg.clone(),
                            format!("SNAT rule {id} on RouteTarget {name}: {e}{suffix}"),
                        );
                    }
                }
                self.metrics.ns_nat_rules.set(r.held);
                self.metrics
                    .ns_nat_failing
                    .set(i64::try_from(r.failed.len()).unwrap_or(i64::MAX));
            }
            Err((retriable, msg)) => {
                st.failures += 1;
                let delay = if retriable {
                    backoff(st.failures)
                } else {
                    self.resync
                };
                let suffix = retry_text(retriable, st.failures, delay);
                tracing::warn!(target = %name, error = %msg, attempt = st.failures, retry_in = ?delay, "SNAT rule sync failed");
                st.next_attempt = Some(now + delay);
                st.last_synced = None;
                for (id, seg) in &plan.want.segments {
                    errors.insert(
                        seg.clone(),
                        format!("SNAT rule {id} on RouteTarget {name}: {msg}{suffix}"),
                    );
                }
                self.metrics
                    .ns_nat_failing
                    .set(i64::try_from(plan.want.rules.len()).unwrap_or(i64::MAX));
            }
        }
        errors
    }
}

/// The RouteTarget named `name` among `targets`.
pub fn find_target(targets: Vec<RouteTarget>, name: &str) -> Option<RouteTarget> {
    targets.into_iter().find(|t| t.name_any() == name)
}

#[cfg(test)]
#[path = "nat_tests.rs"]
mod tests;
