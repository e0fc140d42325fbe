//! NetworkPolicy at scale: 1,000 policies over 10,000 synthetic pods (100
//! namespaces of 100 pods; this node holds one pod per namespace), compiled
//! to conjunction flows and, in the same run, to the cross-product expansion
//! (one flow per pod x peer x port); both installed in one bundle into a
//! private `ovs-vswitchd`; then changes of five kinds (remote and local pod
//! relabels, pod churn, namespace relabels, policy edits), each compiled
//! incrementally, diffed and installed, timed from the change to the
//! bundle's reply, against the same kinds with a full recompile each.
//!
//! Run as root: `cargo bench -p switchyard-agent --bench network_policy`
//! (`SY_BENCH_POLICIES`, `SY_BENCH_PODS`, `SY_BENCH_CHANGES` override 1000,
//! 10000 and 200 changes of each kind, incremental; `SY_BENCH_FULL_CHANGES`
//! the changes timed with a full recompile, default 50;
//! `SY_BENCH_CROSS=0` skips the cross-product expansion, too big to install
//! past a few thousand policies).

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
    let with_cross = env_usize("SY_BENCH_CROSS", 1) == 1;
    let t = Instant::now();
    let cross = if with_cross {
        cross_product(&compiled)
    } else {
        Vec::new()
    };
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
    let cross_install = if with_cross {
        install(&cross)
    } else {
        Duration::ZERO
    };
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

    // Changes: the conjunction flows installed, then changes of five kinds,
    // each set in the caches as a watch event does and brought to the
    // switch (compile, diff, one bundle), timed from the change to the
    // bundle's reply; first incrementally, then (same kinds, fewer) with a
    // full recompile each, as before the incremental compiler.
    ovs.ofctl(&["-O", "OpenFlow15", "del-flows", "br-bench"])
        .unwrap();
    let np = NetworkPolicies::new(None, Ipv4Addr::new(10, 0, 0, 1));
    np.set_inputs(
        w.policies.values().cloned().collect(),
        w.pods.clone(),
        w.namespaces.clone(),
    );
    let t = Instant::now();
    runtime
        .block_on(np.update(1, &w.local, &client, None))
        .unwrap();
    println!(
        "first update (compile + install, incremental state): {:.3} s",
        t.elapsed().as_secs_f64()
    );
    println!(
        "RSS: bench process (caches, compiled state, cross product) {} MiB, ovs-vswitchd {} MiB",
        rss_mib(None),
        ovs.vswitchd_pid().map_or(0, |p| rss_mib(Some(p)))
    );
    let n_full = env_usize("SY_BENCH_FULL_CHANGES", n_changes.min(50));
    println!(
        "| change | incremental p50 (ms) | p99 (ms) | max (ms) | flow mods/change | full recompile p50 (ms) | p99 (ms) | p99 ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for kind in Kind::ALL {
        let mut inc = Vec::new();
        let mut mods = 0;
        for k in 0..n_changes {
            let t = Instant::now();
            kind.apply(&mut w, &np, k);
            mods += runtime
                .block_on(np.update(1, &w.local, &client, None))
                .unwrap()
                .flow_mods;
            inc.push(t.elapsed());
        }
        let mut full = Vec::new();
        for k in n_changes..n_changes + n_full {
            np.recompile_all();
            let t = Instant::now();
            kind.apply(&mut w, &np, k);
            runtime
                .block_on(np.update(1, &w.local, &client, None))
                .unwrap();
            full.push(t.elapsed());
        }
        inc.sort();
        full.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.0}x |",
            kind.name(),
            ms(percentile(&inc, 0.5)),
            ms(percentile(&inc, 0.99)),
            ms(*inc.last().unwrap()),
            mods as f64 / n_changes as f64,
            ms(percentile(&full, 0.5)),
            ms(percentile(&full, 0.99)),
            percentile(&full, 0.99).as_secs_f64() / percentile(&inc, 0.99).as_secs_f64()
        );
    }
    println!("RSS after the changes: bench process {} MiB", rss_mib(None));
}

/// `VmRSS` of `pid` (this process: `None`) in MiB.
fn rss_mib(pid: Option<u32>) -> u64 {
    let path = pid.map_or("/proc/self/status".to_string(), |p| {
        format!("/proc/{p}/status")
    });
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// The kinds of change timed.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A remote pod's `app` flips between app-0 and app-1 (it enters or
    /// leaves peer address sets).
    RemoteRelabel,
    /// A local pod's `tier` flips (other policies select it).
    LocalRelabel,
    /// A remote pod is created (even steps) or deleted (odd steps).
    PodChurn,
    /// A namespace's `group` flips (it enters or leaves namespace
    /// selectors).
    NamespaceRelabel,
    /// A policy's first port flips between 80 and 8080.
    PolicyEdit,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::RemoteRelabel,
        Kind::LocalRelabel,
        Kind::PodChurn,
        Kind::NamespaceRelabel,
        Kind::PolicyEdit,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::RemoteRelabel => "remote pod relabel",
            Kind::LocalRelabel => "local pod relabel",
            Kind::PodChurn => "pod created/deleted",
            Kind::NamespaceRelabel => "namespace relabel",
            Kind::PolicyEdit => "policy edit",
        }
    }

    /// Applies change `k` to the world and, as a watch event, to `np`.
    fn apply(self, w: &mut World, np: &NetworkPolicies, k: usize) {
        let ns = format!("ns-{}", k % NAMESPACES);
        match self {
            Kind::RemoteRelabel => {
                let name = format!("pod-{}", 50 + k % 40);
                let pod = w.pods.get_mut(&(ns.clone(), name.clone())).unwrap();
                let app = pod.labels.get_mut("app").unwrap();
                *app = if app == "app-0" { "app-1" } else { "app-0" }.into();
                np.set_pod(&ns, &name, Some(pod.clone()));
            }
            Kind::LocalRelabel => {
                let local = &w.local[k % w.local.len()];
                let key = (local.namespace.clone(), local.name.clone());
                let pod = w.pods.get_mut(&key).unwrap();
                let tier = pod.labels.get_mut("tier").unwrap();
                *tier = if tier == "t0" { "t1" } else { "t0" }.into();
                np.set_pod(&key.0, &key.1, Some(pod.clone()));
            }
            Kind::PodChurn => {
                let name = format!("new-{}", k / 2);
                if k.is_multiple_of(2) {
                    let pod = PodInfo {
                        labels: labels(&[
                            ("app", format!("app-{}", k % 10)),
                            ("tier", "t0".into()),
                        ]),
                        ip: Some(Ipv4Addr::from(0x0ac8_0000 + u32::try_from(k).unwrap_or(0))),
                        named_ports: Vec::new(),
                    };
                    w.pods.insert((ns.clone(), name.clone()), pod.clone());
                    np.set_pod(&ns, &name, Some(pod));
                } else {
                    let ns = format!("ns-{}", (k - 1) % NAMESPACES);
                    w.pods.remove(&(ns.clone(), name.clone()));
                    np.set_pod(&ns, &name, None);
                }
            }
            Kind::NamespaceRelabel => {
                let n = k % NAMESPACES;
                let labels = w.namespaces.get_mut(&ns).unwrap();
                let group = labels.get_mut("group").unwrap();
                *group = if *group == format!("g{}", n % 10) {
                    format!("g{}", (n + 1) % 10)
                } else {
                    format!("g{}", n % 10)
                };
                np.set_namespace(&ns, Some(labels.clone()));
            }
            Kind::PolicyEdit => {
                let per_ns = w.policies.len() / NAMESPACES;
                let name = format!("np-{}", (k / NAMESPACES) % per_ns.max(1));
                let Some(policy) = w.policies.get_mut(&(ns.clone(), name.clone())) else {
                    return;
                };
                let rules = policy.ingress.as_mut().unwrap();
                let port = &mut rules[0].ports[0].port;
                *port = match port {
                    PortMatch::Range(80, 80) => PortMatch::Range(8080, 8080),
                    _ => PortMatch::Range(80, 80),
                };
                np.set_policy(&ns, &name, Some(policy.clone()));
            }
        }
    }
}
