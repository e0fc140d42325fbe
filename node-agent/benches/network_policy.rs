//! NetworkPolicy at scale: 1,000 policies over 10,000 synthetic pods (100
//! namespaces of 100 pods; this node holds one pod per namespace), compiled
//! to conjunction flows and, in the same run, to the cross-product expansion
//! (one flow per pod x peer x port); both installed in one bundle into a
//! private `ovs-vswitchd`; then pod label changes, each compiled, diffed and
//! installed, timed from the change to the bundle's reply.
//!
//! Run as root: `cargo bench -p switchyard-agent --bench network_policy`
//! (`SY_BENCH_POLICIES`, `SY_BENCH_PODS`, `SY_BENCH_CHANGES` override 1000,
//! 10000 and 200).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use switchyard_agent::policy::NetworkPolicies;
use switchyard_agent::policy::compile::{self, Compiled, ConjIds, Inputs, LocalPod};
use switchyard_agent::policy::model::{
    Labels, Peer, PodInfo, Policy, PortMatch, PortRule, Proto, Rule, Selector,
};
use switchyard_ovs::openflow::{Action, Client, ClientConfig, Flow, FlowMod};
use switchyard_ovs_harness::{OvsInstance, require_privileges};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn sel(pairs: &[(&str, String)]) -> Selector {
    Selector {
        labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        expressions: Vec::new(),
    }
}

const NAMESPACES: usize = 100;

struct World {
    policies: BTreeMap<(String, String), Policy>,
    pods: BTreeMap<(String, String), PodInfo>,
    namespaces: BTreeMap<String, Labels>,
    local: Vec<LocalPod>,
}

/// Pods: `app=app-<i%10>`, `tier=t<i%5>`; namespaces `group=g<n%10>`.
/// Policy j of namespace n selects `tier=t<j%5>` and admits `app=app-<j%10>`
/// from the namespaces of group `g<(n+j)%10>` on TCP 80, 443, 8000-8099 and
/// UDP 53.
fn world(n_policies: usize, n_pods: usize) -> World {
    let per_ns = n_pods / NAMESPACES;
    let mut pods = BTreeMap::new();
    let mut namespaces = BTreeMap::new();
    let mut local = Vec::new();
    for n in 0..NAMESPACES {
        let ns = format!("ns-{n}");
        namespaces.insert(ns.clone(), labels(&[("group", format!("g{}", n % 10))]));
        for i in 0..per_ns {
            let name = format!("pod-{i}");
            let ip = Ipv4Addr::from(0x0a00_0000 + u32::try_from(n * per_ns + i).unwrap() + 256);
            pods.insert(
                (ns.clone(), name.clone()),
                PodInfo {
                    labels: labels(&[
                        ("app", format!("app-{}", i % 10)),
                        ("tier", format!("t{}", i % 5)),
                    ]),
                    ip: Some(ip),
                    named_ports: Vec::new(),
                },
            );
            if i == n % per_ns {
                local.push(LocalPod {
                    namespace: ns.clone(),
                    name,
                    ofport: u32::try_from(10 + n).unwrap(),
                    ip,
                });
            }
        }
    }
    let per_ns_policies = n_policies / NAMESPACES;
    let mut policies = BTreeMap::new();
    for n in 0..NAMESPACES {
        let ns = format!("ns-{n}");
        for j in 0..per_ns_policies {
            let name = format!("np-{j}");
            let port = |proto, a, b| PortRule {
                proto,
                port: PortMatch::Range(a, b),
            };
            policies.insert(
                (ns.clone(), name.clone()),
                Policy {
                    namespace: ns.clone(),
                    name,
                    selector: sel(&[("tier", format!("t{}", j % 5))]),
                    ingress: Some(vec![Rule {
                        peers: vec![Peer::Pods {
                            pods: Some(sel(&[("app", format!("app-{}", j % 10))])),
                            namespaces: Some(sel(&[("group", format!("g{}", (n + j) % 10))])),
                        }],
                        ports: vec![
                            port(Proto::Tcp, 80, 80),
                            port(Proto::Tcp, 443, 443),
                            port(Proto::Tcp, 8000, 8099),
                            port(Proto::Udp, 53, 53),
                        ],
                    }]),
                    egress: None,
                },
            );
        }
    }
    World {
        policies,
        pods,
        namespaces,
        local,
    }
}

fn compile_world(w: &World, ids: &mut ConjIds) -> Compiled {
    compile::compile(
        Inputs {
            policies: &w.policies,
            pods: &w.pods,
            namespaces: &w.namespaces,
            local: &w.local,
            gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
        },
        ids,
    )
}

/// The cross-product expansion of the conjunctions: one flow per
/// combination of their clauses' matches (the other flows as they are).
fn cross_product(c: &Compiled) -> Vec<Flow> {
    let mut dims: BTreeMap<u32, Vec<Vec<&Flow>>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut allow: BTreeMap<u32, &Flow> = BTreeMap::new();
    for f in c.flows.values() {
        let mut conj = false;
        for a in &f.actions {
            if let Action::Conjunction {
                id,
                clause,
                n_clauses,
            } = a
            {
                conj = true;
                let d = dims
                    .entry(*id)
                    .or_insert_with(|| vec![Vec::new(); usize::from(*n_clauses)]);
                d[usize::from(*clause) - 1].push(f);
            }
        }
        let conj_id = f
            .matches
            .iter()
            .find(|m| m.field == switchyard_ovs::openflow::Field::ConjId);
        match (conj, conj_id) {
            (true, _) => {}
            (false, Some(m)) => {
                allow.insert(u32::try_from(m.value).unwrap(), f);
            }
            (false, None) => out.push(f.clone()),
        }
    }
    for (id, d) in dims {
        let template = allow[&id];
        let mut combos: Vec<Flow> = vec![Flow {
            matches: Vec::new(),
            ..template.clone()
        }];
        for clause in d {
            let mut next = Vec::with_capacity(combos.len() * clause.len());
            for base in &combos {
                for f in &clause {
                    let mut flow = base.clone();
                    for m in &f.matches {
                        if !flow.matches.iter().any(|x| x.field == m.field) {
                            flow.matches.push(*m);
                        }
                    }
                    next.push(flow);
                }
            }
            combos = next;
        }
        out.extend(combos);
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    if !require_privileges("network_policy bench") {
        return;
    }
    let n_policies = env_usize("SY_BENCH_POLICIES", 1000);
    let n_pods = env_usize("SY_BENCH_PODS", 10_000);
    let n_changes = env_usize("SY_BENCH_CHANGES", 200);
    let mut w = world(n_policies, n_pods);

    let t = Instant::now();
    let mut ids = ConjIds::default();
    let compiled = compile_world(&w, &mut ids);
    let compile_time = t.elapsed();
    let conj: Vec<Flow> = compiled.flows.values().cloned().collect();
    let t = Instant::now();
    let cross = cross_product(&compiled);
    let expand_time = t.elapsed();
    println!(
        "{n_policies} policies, {n_pods} pods ({} on this node), {} rules selecting local pods",
        w.local.len(),
        compiled.rules.len()
    );
    println!(
        "compile: {:.1} ms (conjunctions), cross-product expansion {:.1} ms more",
        compile_time.as_secs_f64() * 1e3,
        expand_time.as_secs_f64() * 1e3
    );

    let ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    ovs.vsctl(&[
        "add-br",
        "br-bench",
        "--",
        "set",
        "bridge",
        "br-bench",
        "datapath_type=netdev",
        "fail_mode=secure",
    ])
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime
        .block_on(Client::connect(ClientConfig::new(
            ovs.mgmt_socket("br-bench"),
        )))
        .unwrap();
    let install = |flows: &[Flow]| {
        ovs.ofctl(&["-O", "OpenFlow15", "del-flows", "br-bench"])
            .unwrap();
        let t = Instant::now();
        runtime
            .block_on(client.bundle_flow_mods(flows.iter().cloned().map(FlowMod::add).collect()))
            .unwrap();
        t.elapsed()
    };
    let conj_install = install(&conj);
    let cross_install = install(&cross);
    println!("| method | flows | install (s) |");
    println!("|---|---|---|");
    println!(
        "| conjunctions | {} | {:.3} |",
        conj.len(),
        conj_install.as_secs_f64()
    );
    println!(
        "| cross product | {} | {:.3} |",
        cross.len(),
        cross_install.as_secs_f64()
    );
    println!(
        "cross product / conjunctions: {:.1}x flows, {:.1}x install time",
        cross.len() as f64 / conj.len() as f64,
        cross_install.as_secs_f64() / conj_install.as_secs_f64()
    );

    // Label changes: the conjunction flows installed, then one remote pod's
    // app label flips (it enters or leaves peer sets), compiled, diffed and
    // installed as one bundle.
    ovs.ofctl(&["-O", "OpenFlow15", "del-flows", "br-bench"])
        .unwrap();
    let np = NetworkPolicies::new(None, Ipv4Addr::new(10, 0, 0, 1));
    let inputs = |w: &World| {
        (
            w.policies.values().cloned().collect::<Vec<_>>(),
            w.pods.clone(),
            w.namespaces.clone(),
        )
    };
    let (p, pods, ns) = inputs(&w);
    np.set_inputs(p, pods, ns);
    runtime
        .block_on(np.update(1, &w.local, &client, None))
        .unwrap();
    let mut took = Vec::new();
    let mut mods = 0;
    for k in 0..n_changes {
        let key = (
            format!("ns-{}", k % NAMESPACES),
            format!("pod-{}", 50 + k % 40),
        );
        let pod = w.pods.get_mut(&key).unwrap();
        let app = pod.labels.get_mut("app").unwrap();
        *app = if app == "app-0" {
            "app-1".into()
        } else {
            "app-0".into()
        };
        let (p, pods, ns) = inputs(&w);
        let t = Instant::now();
        np.set_inputs(p, pods, ns);
        let stats = runtime
            .block_on(np.update(1, &w.local, &client, None))
            .unwrap();
        took.push(t.elapsed());
        mods += stats.flow_mods;
    }
    took.sort();
    println!(
        "label change -> flows installed, {n_changes} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({:.1} flow mods per change)",
        percentile(&took, 0.5).as_secs_f64() * 1e3,
        percentile(&took, 0.99).as_secs_f64() * 1e3,
        took.last().unwrap().as_secs_f64() * 1e3,
        mods as f64 / n_changes as f64
    );
}
