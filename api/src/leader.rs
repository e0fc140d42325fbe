//! Leader election on a `coordination.k8s.io/v1` Lease (client-go's algorithm).
//!
//! A candidate takes the Lease when it is free, or when its holder has not renewed it for
//! `lease_duration` as seen on the candidate's own clock (the time it last saw the Lease
//! change, never the holder's timestamps). Every write carries the resourceVersion it was
//! read at, so two candidates cannot both win. The leader renews every `retry_period`;
//! if it could not renew for `renew_deadline` (< `lease_duration`) it gives up leadership
//! before anyone else may take it: [`Fence::valid`] is false from then on, and every write
//! of the controller checks it first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

/// Timings of the election.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How long a Lease not renewed stays its holder's.
    pub lease_duration: Duration,
    /// The leader stops leading when it could not renew for this long.
    pub renew_deadline: Duration,
    /// Period of renewals and acquisition attempts.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether leadership is still valid, checked before each write.
#[derive(Debug, Clone)]
pub struct Fence {
    start: Instant,
    /// Milliseconds since `start` until which writes are allowed (0: never).
    until_ms: Arc<AtomicU64>,
}

impl Fence {
    fn new() -> Fence {
        Fence {
            start: Instant::now(),
            until_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn extend(&self, from: Instant, by: Duration) {
        let ms = (from.saturating_duration_since(self.start) + by).as_millis() as u64;
        self.until_ms.store(ms, Ordering::SeqCst);
    }

    fn revoke(&self) {
        self.until_ms.store(0, Ordering::SeqCst);
    }

    /// True while this replica may act as the leader.
    pub fn valid(&self) -> bool {
        (Instant::now()
            .saturating_duration_since(self.start)
            .as_millis() as u64)
            < self.until_ms.load(Ordering::SeqCst)
    }
}

/// One candidate for a Lease.
pub struct Elector {
    client: Client,
    namespace: String,
    name: String,
    identity: String,
    timings: Timings,
    fence: Fence,
    leading: watch::Sender<bool>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("lease", &format!("{}/{}", self.namespace, self.name))
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    /// A candidate for the Lease `namespace/name` under `identity` (unique per replica).
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> Elector {
        Elector {
            client,
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            timings,
            fence: Fence::new(),
            leading: watch::channel(false).0,
        }
    }

    /// The fence writes check.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Follows whether this replica leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Campaigns and renews forever.
    pub async fn run_shared(self: std::sync::Arc<Self>) {
        // (holder, resourceVersion) last seen, and when this replica saw it change.
        let mut observed: Option<(String, String, Instant)> = None;
        let mut last_renew: Option<Instant> = None;
        loop {
            let attempt = Instant::now();
            match self.try_acquire_or_renew(&mut observed, attempt).await {
                Ok(true) => {
                    last_renew = Some(attempt);
                    self.fence.extend(attempt, self.timings.renew_deadline);
                    if !*self.leading.borrow() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became the leader");
                        self.leading.send_replace(true);
                    }
                }
                Ok(false) => self.step_down("another replica holds the Lease"),
                Err(err) => {
                    tracing::warn!(%err, "Lease request failed");
                    if last_renew.is_some_and(|t| t.elapsed() >= self.timings.renew_deadline) {
                        self.step_down("could not renew within the renew deadline");
                        last_renew = None;
                    }
                }
            }
            tokio::time::sleep(self.timings.retry_period).await;
        }
    }

    fn step_down(&self, why: &str) {
        self.fence.revoke();
        if *self.leading.borrow() {
            tracing::warn!(identity = %self.identity, why, "lost leadership");
            self.leading.send_replace(false);
        }
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once.
    pub async fn release(&self) {
        self.fence.revoke();
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        if let Ok(Some(mut lease)) = leases.get_opt(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.acquire_time = None;
                spec.renew_time = None;
                let _ = leases
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }

    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<(String, String, Instant)>,
        attempt: Instant,
    ) -> Result<bool, kube::Error> {
        let duration_s = self.timings.lease_duration.as_secs().max(1) as i32;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(mut lease) = leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_s),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let changed = observed
            .as_ref()
            .is_none_or(|(h, r, _)| h != &holder || r != &rv);
        if changed {
            *observed = Some((holder.clone(), rv, attempt));
        }
        let seen_at = observed.as_ref().map_or(attempt, |o| o.2);
        let ours = holder == self.identity;
        let expired = holder.is_empty() || seen_at.elapsed() >= self.timings.lease_duration;
        if !ours && !expired {
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(duration_s);
        spec.renew_time = Some(now());
        match leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
