//! The incremental compile against a compile from scratch: random
//! sequences of policy, pod, namespace and attachment changes (seeded), each
//! followed by an update into a switch model; after every update the
//! switch's flows must equal a from-scratch compile of the same inputs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use futures::FutureExt;
use futures::future::BoxFuture;
use switchyard_ovs::openflow::{self, Flow, FlowMod, FlowModCommand, FlowStats, FlowStatsRequest};

use super::compile::{FlowKey, Inputs, compile, key_of, with_generation};
use super::model::{
    Labels, Peer, PodInfo, Policy, PortMatch, PortRule, Proto, Requirement, Rule, Selector,
};
use super::{LocalPod, NetworkPolicies, lock};
use crate::drivers::FlowSink;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// A switch: applies bundles to its flow table (generation 0 cookies).
#[derive(Debug, Default)]
struct Switch(Mutex<BTreeMap<FlowKey, Flow>>);

impl FlowSink for Switch {
    fn is_connected(&self) -> bool {
        true
    }
    fn bundle(&self, mods: Vec<FlowMod>) -> BoxFuture<'_, Result<(), openflow::Error>> {
        let mut table = self.0.lock().unwrap();
        for m in mods {
            let key = key_of(&m.flow);
            match m.command {
                FlowModCommand::Add => {
                    let mut f = m.flow;
                    f.cookie = with_generation(f.cookie, 0);
                    table.insert(key, f);
                }
                FlowModCommand::DeleteStrict => {
                    assert!(table.remove(&key).is_some(), "delete of a flow not there");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        async { Ok(()) }.boxed()
    }
    fn flow_mod(&self, fm: FlowMod) -> BoxFuture<'_, Result<(), openflow::Error>> {
        self.bundle(vec![fm])
    }
    fn flow_mod_queued(
        &self,
        _fm: FlowMod,
    ) -> Result<crate::drivers::FlowConfirmation, openflow::Error> {
        unreachable!("NetworkPolicy sync queues no flow mods")
    }
    fn dump(
        &self,
        _req: FlowStatsRequest,
    ) -> BoxFuture<'_, Result<Vec<FlowStats>, openflow::Error>> {
        async { Ok(Vec::new()) }.boxed()
    }
}

const NAMESPACES: [&str; 4] = ["x", "y", "z", "w"];
const PODS: [&str; 5] = ["p0", "p1", "p2", "p3", "p4"];
const APPS: [&str; 3] = ["a", "b", "c"];
const ENVS: [&str; 2] = ["prod", "dev"];

fn kv(k: &str, v: impl AsRef<str>) -> (String, String) {
    (k.to_string(), v.as_ref().to_string())
}

fn random_pod(rng: &mut Rng, ns: usize, pod: usize) -> PodInfo {
    let mut labels = Labels::new();
    labels.insert("app".into(), rng.pick(&APPS).to_string());
    if rng.chance(50) {
        labels.insert("role".into(), "client".into());
    }
    let mut named_ports = Vec::new();
    if rng.chance(60) {
        named_ports.push(("web".into(), Proto::Tcp, *rng.pick(&[80u16, 8080])));
    }
    if rng.chance(30) {
        named_ports.push(("dns".into(), Proto::Udp, 53));
    }
    let host = u8::try_from(pod * 10 + rng.below(3) + 1).unwrap_or(1);
    PodInfo {
        labels,
        ip: rng
            .chance(90)
            .then(|| Ipv4Addr::new(10, 0, u8::try_from(ns + 1).unwrap_or(1), host)),
        named_ports,
    }
}

fn random_namespace(rng: &mut Rng, name: &str) -> Labels {
    let mut labels = Labels::from([kv("kubernetes.io/metadata.name", name)]);
    if rng.chance(70) {
        labels.insert("env".into(), rng.pick(&["prod", "dev"]).to_string());
    }
    labels
}

fn random_selector(rng: &mut Rng) -> Selector {
    let app = rng.pick(&APPS).to_string();
    match rng.below(6) {
        0 => Selector::default(),
        1 | 2 => Selector {
            labels: vec![kv("app", &app)],
            expressions: Vec::new(),
        },
        3 => Selector {
            labels: Vec::new(),
            expressions: vec![Requirement::Exists("role".into())],
        },
        4 => Selector {
            labels: Vec::new(),
            expressions: vec![Requirement::NotIn("app".into(), vec![app])],
        },
        _ => Selector {
            labels: Vec::new(),
            expressions: vec![Requirement::In("app".into(), vec!["a".into(), app])],
        },
    }
}

fn random_namespace_selector(rng: &mut Rng) -> Option<Selector> {
    match rng.below(4) {
        0 => None,
        1 => Some(Selector::default()),
        2 => Some(Selector {
            labels: vec![kv("env", rng.pick(&ENVS))],
            expressions: Vec::new(),
        }),
        _ => Some(Selector {
            labels: vec![kv("kubernetes.io/metadata.name", NAMESPACES[rng.below(4)])],
            expressions: Vec::new(),
        }),
    }
}

fn random_rule(rng: &mut Rng) -> Rule {
    let mut peers = Vec::new();
    for _ in 0..rng.below(3) {
        peers.push(if rng.chance(15) {
            Peer::Block {
                cidr: "10.0.0.0/16".parse().unwrap(),
                except: vec!["10.0.2.0/24".parse().unwrap()],
            }
        } else {
            Peer::Pods {
                pods: rng.chance(80).then(|| random_selector(rng)),
                namespaces: random_namespace_selector(rng),
            }
        });
    }
    let mut ports = Vec::new();
    for _ in 0..rng.below(3) {
        ports.push(match rng.below(4) {
            0 => PortRule {
                proto: Proto::Tcp,
                port: PortMatch::Named("web".into()),
            },
            1 => PortRule {
                proto: Proto::Udp,
                port: PortMatch::Named("dns".into()),
            },
            2 => PortRule {
                proto: Proto::Tcp,
                port: PortMatch::Range(80, 81),
            },
            _ => PortRule {
                proto: Proto::Udp,
                port: PortMatch::Any,
            },
        });
    }
    Rule { peers, ports }
}

fn random_policy(rng: &mut Rng, ns: &str, name: &str) -> Policy {
    let rules = |rng: &mut Rng| (0..rng.below(3)).map(|_| random_rule(rng)).collect();
    let (ingress, egress) = match rng.below(3) {
        0 => (Some(rules(rng)), None),
        1 => (None, Some(rules(rng))),
        _ => (Some(rules(rng)), Some(rules(rng))),
    };
    Policy {
        namespace: ns.into(),
        name: name.into(),
        selector: random_selector(rng),
        ingress,
        egress,
    }
}

fn ofport(ns: usize, pod: usize) -> u32 {
    u32::try_from(10 + ns * PODS.len() + pod).unwrap_or(0)
}

/// One random change (attachments are in `local`).
fn step(rng: &mut Rng, np: &NetworkPolicies, local: &mut BTreeMap<(usize, usize), LocalPod>) {
    let ns = rng.below(NAMESPACES.len());
    let pod = rng.below(PODS.len());
    let (ns_name, pod_name) = (NAMESPACES[ns], PODS[pod]);
    match rng.below(10) {
        0..=2 => np.set_pod(ns_name, pod_name, Some(random_pod(rng, ns, pod))),
        3 => np.set_pod(ns_name, pod_name, None),
        4 => {
            // Relabel only: the same address and ports.
            let current = lock(&np.caches)
                .pods
                .get(&(ns_name.to_string(), pod_name.to_string()))
                .cloned();
            if let Some(mut p) = current {
                p.labels.insert("app".into(), rng.pick(&APPS).to_string());
                np.set_pod(ns_name, pod_name, Some(p));
            }
        }
        5 => {
            let labels = rng.chance(90).then(|| random_namespace(rng, ns_name));
            np.set_namespace(ns_name, labels);
        }
        6 | 7 => {
            let name = format!("np{}", rng.below(4));
            let policy = rng.chance(85).then(|| random_policy(rng, ns_name, &name));
            np.set_policy(ns_name, &name, policy);
        }
        _ => {
            // Attach (with an address of its own) or detach a local pod.
            if local.remove(&(ns, pod)).is_none() {
                let host = u8::try_from(200 + pod * 5 + rng.below(5)).unwrap_or(200);
                local.insert(
                    (ns, pod),
                    LocalPod {
                        namespace: ns_name.into(),
                        name: pod_name.into(),
                        ofport: ofport(ns, pod),
                        ip: Ipv4Addr::new(10, 0, u8::try_from(ns + 1).unwrap_or(1), host),
                    },
                );
            }
        }
    }
}

async fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let np = NetworkPolicies::new(None, Ipv4Addr::new(10, 0, 0, 1));
    let mut local = BTreeMap::new();
    // A start: every namespace, most pods, a few policies and local pods.
    for (n, ns) in NAMESPACES.iter().enumerate() {
        np.set_namespace(ns, Some(random_namespace(&mut rng, ns)));
        for (p, pod) in PODS.iter().enumerate() {
            if rng.chance(80) {
                np.set_pod(ns, pod, Some(random_pod(&mut rng, n, p)));
            }
        }
    }
    for _ in 0..6 {
        step(&mut rng, &np, &mut local);
    }
    let switch = Switch::default();
    let mut sent = 0;
    for i in 0..steps {
        // Usually one change per update, sometimes a batch.
        let n = if rng.chance(20) { 1 + rng.below(5) } else { 1 };
        for _ in 0..n {
            step(&mut rng, &np, &mut local);
        }
        let pods: Vec<LocalPod> = local.values().cloned().collect();
        sent += np.update(1, &pods, &switch, None).await.unwrap().flow_mods;
        let installed = np.installed.lock().await;
        let c = lock(&np.caches);
        let fresh = compile(
            Inputs {
                policies: &c.policies,
                pods: &c.pods,
                namespaces: &c.namespaces,
                local: &pods,
                gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
            },
            &mut installed.ids.clone(),
        );
        let table = switch.0.lock().unwrap();
        if *table != fresh.flows {
            let text = |m: &BTreeMap<FlowKey, Flow>| -> Vec<String> {
                m.values().map(ToString::to_string).collect()
            };
            let (on, want) = (text(&table), text(&fresh.flows));
            let missing: Vec<&String> = want.iter().filter(|f| !on.contains(f)).collect();
            let extra: Vec<&String> = on.iter().filter(|f| !want.contains(f)).collect();
            panic!(
                "seed {seed}, step {i}: the switch differs from a compile from scratch\n\
                 missing: {missing:#?}\nextra: {extra:#?}\npolicies: {:#?}",
                c.policies
            );
        }
        assert_eq!(
            installed.state.out.rules, fresh.rules,
            "seed {seed}, step {i}"
        );
        assert_eq!(
            installed.state.out.isolated, fresh.isolated,
            "seed {seed}, step {i}"
        );
    }
    // The sequences do produce flows and changes (not a vacuous pass).
    assert!(sent > steps, "seed {seed}: only {sent} flow mods");
}

#[tokio::test]
async fn incremental_updates_equal_a_compile_from_scratch() {
    for seed in [1, 0x5eed, 0xdead_beef, 42, 7] {
        run(seed, 200).await;
    }
}

#[tokio::test]
async fn a_failed_bundle_is_sent_again_with_the_next_change() {
    /// Fails every other bundle.
    #[derive(Debug, Default)]
    struct Flaky(Switch, Mutex<bool>);
    impl FlowSink for Flaky {
        fn is_connected(&self) -> bool {
            true
        }
        fn bundle(&self, mods: Vec<FlowMod>) -> BoxFuture<'_, Result<(), openflow::Error>> {
            let mut fail = self.1.lock().unwrap();
            *fail = !*fail;
            if *fail {
                return async { Err(openflow::Error::NotConnected) }.boxed();
            }
            drop(fail);
            self.0.bundle(mods)
        }
        fn flow_mod(&self, fm: FlowMod) -> BoxFuture<'_, Result<(), openflow::Error>> {
            self.bundle(vec![fm])
        }
        fn flow_mod_queued(
            &self,
            _fm: FlowMod,
        ) -> Result<crate::drivers::FlowConfirmation, openflow::Error> {
            unreachable!("NetworkPolicy sync queues no flow mods")
        }
        fn dump(
            &self,
            _req: FlowStatsRequest,
        ) -> BoxFuture<'_, Result<Vec<FlowStats>, openflow::Error>> {
            async { Ok(Vec::new()) }.boxed()
        }
    }
    let mut rng = Rng(99);
    let np = NetworkPolicies::new(None, Ipv4Addr::new(10, 0, 0, 1));
    let mut local = BTreeMap::new();
    for (n, ns) in NAMESPACES.iter().enumerate() {
        np.set_namespace(ns, Some(random_namespace(&mut rng, ns)));
        for (p, pod) in PODS.iter().enumerate() {
            np.set_pod(ns, pod, Some(random_pod(&mut rng, n, p)));
        }
    }
    let sink = Flaky::default();
    for _ in 0..100 {
        step(&mut rng, &np, &mut local);
        let pods: Vec<LocalPod> = local.values().cloned().collect();
        let _ = np.update(1, &pods, &sink, None).await;
    }
    // One more update that goes through: the switch catches up.
    let pods: Vec<LocalPod> = local.values().cloned().collect();
    *sink.1.lock().unwrap() = true;
    np.update(1, &pods, &sink, None).await.unwrap();
    let want = np.compiled().await.flows;
    assert_eq!(*sink.0.0.lock().unwrap(), want);
}
