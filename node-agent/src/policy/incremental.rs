//! The incremental compiler: each policy compiles to its own [`Fragment`];
//! the switch's flows are the fragments merged (a clause flow shared by
//! several policies carries the conjunctions of each). A change recompiles
//! only the policies it can affect:
//!
//! - a policy added, changed or deleted: that policy;
//! - a pod added, deleted or changed (labels, address, named ports), or
//!   one of this node's pods attached or detached: the policies whose
//!   `podSelector` selects it (before or after, if it is local), whose
//!   peers select it (before or after), and those resolving a named port
//!   for an egress rule to every peer;
//! - a namespace relabelled, added or deleted: the policies with a
//!   `namespaceSelector` matching its labels before or after.
//!
//! Only the flows of the recompiled fragments are merged again, and only
//! those that differ are reported, so a change costs its policies' compile
//! and a diff of their flows, not a compile of every policy.

use std::collections::{BTreeMap, BTreeSet};

use switchyard_ovs::openflow::{Action, Flow};

use super::compile::{Compiled, Compiler, ConjIds, Direction, FlowKey, Fragment, Inputs, LocalPod};
use super::model::{Labels, Peer, PodInfo, Policy, PortMatch};

/// A policy's key (namespace, name).
pub type PolicyKey = (String, String);

/// The exemptions' fragment: no policy has an empty namespace.
fn exemptions_key() -> PolicyKey {
    (String::new(), String::new())
}

/// Above this many changed pods and namespaces, every policy is compiled
/// again (checking each policy against each change costs more).
const MAX_TRACKED_CHANGES: usize = 256;

/// What changed in the inputs since the last [`State::apply`]; pods and
/// namespaces with their value before (`None`: they did not exist).
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Everything (a first compile, a relist).
    pub all: bool,
    /// Policies added, changed or deleted.
    pub policies: BTreeSet<PolicyKey>,
    /// Pods changed, with their value before.
    pub pods: BTreeMap<(String, String), Option<PodInfo>>,
    /// Namespaces changed, with their labels before.
    pub namespaces: BTreeMap<String, Option<Labels>>,
}

impl Changes {
    /// Everything changed.
    pub fn all() -> Changes {
        Changes {
            all: true,
            ..Changes::default()
        }
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.policies.is_empty() && self.pods.is_empty() && self.namespaces.is_empty()
    }

    /// Records that pod `key`, which was `before`, changed (the first
    /// value before since the last apply is kept).
    pub fn pod(&mut self, key: (String, String), before: Option<PodInfo>) {
        self.pods.entry(key).or_insert(before);
    }

    /// Records that namespace `name`, which had `before`, changed.
    pub fn namespace(&mut self, name: String, before: Option<Labels>) {
        self.namespaces.entry(name).or_insert(before);
    }
}

/// The compiled state: fragments per policy, merged.
#[derive(Debug, Default)]
pub struct State {
    fragments: BTreeMap<PolicyKey, Fragment>,
    /// The policies contributing to each flow.
    owners: BTreeMap<FlowKey, BTreeSet<PolicyKey>>,
    /// The policies isolating each local pod per direction.
    isolating: BTreeMap<(Direction, u32), BTreeSet<PolicyKey>>,
    /// The local pods of the last apply.
    local: Vec<LocalPod>,
    compiled_once: bool,
    /// The merged flows, rules and isolated pods.
    pub out: Compiled,
}

fn empty() -> &'static Labels {
    static EMPTY: std::sync::OnceLock<Labels> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Labels::new)
}

/// Whether a change of pod `key` (from `before` to `after`) can change the
/// flows of `policy`; `local` says whether it is (or was) one of this
/// node's pods.
fn pod_affects(
    policy: &Policy,
    key: &(String, String),
    before: Option<&PodInfo>,
    after: Option<&PodInfo>,
    local: bool,
    namespaces: &BTreeMap<String, Labels>,
) -> bool {
    let (ns, _) = key;
    fn labels(p: Option<&PodInfo>) -> &Labels {
        p.map_or(empty(), |p| &p.labels)
    }
    if local
        && *ns == policy.namespace
        && (policy.selector.matches(labels(before)) || policy.selector.matches(labels(after)))
    {
        return true;
    }
    let rules = policy
        .ingress
        .iter()
        .flatten()
        .map(|r| (Direction::Ingress, r))
        .chain(
            policy
                .egress
                .iter()
                .flatten()
                .map(|r| (Direction::Egress, r)),
        );
    for (direction, rule) in rules {
        if direction == Direction::Egress
            && rule.peers.is_empty()
            && rule
                .ports
                .iter()
                .any(|p| matches!(p.port, PortMatch::Named(_)))
            && [before, after]
                .iter()
                .flatten()
                .any(|p| !p.named_ports.is_empty())
        {
            return true;
        }
        for peer in &rule.peers {
            let Peer::Pods {
                pods,
                namespaces: ns_sel,
            } = peer
            else {
                continue;
            };
            let in_scope = match ns_sel {
                None => *ns == policy.namespace,
                Some(s) => namespaces.get(ns).is_some_and(|l| s.matches(l)),
            };
            if !in_scope {
                continue;
            }
            let selects = |p: Option<&PodInfo>| {
                p.is_some_and(|p| pods.as_ref().is_none_or(|s| s.matches(&p.labels)))
            };
            // (A local pod's address comes from its attachment: attached or
            // detached, it changes with before == after.)
            if selects(before) || selects(after) {
                return true;
            }
        }
    }
    false
}

/// Whether namespace labels changing from `before` to `after` can change
/// the flows of `policy`.
fn namespace_affects(policy: &Policy, before: Option<&Labels>, after: Option<&Labels>) -> bool {
    policy
        .ingress
        .iter()
        .flatten()
        .chain(policy.egress.iter().flatten())
        .flat_map(|r| &r.peers)
        .any(|peer| match peer {
            Peer::Pods {
                namespaces: Some(s),
                ..
            } => before.is_some_and(|l| s.matches(l)) || after.is_some_and(|l| s.matches(l)),
            _ => false,
        })
}

/// Merges the contributions to one flow: a clause flow carries every
/// policy's conjunctions (in policy order), any other flow is the last
/// policy's (they differ in cookie only).
fn merge<'a>(mut flows: impl Iterator<Item = &'a Flow>) -> Option<Flow> {
    let mut out = flows.next()?.clone();
    let clause = out
        .actions
        .iter()
        .any(|a| matches!(a, Action::Conjunction { .. }));
    for f in flows {
        if clause {
            // Conjunction ids are per rule, so policies never share one:
            // no duplicate to drop (a check would cost the product of the
            // lists on a port match shared by a thousand rules).
            out.actions.extend(f.actions.iter().cloned());
        } else {
            out = f.clone();
        }
    }
    Some(out)
}

impl State {
    /// The policies `changes` can affect (every policy if too many
    /// changed).
    fn affected(&self, inputs: &Inputs<'_>, changes: &Changes) -> BTreeSet<PolicyKey> {
        let every = || -> BTreeSet<PolicyKey> {
            inputs
                .policies
                .keys()
                .chain(self.fragments.keys())
                .filter(|k| **k != exemptions_key())
                .cloned()
                .collect()
        };
        if changes.all || !self.compiled_once {
            return every();
        }
        let mut out = changes.policies.clone();
        // Local pods attached, detached or changed: like a pod change
        // (their address and whether they are selected).
        let before: BTreeMap<(&str, &str), &LocalPod> = self
            .local
            .iter()
            .map(|l| ((l.namespace.as_str(), l.name.as_str()), l))
            .collect();
        let after: BTreeMap<(&str, &str), &LocalPod> = inputs
            .local
            .iter()
            .map(|l| ((l.namespace.as_str(), l.name.as_str()), l))
            .collect();
        let mut pods: BTreeMap<(String, String), (Option<&PodInfo>, bool)> = BTreeMap::new();
        for k in before.keys().chain(after.keys()) {
            if before.get(k) != after.get(k) {
                let key = (k.0.to_string(), k.1.to_string());
                let current = inputs.pods.get(&key);
                pods.insert(key, (current, true));
            }
        }
        for (key, was) in &changes.pods {
            let local = before.contains_key(&(key.0.as_str(), key.1.as_str()))
                || after.contains_key(&(key.0.as_str(), key.1.as_str()));
            pods.insert(key.clone(), (was.as_ref(), local));
        }
        if pods.len() + changes.namespaces.len() > MAX_TRACKED_CHANGES {
            return every();
        }
        for (pk, policy) in inputs.policies {
            if out.contains(pk) {
                continue;
            }
            let by_pod = pods.iter().any(|(key, (was, local))| {
                pod_affects(
                    policy,
                    key,
                    *was,
                    inputs.pods.get(key),
                    *local,
                    inputs.namespaces,
                )
            });
            let by_namespace = || {
                changes.namespaces.iter().any(|(name, was)| {
                    namespace_affects(policy, was.as_ref(), inputs.namespaces.get(name))
                })
            };
            if by_pod || by_namespace() {
                out.insert(pk.clone());
            }
        }
        out
    }

    /// Brings the state up to `inputs` after `changes`; returns the flows
    /// that changed, with their value before (`None`: a new flow).
    pub fn apply(
        &mut self,
        inputs: Inputs<'_>,
        changes: &Changes,
        ids: &mut ConjIds,
    ) -> BTreeMap<FlowKey, Option<Flow>> {
        let affected = self.affected(&inputs, changes);
        self.compiled_once = true;
        self.local = inputs.local.to_vec();
        let mut touched: BTreeSet<FlowKey> = BTreeSet::new();
        let mut compiler = Compiler::new(inputs);
        for key in &affected {
            let fragment = match inputs.policies.get(key) {
                Some(p) => compiler.policy(p, ids),
                None => Fragment::default(),
            };
            self.replace(key, fragment, ids, &mut touched);
        }
        let isolated = |d: Direction| self.out.isolated.keys().any(|(x, _)| *x == d);
        let exemptions =
            compiler.exemptions(isolated(Direction::Ingress), isolated(Direction::Egress));
        if self.fragments.get(&exemptions_key()).map(|f| &f.flows) != Some(&exemptions.flows) {
            self.replace(&exemptions_key(), exemptions, ids, &mut touched);
        }
        let mut changed = BTreeMap::new();
        for k in touched {
            let owners = self.owners.get(&k);
            let merged = owners.and_then(|o| {
                merge(
                    o.iter()
                        .filter_map(|p| self.fragments.get(p).and_then(|f| f.flows.get(&k))),
                )
            });
            let before = match merged {
                Some(f) => self.out.flows.insert(k.clone(), f),
                None => {
                    self.owners.remove(&k);
                    self.out.flows.remove(&k)
                }
            };
            if before.as_ref() != self.out.flows.get(&k) {
                changed.insert(k, before);
            }
        }
        changed
    }

    /// Puts `fragment` in place of the fragment of `key`.
    fn replace(
        &mut self,
        key: &PolicyKey,
        fragment: Fragment,
        ids: &mut ConjIds,
        touched: &mut BTreeSet<FlowKey>,
    ) {
        let old = self.fragments.remove(key).unwrap_or_default();
        if old == fragment {
            if !fragment.flows.is_empty() {
                self.fragments.insert(key.clone(), fragment);
            }
            return;
        }
        for k in old.flows.keys() {
            if let Some(o) = self.owners.get_mut(k) {
                o.remove(key);
            }
            touched.insert(k.clone());
        }
        for k in fragment.flows.keys() {
            self.owners
                .entry(k.clone())
                .or_default()
                .insert(key.clone());
            touched.insert(k.clone());
        }
        for id in old.rules.keys() {
            self.out.rules.remove(id);
            if !fragment.rules.contains_key(id) {
                ids.release(*id);
            }
        }
        self.out
            .rules
            .extend(fragment.rules.iter().map(|(k, v)| (*k, v.clone())));
        for k in old.isolated.keys() {
            if let Some(o) = self.isolating.get_mut(k) {
                o.remove(key);
                if o.is_empty() {
                    self.isolating.remove(k);
                    self.out.isolated.remove(k);
                }
            }
        }
        for (k, name) in &fragment.isolated {
            self.isolating.entry(*k).or_default().insert(key.clone());
            self.out.isolated.insert(*k, name.clone());
        }
        if !fragment.flows.is_empty() {
            self.fragments.insert(key.clone(), fragment);
        }
    }
}
