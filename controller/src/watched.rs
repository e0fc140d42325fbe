//! The leader's view of the watches: the Services as last seen merged with its own writes,
//! and what the watched changes call for: a pass over the changed Services, a pass over all
//! of them, or only new routes.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::runtime::watcher::{self, Event as WEvent};
use switchyard_api::IPPool;

use crate::service as s;

/// The Services as last seen, merged with this leader's own writes.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    pub(crate) services: BTreeMap<String, Service>,
    init: Option<BTreeMap<String, Service>>,
    /// Services changed since the last pass (`ns/name`; the echoes of this leader's own writes
    /// are not changes).
    pub(crate) changed: BTreeSet<String>,
    /// A pass over every Service is due (Services relisted, an IPPool or Namespace changed).
    pub(crate) full: bool,
    /// Only what the routes are computed from changed (Nodes, EndpointSlices, RouteTargets).
    pub(crate) replan: bool,
    /// The pools' specs and labels as last seen (an echo of the leader's own status patch
    /// is no news).
    pool_specs: BTreeMap<String, (switchyard_api::IPPoolSpec, BTreeMap<String, String>)>,
}

impl Cache {
    /// Applies a watched or written copy unless the cache holds this one or a newer one;
    /// true when it was news.
    pub(crate) fn apply(&mut self, svc: Service) -> bool {
        let k = s::key(&svc);
        if self
            .services
            .get(&k)
            .is_none_or(|old| s::rv(old) < s::rv(&svc))
        {
            self.services.insert(k, svc);
            return true;
        }
        false
    }

    /// Takes a Service event; true when the Services are listed. The echo of the leader's own
    /// write (already in the cache) is no change, so it triggers no pass.
    fn event(&mut self, ev: WEvent<Service>) -> bool {
        match ev {
            WEvent::Init => self.init = Some(BTreeMap::new()),
            WEvent::InitApply(svc) => {
                if let Some(init) = self.init.as_mut() {
                    init.insert(s::key(&svc), svc);
                }
            }
            WEvent::InitDone => {
                self.services = self.init.take().unwrap_or_default();
                self.full = true;
                return true;
            }
            WEvent::Apply(svc) => {
                let k = s::key(&svc);
                if self.apply(svc) {
                    self.changed.insert(k);
                }
            }
            WEvent::Delete(svc) => {
                let k = s::key(&svc);
                if self.services.remove(&k).is_some() {
                    self.changed.insert(k);
                }
            }
        }
        false
    }

    /// Whether a pool event is news: anything but an unchanged spec and labels (the
    /// leader's own status patches come back as such events).
    fn pool_event(&mut self, ev: &WEvent<IPPool>) -> bool {
        match ev {
            WEvent::Apply(p) | WEvent::InitApply(p) => {
                let seen = (p.spec.clone(), p.labels().clone());
                self.pool_specs.insert(p.name_any(), seen.clone()) != Some(seen)
            }
            WEvent::Delete(p) => {
                self.pool_specs.remove(&p.name_any());
                true
            }
            WEvent::Init | WEvent::InitDone => true,
        }
    }
}

/// What the watch reader hands the leader loop.
pub(crate) enum Watched {
    Service(Box<WEvent<Service>>),
    /// An IPPool changed (its reflector store is already updated).
    Pool(Box<WEvent<IPPool>>),
    /// A Namespace changed (its reflector store is already updated): pools select by their
    /// labels.
    Namespace,
    /// Another watched kind changed (its reflector store is already updated): only the routes
    /// are computed from it.
    Other,
}

impl Cache {
    /// Takes a watched change; true when the Services are listed.
    pub(crate) fn take(&mut self, ev: Watched) -> bool {
        match ev {
            Watched::Service(ev) => return self.event(*ev),
            Watched::Pool(ev) => self.full |= self.pool_event(&ev),
            Watched::Namespace => self.full = true,
            Watched::Other => self.replan = true,
        }
        false
    }

    /// Whether anything calls for a pass or new routes.
    pub(crate) fn news(&self) -> bool {
        self.full || self.replan || !self.changed.is_empty()
    }
}

/// Reads the Service watch and the other kinds' reflectors as fast as they come, until the
/// leader loop is gone or a stream ends.
pub(crate) async fn read_watches(
    mut services: futures::stream::BoxStream<'static, Result<WEvent<Service>, watcher::Error>>,
    mut others: futures::stream::SelectAll<
        futures::stream::BoxStream<'static, Result<Watched, watcher::Error>>,
    >,
    tx: tokio::sync::mpsc::UnboundedSender<Watched>,
) {
    loop {
        let sent = tokio::select! {
            ev = services.next() => match ev {
                Some(Ok(ev)) => tx.send(Watched::Service(Box::new(ev))),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Service watch error (retrying)");
                    continue;
                }
                None => return,
            },
            ev = others.next() => match ev {
                Some(Ok(w)) => tx.send(w),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch error (retrying)");
                    continue;
                }
                None => return,
            },
        };
        if sent.is_err() {
            return;
        }
    }
}
