//! The compiler: policies, pods and namespaces in, the flows of
//! `EGRESS_POLICY` and `INGRESS_POLICY` out. Pure (no I/O), so it is unit
//! tested with plain values and benchmarked without a switch.
//!
//! A rule becomes one OVS conjunction per "port variant" (its numeric
//! ports, and one per resolved number of each named port): clause 1 the
//! pods of this node the policy selects (ingress: `reg1` = the output port;
//! egress: `in_port`), clause 2 the peers' prefixes (ingress `nw_src`,
//! egress `nw_dst`; left out when every peer is allowed), clause 3 the
//! ports (`nw_proto` and `tp_dst=value/mask`; left out when every port is
//! allowed), and one `conj_id` flow that passes the packet on. N pods, M
//! peers and P ports cost N+M+P+1 flows, not N*M*P. A rule that allows
//! every peer on every port needs no conjunction: one flow per pod. A flow
//! that serves several rules (the same pod in two policies) carries one
//! `conjunction` action per rule.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use switchyard_ovs::openflow::{Action, ETH_TYPE_IP, Field, Flow, MatchField, ct_state};
use switchyard_pipeline::{Cookie, HAIRPIN_SNAT_IP, Owner, cookie_object, priority, reg, table};

use super::model::{Labels, Peer, PodInfo, Policy, PortMatch, Proto, Rule};
use super::prefix;

/// Ingress or egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Into the selected pod.
    Ingress,
    /// Out of the selected pod.
    Egress,
}

impl Direction {
    /// `ingress` / `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    fn table(self) -> table::Table {
        match self {
            Direction::Ingress => table::INGRESS_POLICY,
            Direction::Egress => table::EGRESS_POLICY,
        }
    }

    /// The match of one of this node's pods in this direction's table.
    fn pod_match(self, ofport: u32) -> MatchField {
        match self {
            Direction::Ingress => reg::OUTPUT_PORT.matching(ofport),
            Direction::Egress => MatchField::in_port(ofport),
        }
    }

    /// The peer's address field.
    fn peer_field(self) -> Field {
        match self {
            Direction::Ingress => Field::Ipv4Src,
            Direction::Egress => Field::Ipv4Dst,
        }
    }

    fn isolation_object(self) -> u32 {
        match self {
            Direction::Ingress => cookie_object::POLICY_ISOLATION_INGRESS,
            Direction::Egress => cookie_object::POLICY_ISOLATION_EGRESS,
        }
    }
}

/// One of this node's pods (from its attachment).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its OVS port.
    pub ofport: u32,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// Everything the compiler reads.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Policies by (namespace, name).
    pub policies: &'a BTreeMap<(String, String), Policy>,
    /// Every pod of the cluster by (namespace, name).
    pub pods: &'a BTreeMap<(String, String), PodInfo>,
    /// Namespace labels by name.
    pub namespaces: &'a BTreeMap<String, Labels>,
    /// This node's pods.
    pub local: &'a [LocalPod],
    /// The node's gateway address (its own traffic to its pods passes).
    pub gateway_ip: Ipv4Addr,
}

/// Which rule a conjunction belongs to (for counters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
    /// Ingress or egress.
    pub direction: Direction,
    /// Index of the rule in the policy's list.
    pub index: usize,
}

/// Conjunction ids, stable for a rule (and port variant) across
/// recompilations so that an unrelated change leaves its flows alone.
#[derive(Debug, Default, Clone)]
pub struct ConjIds {
    ids: HashMap<(RuleRef, String), u32>,
    keys: HashMap<u32, (RuleRef, String)>,
    free: Vec<u32>,
    next: u32,
}

impl ConjIds {
    fn get(&mut self, rule: &RuleRef, variant: &str) -> u32 {
        let key = (rule.clone(), variant.to_string());
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        });
        self.keys.insert(id, key.clone());
        self.ids.insert(key, id);
        id
    }

    /// Frees `id` (its rule variant is gone).
    pub(super) fn release(&mut self, id: u32) {
        if let Some(key) = self.keys.remove(&id) {
            self.ids.remove(&key);
            self.free.push(id);
        }
    }
}

/// A flow's identity on the switch: table, priority and match (its fields
/// in a fixed order, as `(field, value, mask)`).
pub type FlowKey = (u8, u16, Vec<(Field, u128, Option<u128>)>);

/// The identity of `flow`.
pub fn key_of(flow: &Flow) -> FlowKey {
    let mut m: Vec<(Field, u128, Option<u128>)> = flow
        .matches
        .iter()
        .map(|m| (m.field, m.value, m.mask))
        .collect();
    m.sort_unstable();
    (flow.table, flow.priority, m)
}

/// The compiler's output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Compiled {
    /// The flows (cookies in generation 0; [`with_generation`] sets it).
    pub flows: BTreeMap<FlowKey, Flow>,
    /// The rule of each conjunction id.
    pub rules: BTreeMap<u32, RuleRef>,
    /// This node's pods isolated per direction (ofport -> namespace/name).
    pub isolated: BTreeMap<(Direction, u32), String>,
}

/// `cookie` with its generation set to `generation`.
pub fn with_generation(cookie: u64, generation: u8) -> u64 {
    (cookie & !0x0000_00ff_0000_0000) | (u64::from(generation) << 32)
}

fn cookie(object: u32) -> u64 {
    Cookie::new(Owner::Agent, 0, object).value()
}

/// The peers of a rule.
enum Peers {
    /// Every address.
    Any,
    /// These prefixes (maybe none: the rule then allows nothing).
    Set(BTreeSet<Ipv4Net>),
}

/// The ports clause of one conjunction.
type PortSet = Option<BTreeSet<(Proto, u16, u16)>>;

/// What one policy compiles to (see [`super::incremental`], which merges
/// the fragments of every policy into the switch's flows).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fragment {
    /// Its flows; a clause flow carries only this policy's conjunctions.
    pub flows: BTreeMap<FlowKey, Flow>,
    /// The rule of each of its conjunction ids.
    pub rules: BTreeMap<u32, RuleRef>,
    /// The local pods it isolates.
    pub isolated: BTreeMap<(Direction, u32), String>,
}

/// Compiles policies one at a time against one state of the inputs; the
/// address sets it resolves are reused by the next policies.
#[derive(Debug)]
pub struct Compiler<'a> {
    inputs: Inputs<'a>,
    /// This node's pods' addresses (the others': their `status.podIP`).
    ips: HashMap<(&'a str, &'a str), Ipv4Addr>,
    out: Fragment,
    peer_cache: HashMap<(String, Peer), Vec<Ipv4Net>>,
}

/// Compiles `inputs` from scratch; `ids` keeps conjunction ids stable
/// between calls.
pub fn compile(inputs: Inputs<'_>, ids: &mut ConjIds) -> Compiled {
    let mut state = super::incremental::State::default();
    state.apply(inputs, &super::incremental::Changes::all(), ids);
    state.out
}

impl<'a> Compiler<'a> {
    /// A compiler reading `inputs`.
    pub fn new(inputs: Inputs<'a>) -> Compiler<'a> {
        // This node's pods are known by their attachment before their status.
        let ips = inputs
            .local
            .iter()
            .map(|l| ((l.namespace.as_str(), l.name.as_str()), l.ip))
            .collect();
        Compiler {
            inputs,
            ips,
            out: Fragment::default(),
            peer_cache: HashMap::new(),
        }
    }

    /// The flows of `policy` (empty when it selects no local pod).
    pub fn policy(&mut self, policy: &Policy, ids: &mut ConjIds) -> Fragment {
        let inputs = self.inputs;
        let selected: Vec<&LocalPod> = inputs
            .local
            .iter()
            .filter(|l| l.namespace == policy.namespace)
            .filter(|l| policy.selector.matches(self.labels(&l.namespace, &l.name)))
            .collect();
        if selected.is_empty() {
            return Fragment::default();
        }
        for (direction, rules) in [
            (Direction::Ingress, &policy.ingress),
            (Direction::Egress, &policy.egress),
        ] {
            let Some(rules) = rules else { continue };
            for pod in &selected {
                self.isolate(direction, pod);
            }
            for (index, rule) in rules.iter().enumerate() {
                let r = RuleRef {
                    namespace: policy.namespace.clone(),
                    policy: policy.name.clone(),
                    direction,
                    index,
                };
                self.rule(&r, rule, &selected, ids);
            }
        }
        std::mem::take(&mut self.out)
    }

    /// The exemptions of the directions in which some pod is isolated.
    pub fn exemptions(&mut self, ingress: bool, egress: bool) -> Fragment {
        if ingress {
            self.exempt(Direction::Ingress);
        }
        if egress {
            self.exempt(Direction::Egress);
        }
        std::mem::take(&mut self.out)
    }

    fn labels(&self, namespace: &str, name: &str) -> &'a Labels {
        static EMPTY: std::sync::OnceLock<Labels> = std::sync::OnceLock::new();
        self.inputs
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .map(|p| &p.labels)
            .unwrap_or_else(|| EMPTY.get_or_init(Labels::new))
    }

    fn add(&mut self, flow: Flow) {
        self.out.flows.insert(key_of(&flow), flow);
    }

    fn exempt(&mut self, direction: Direction) {
        let t = direction.table();
        self.add(
            t.flow(priority::POLICY_EXEMPT)
                .cookie(cookie(cookie_object::POLICY))
                .matching(MatchField::eth_type(ETH_TYPE_IP))
                .matching(MatchField::ct_state(
                    ct_state::TRK,
                    ct_state::TRK | ct_state::NEW,
                ))
                .action(t.next().goto()),
        );
        if direction == Direction::Ingress {
            // The node's own traffic, and a pod reaching itself through a
            // Service (hairpin, SNATed by the proxy).
            for source in [self.inputs.gateway_ip, HAIRPIN_SNAT_IP] {
                self.add(
                    t.flow(priority::POLICY_EXEMPT)
                        .cookie(cookie(cookie_object::POLICY))
                        .matching(MatchField::eth_type(ETH_TYPE_IP))
                        .matching(MatchField::ipv4_src(source, 32))
                        .action(t.next().goto()),
                );
            }
        }
    }

    fn isolate(&mut self, direction: Direction, pod: &LocalPod) {
        self.out.isolated.insert(
            (direction, pod.ofport),
            format!("{}/{}", pod.namespace, pod.name),
        );
        self.add(
            direction
                .table()
                .flow(priority::POLICY_ISOLATION)
                .cookie(cookie(direction.isolation_object()))
                .matching(MatchField::eth_type(ETH_TYPE_IP))
                .matching(direction.pod_match(pod.ofport)),
        );
    }

    /// The pods `peer` selects (policy in `namespace`): the namespaces
    /// first, then their pods (a range of the pod map each).
    fn pod_peers(&self, namespace: &str, peer: &Peer) -> Vec<(&'a (String, String), &'a PodInfo)> {
        let Peer::Pods { pods, namespaces } = peer else {
            return Vec::new();
        };
        let all = self.inputs.pods;
        let in_ns = |ns: String| {
            all.range((ns.clone(), String::new())..)
                .take_while(move |((n, _), _)| *n == ns)
        };
        let selected = |(_, info): &(&'a (String, String), &'a PodInfo)| {
            pods.as_ref().is_none_or(|s| s.matches(&info.labels))
        };
        match namespaces {
            None => in_ns(namespace.to_string()).filter(selected).collect(),
            Some(sel) => self
                .inputs
                .namespaces
                .iter()
                .filter(|(_, labels)| sel.matches(labels))
                .flat_map(|(ns, _)| in_ns(ns.clone()))
                .filter(selected)
                .collect(),
        }
    }

    fn ip_of(&self, key: &(String, String), info: &PodInfo) -> Option<Ipv4Addr> {
        if self.ips.is_empty() {
            return info.ip;
        }
        self.ips
            .get(&(key.0.as_str(), key.1.as_str()))
            .copied()
            .or(info.ip)
    }

    fn peers(&mut self, namespace: &str, rule: &Rule) -> Peers {
        if rule.peers.is_empty() {
            return Peers::Any;
        }
        let mut set = BTreeSet::new();
        for peer in &rule.peers {
            // Many rules name the same peers: resolve each once per compilation
            // (the policy's namespace matters only without a namespaceSelector).
            let scope = match peer {
                Peer::Pods {
                    namespaces: None, ..
                } => namespace,
                _ => "",
            };
            let key = (scope.to_string(), peer.clone());
            if let Some(nets) = self.peer_cache.get(&key) {
                set.extend(nets.iter().copied());
                continue;
            }
            let nets: Vec<Ipv4Net> = match peer {
                Peer::Block { cidr, except } => prefix::subtract(*cidr, except),
                Peer::Pods { .. } => self
                    .pod_peers(namespace, peer)
                    .into_iter()
                    .filter_map(|(k, info)| self.ip_of(k, info))
                    .map(Ipv4Net::from)
                    .collect(),
            };
            set.extend(nets.iter().copied());
            self.peer_cache.insert(key, nets);
        }
        Peers::Set(set)
    }

    fn rule(&mut self, r: &RuleRef, rule: &Rule, selected: &[&LocalPod], ids: &mut ConjIds) {
        let pods: BTreeSet<u32> = selected.iter().map(|p| p.ofport).collect();
        let peers = self.peers(&r.namespace, rule);
        if rule.ports.is_empty() {
            self.conjunction(r, "", &pods, &peers, &None, ids);
            return;
        }
        let numeric: BTreeSet<(Proto, u16, u16)> = rule
            .ports
            .iter()
            .filter_map(|p| match p.port {
                PortMatch::Any => Some((p.proto, 0, u16::MAX)),
                PortMatch::Range(a, b) => Some((p.proto, a, b)),
                PortMatch::Named(_) => None,
            })
            .collect();
        if !numeric.is_empty() {
            self.conjunction(r, "", &pods, &peers, &Some(numeric), ids);
        }
        for p in &rule.ports {
            let PortMatch::Named(name) = &p.port else {
                continue;
            };
            match r.direction {
                // Resolved per selected (destination) pod.
                Direction::Ingress => {
                    let mut by_number: BTreeMap<u16, BTreeSet<u32>> = BTreeMap::new();
                    for pod in selected {
                        let info = self
                            .inputs
                            .pods
                            .get(&(pod.namespace.clone(), pod.name.clone()));
                        if let Some(n) = info.and_then(|i| i.port_named(name, p.proto)) {
                            by_number.entry(n).or_default().insert(pod.ofport);
                        }
                    }
                    for (n, subset) in by_number {
                        let ports = Some(BTreeSet::from([(p.proto, n, n)]));
                        let variant = format!("{name}/{:?}/{n}", p.proto);
                        self.conjunction(r, &variant, &subset, &peers, &ports, ids);
                    }
                }
                // Resolved per peer (destination) pod; ipBlocks have no
                // container ports.
                Direction::Egress => {
                    let candidates: Vec<(&(String, String), &PodInfo)> = if rule.peers.is_empty() {
                        self.inputs.pods.iter().collect()
                    } else {
                        rule.peers
                            .iter()
                            .flat_map(|peer| self.pod_peers(&r.namespace, peer))
                            .collect()
                    };
                    let mut by_number: BTreeMap<u16, BTreeSet<Ipv4Net>> = BTreeMap::new();
                    for (k, info) in candidates {
                        if let (Some(n), Some(ip)) =
                            (info.port_named(name, p.proto), self.ip_of(k, info))
                        {
                            by_number.entry(n).or_default().insert(Ipv4Net::from(ip));
                        }
                    }
                    for (n, set) in by_number {
                        let ports = Some(BTreeSet::from([(p.proto, n, n)]));
                        let variant = format!("{name}/{:?}/{n}", p.proto);
                        self.conjunction(r, &variant, &pods, &Peers::Set(set), &ports, ids);
                    }
                }
            }
        }
    }

    fn conjunction(
        &mut self,
        r: &RuleRef,
        variant: &str,
        pods: &BTreeSet<u32>,
        peers: &Peers,
        ports: &PortSet,
        ids: &mut ConjIds,
    ) {
        if pods.is_empty() || matches!(peers, Peers::Set(s) if s.is_empty()) {
            return;
        }
        let id = ids.get(r, variant);
        self.out.rules.insert(id, r.clone());
        let t = r.direction.table();
        let rule_cookie = cookie(cookie_object::POLICY_RULE_FIRST + id);
        let ip = MatchField::eth_type(ETH_TYPE_IP);
        if matches!(peers, Peers::Any) && ports.is_none() {
            for ofport in pods {
                self.add(
                    t.flow(priority::POLICY_ALLOW_ALL)
                        .cookie(rule_cookie)
                        .matching(ip)
                        .matching(r.direction.pod_match(*ofport))
                        .action(t.next().goto()),
                );
            }
            return;
        }
        let n_clauses = 1 + u8::from(matches!(peers, Peers::Set(_))) + u8::from(ports.is_some());
        let mut clause = 1;
        for ofport in pods {
            self.clause(
                t.flow(priority::POLICY_RULE)
                    .matching(ip)
                    .matching(r.direction.pod_match(*ofport)),
                id,
                clause,
                n_clauses,
            );
        }
        if let Peers::Set(set) = peers {
            clause += 1;
            for net in set {
                self.clause(
                    t.flow(priority::POLICY_RULE)
                        .matching(ip)
                        .matching(MatchField::ip4(
                            r.direction.peer_field(),
                            net.network(),
                            net.prefix_len(),
                        )),
                    id,
                    clause,
                    n_clauses,
                );
            }
        }
        if let Some(ports) = ports {
            clause += 1;
            for (proto, first, last) in ports {
                for m in port_matches(*proto, *first, *last) {
                    self.clause(
                        t.flow(priority::POLICY_RULE)
                            .matching(ip)
                            .matching(MatchField::ip_proto(proto.number()))
                            .matching_all(m),
                        id,
                        clause,
                        n_clauses,
                    );
                }
            }
        }
        self.add(
            t.flow(priority::POLICY_RULE)
                .cookie(rule_cookie)
                .matching(ip)
                .matching(MatchField::conj_id(id))
                .action(t.next().goto()),
        );
    }

    /// Adds `conjunction(id, clause/n)` to the clause flow with `flow`'s
    /// match (one flow may serve many conjunctions).
    fn clause(&mut self, flow: Flow, id: u32, clause: u8, n_clauses: u8) {
        let action = Action::Conjunction {
            id,
            clause,
            n_clauses,
        };
        let entry = self
            .out
            .flows
            .entry(key_of(&flow))
            .or_insert_with(|| flow.cookie(cookie(cookie_object::POLICY)));
        if !entry.actions.contains(&action) {
            entry.actions.push(action);
        }
    }
}

/// The destination-port matches of `proto` ports `first..=last` (none for
/// every port: the protocol match alone).
fn port_matches(proto: Proto, first: u16, last: u16) -> Vec<Vec<MatchField>> {
    if first == 0 && last == u16::MAX {
        return vec![Vec::new()];
    }
    let field = match proto {
        Proto::Tcp => Field::TcpDst,
        Proto::Udp => Field::UdpDst,
        Proto::Sctp => Field::SctpDst,
    };
    prefix::port_masks(first, last)
        .into_iter()
        .map(|(v, m)| vec![MatchField::masked(field, u128::from(v), u128::from(m))])
        .collect()
}

trait MatchAll {
    fn matching_all(self, m: Vec<MatchField>) -> Self;
}

impl MatchAll for Flow {
    fn matching_all(mut self, m: Vec<MatchField>) -> Self {
        self.matches.extend(m);
        self
    }
}
