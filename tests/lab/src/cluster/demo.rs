//! `switchyard-lab demo`: a 3-node lab with the fabric and internet namespaces, three `web`
//! pods behind a ClusterIP, a NodePort and a LoadBalancer Service and a client pod, then
//! traffic checks that say plainly which paths work and which failed.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::time::Duration;

use super::LabError;
use super::state::StateDir;
use super::sys;
use super::up::{self, UpOptions, UpReport};

/// Options of [`demo`].
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Lab options (nodes, names, state dir).
    pub up: UpOptions,
    /// Remove the lab at the end.
    pub teardown: bool,
}

/// How long pods get to become Running.
const POD_DEADLINE: Duration = Duration::from_secs(60);

fn say(text: &str) {
    println!("{text}");
}

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

/// `kubectl` (or `$KUBECTL`) with the lab's kubeconfig.
pub(super) fn kubectl(state: &StateDir) -> Command {
    let program = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut cmd = Command::new(program);
    cmd.arg("--kubeconfig").arg(state.kubeconfig());
    cmd
}

/// The manifest the demo applies.
pub fn manifest(nodes: usize) -> String {
    let mut out = String::new();
    for i in 1..=3 {
        let node = (i - 1) % nodes + 1;
        out.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-{i}\n  labels:\n    app: web\nspec:\n  nodeName: node{node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n    ports:\n    - containerPort: 8080\n---\n"
        ));
    }
    out.push_str(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  labels:\n    app: client\nspec:\n  nodeName: node1\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n---\n",
    );
    out.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web-np\nspec:\n  type: NodePort\n  selector:\n    app: web\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n    nodePort: {DEMO_NODE_PORT}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: web-lb\nspec:\n  type: LoadBalancer\n  selector:\n    app: web\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n"
    ));
    out
}

/// The NodePort of the demo's `web-np` Service.
pub const DEMO_NODE_PORT: u16 = 30080;

fn pod_ips(state: &StateDir) -> BTreeMap<String, (String, String, String)> {
    let out = sys::run(kubectl(state).args([
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.status.podIP}{\"\\n\"}{end}",
    ]))
    .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                (
                    f.get(1).unwrap_or(&"").to_string(),
                    f.get(2).unwrap_or(&"").to_string(),
                    f.get(3).unwrap_or(&"").to_string(),
                ),
            ))
        })
        .collect()
}

pub(super) fn curl_in(netns: &str, url: &str) -> (String, Result<String, String>) {
    let mut cmd = sys::netns_exec(netns, "curl");
    cmd.args(["-s", "--max-time", "2", url]);
    let line = sys::command_line(&cmd);
    let r = match cmd.stdin(std::process::Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        Ok(out) => Err(match out.status.code() {
            Some(7) => "no connection (curl exit 7: refused or unreachable)".to_string(),
            Some(28) => "no answer within 2 s (curl exit 28: timeout)".to_string(),
            _ => format!(
                "curl failed ({}) {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
        Err(e) => Err(format!("cannot run curl: {e}")),
    };
    (line, r)
}

/// Runs the demo; returns an error only for failures of the lab itself.
pub fn demo(opts: &DemoOptions) -> Result<(), LabError> {
    let state = &opts.up.state;
    say("Switchyard lab demo: a Kubernetes-like cluster of network namespaces on this machine.");
    say("Each node is a network namespace with its own Open vSwitch (userspace datapath),");
    say("switchyard-agent (wires pods to OVS) and switchyard-proxy (Services), all talking to an");
    say("in-memory Kubernetes API server. A small runtime driver plays kubelet + containerd:");
    say("it creates a namespace per pod and calls the real `switchyard` CNI plugin like libcni.");

    step(1, &format!("Bringing up {} nodes", opts.up.nodes));
    let report = up::up(&opts.up)?;
    print_up_report(state, &report);

    step(
        2,
        "Creating 3 `web` pods (label app=web, one per node), a `client` pod on node1, and a ClusterIP Service `web` (port 80 -> 8080)",
    );
    let dir = state.root().join("demo");
    fs::create_dir_all(&dir).map_err(|e| LabError::io("creating the demo directory", e))?;
    let manifest_path = dir.join("web.yaml");
    fs::write(&manifest_path, manifest(opts.up.nodes))
        .map_err(|e| LabError::io("writing the manifest", e))?;
    let mut apply = kubectl(state);
    apply.arg("apply").arg("-f").arg(&manifest_path);
    say(&format!("$ {}", sys::command_line(&apply)));
    print!("{}", sys::run(&mut apply)?);

    let agents_up: Vec<String> = report
        .agents
        .iter()
        .filter(|(_, a)| a.is_ok())
        .map(|(n, _)| n.clone())
        .collect();
    say(&format!(
        "Waiting up to {POD_DEADLINE:?} for the pods on nodes with a running agent ({}) to be Running...",
        if agents_up.is_empty() {
            "none".to_string()
        } else {
            agents_up.join(", ")
        }
    ));
    let pods = sys::poll_until(
        if agents_up.is_empty() {
            Duration::from_secs(3)
        } else {
            POD_DEADLINE
        },
        || {
            let pods = pod_ips(state);
            let done = pods
                .values()
                .all(|(node, phase, _)| !agents_up.contains(node) || phase == "Running")
                && pods.len() >= 4;
            done.then_some(pods)
        },
    )
    .unwrap_or_else(|| pod_ips(state));
    let mut get = kubectl(state);
    get.args(["get", "pods", "-o", "wide"]);
    say(&format!("$ {}", sys::command_line(&get)));
    print!("{}", sys::run(&mut get).unwrap_or_else(|e| e.to_string()));
    let running = |name: &str| {
        pods.get(name)
            .filter(|(_, phase, ip)| phase == "Running" && !ip.is_empty())
            .map(|(node, _, ip)| (node.clone(), ip.clone()))
    };
    if pods.values().any(|(_, phase, _)| phase != "Running") {
        say(
            "Pods that are not Running: their Ready condition says why (`kubectl describe pod NAME`).",
        );
    }

    step(
        3,
        "Traffic checks (curl from inside network namespaces; each web pod answers with its name)",
    );
    let info = state.load_info()?;
    let client_ns = info.pod_netns("default", "client");
    let mut results: Vec<(String, bool)> = Vec::new();
    let check = |title: &str,
                 netns: &str,
                 target: Option<(String, String)>,
                 expect: &str,
                 missing: &str|
     -> bool {
        say(&format!("\n-- {title}"));
        let Some((_, ip)) = target else {
            say(&format!("   NOT CHECKED: {missing}"));
            return false;
        };
        let (line, r) = curl_in(netns, &format!("http://{ip}:8080/"));
        say(&format!("   $ {line}"));
        match r {
            Ok(body) if body == expect => {
                say(&format!("   OK: answered {body:?}"));
                true
            }
            Ok(body) => {
                say(&format!(
                    "   FAILED: answered {body:?}, expected {expect:?}"
                ));
                false
            }
            Err(e) => {
                say(&format!("   FAILED: {e}"));
                false
            }
        }
    };
    let client = running("client");
    let no_pod = |p: &str| format!("pod {p} is not Running (no agent on its node?)");
    let web1 = running("web-1").filter(|_| client.is_some());
    results.push((
        "same-node pod-to-pod (client -> web-1 on node1)".into(),
        check(
            "same node, pod to pod: client (node1) -> web-1 (node1)",
            &client_ns,
            web1,
            "web-1",
            &no_pod(if client.is_none() { "client" } else { "web-1" }),
        ),
    ));
    results.push((
        "node-to-pod (node1 -> web-1)".into(),
        check(
            "node to pod: the node1 namespace itself -> web-1",
            &info.nodes[0].netns,
            running("web-1"),
            "web-1",
            &no_pod("web-1"),
        ),
    ));
    let cross = ["web-2", "web-3"]
        .into_iter()
        .find_map(|w| running(w).filter(|(n, _)| n != "node1").map(|t| (w, t)));
    let cross_ok = match (&client, cross) {
        (Some(_), Some((w, t))) => {
            let ok = check(
                &format!("other node, pod to pod: client (node1) -> {w} ({})", t.0),
                &client_ns,
                Some(t),
                w,
                "",
            );
            if !ok {
                say(
                    "   traffic between nodes goes through the agents' overlay (sy-tun0, Geneve): see `ovs-ofctl dump-flows br-int` table 40 and the agent logs.",
                );
            }
            ok
        }
        _ => {
            say("\n-- other node, pod to pod");
            say("   NOT CHECKED: needs the client and a web pod on another node Running.");
            false
        }
    };
    results.push(("cross-node pod-to-pod".into(), cross_ok));

    say(
        "\n-- ClusterIP Service: client -> web (port 80), 12 requests, counting which backend answered",
    );
    let vip = sys::run(kubectl(state).args([
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]))
    .unwrap_or_default();
    let proxies_up = report.proxies.iter().any(|(_, p)| p.is_ok());
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = 0;
    if client.is_some() && !vip.is_empty() {
        let url = format!("http://{vip}:80/");
        say(&format!("   $ {}   (x12)", curl_in(&client_ns, &url).0));
        for _ in 0..12 {
            match curl_in(&client_ns, &url).1 {
                Ok(body) if !body.is_empty() => *counts.entry(body).or_default() += 1,
                _ => failures += 1,
            }
        }
        for (backend, n) in &counts {
            say(&format!("   {backend}: {n}"));
        }
        if failures > 0 {
            say(&format!("   no answer: {failures}"));
        }
    }
    let vip_ok = !counts.is_empty() && failures == 0;
    if !vip_ok {
        say(&format!(
            "   FAILED: ClusterIP {vip} is served by switchyard-proxy's OVS groups and NAT flows ({}).",
            if proxies_up {
                "the proxy runs: see `ovs-ofctl -O OpenFlow15 dump-groups br-int` and the proxy log"
            } else {
                "the proxy is not running"
            }
        ));
    }
    results.push(("ClusterIP load-balancing".into(), vip_ok));

    // kubectl exec into the client pod, the Service by its name (the lab's cluster DNS).
    say("\n-- kubectl exec and cluster DNS: the Service by name from the client pod");
    say("   $ kubectl exec client -- curl -s --max-time 3 http://web");
    let mut last = String::new();
    let dns_ok = client.is_some()
        && sys::poll_until(Duration::from_secs(10), || {
            let out = kubectl(state)
                .args([
                    "exec",
                    "client",
                    "--",
                    "curl",
                    "-s",
                    "--max-time",
                    "3",
                    "http://web",
                ])
                .output()
                .ok()?;
            let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
            last = format!("{body} {}", String::from_utf8_lossy(&out.stderr).trim());
            (out.status.success() && body.starts_with("web-"))
                .then(|| say(&format!("   OK: answered {body:?}")))
        })
        .is_some();
    if !dns_ok {
        say(&format!(
            "   FAILED: {last} (web.default.svc.cluster.local is answered by the resolver of the client's node, kube-system/coredns-node1: kubectl logs -n kube-system coredns-node1)"
        ));
    }
    results.push(("kubectl exec, curl http://web (cluster DNS)".into(), dns_ok));

    // From outside the cluster: the internet namespace behind the fabric.
    let outside = |title: &str, url: &str| -> bool {
        say(&format!("\n-- {title}"));
        let Some(fabric) = &info.fabric else {
            say("   NOT CHECKED: the lab has no fabric and internet namespaces");
            return false;
        };
        let (line, r) = curl_in(&fabric.internet_netns, url);
        say(&format!("   $ {line}"));
        match r {
            Ok(body) if body.starts_with("web-") => {
                say(&format!("   OK: answered {body:?}"));
                true
            }
            Ok(body) => {
                say(&format!(
                    "   FAILED: answered {body:?}, expected a web pod's name"
                ));
                false
            }
            Err(e) => {
                say(&format!("   FAILED: {e}"));
                false
            }
        }
    };
    let node1 = info.nodes[0].address;
    results.push((
        "NodePort from the internet".into(),
        sys::poll_until(Duration::from_secs(10), || {
            outside(
                &format!("NodePort: internet -> node1 {node1}:{DEMO_NODE_PORT} (Service web-np)"),
                &format!("http://{node1}:{DEMO_NODE_PORT}/"),
            )
            .then_some(())
        })
        .is_some(),
    ));
    say(
        "\n-- LoadBalancer: switchyard-controller assigns web-lb an address from an IPPool in Route mode\n   and programs the fabric's router (through its API) with one ECMP route over the nodes",
    );
    let lb_ok = match super::demo_lb::assign_with_controller(state, &info) {
        Ok(ip) => {
            say(&format!("   web-lb got {ip} from the controller"));
            sys::poll_until(Duration::from_secs(20), || {
                outside(
                    &format!("LoadBalancer: internet -> {ip}:80 (Service web-lb)"),
                    &format!("http://{ip}/"),
                )
                .then_some(())
            })
            .is_some()
        }
        Err(why) => {
            say(&format!("   FAILED: {why}"));
            false
        }
    };
    results.push(("LoadBalancer from the internet".into(), lb_ok));
    say(&format!(
        "\n-- Endpoint outside the cluster: Service `outside` has no selector; its EndpointSlice,\n   written by hand, names a server on the internet host {}:{}, which answers with the\n   address it saw (the pod's connection leaves node1 masqueraded to node1's address)",
        super::fabric::INTERNET_HOST,
        super::demo_outside::OUTSIDE_PORT
    ));
    let outside_ok = match (&client, &info.fabric) {
        (Some(_), Some(_)) => match super::demo_outside::check(state, &info, &client_ns) {
            Ok(seen) if seen == node1.to_string() => {
                say(&format!("   OK: the server saw {seen} (node1)"));
                true
            }
            Ok(seen) => {
                say(&format!(
                    "   FAILED: the server saw {seen}, expected node1's address {node1}"
                ));
                false
            }
            Err(why) => {
                say(&format!("   FAILED: {why}"));
                false
            }
        },
        _ => {
            say("   NOT CHECKED: needs the client pod Running and the lab's fabric");
            false
        }
    };
    results.push((
        "Service with an endpoint outside the cluster".into(),
        outside_ok,
    ));
    network_policy_checks(state, &info, &running, &mut results)?;

    step(4, "Summary");
    for (what, ok) in &results {
        say(&format!(
            "   {:<48} {}",
            what,
            if *ok { "works" } else { "FAILED" }
        ));
    }
    step(5, "Look around");
    let lab_bin = info.binaries.lab.display().to_string();
    let n1 = &info.nodes[0];
    say(&format!(
        "   export KUBECONFIG={}",
        state.kubeconfig().display()
    ));
    say("   kubectl get nodes,pods,services,endpointslices -o wide");
    say("   kubectl exec client -- curl -s http://web     # in the pod's namespace, by DNS name");
    say("   kubectl logs web-1; kubectl get pods -A       # agent, proxy, DNS as system pods");
    say(&format!(
        "   {lab_bin} status --state-dir {}",
        state.root().display()
    ));
    say(
        "   ip netns list                                   # nodes, underlay, one namespace per pod",
    );
    say(&format!(
        "   ip netns exec {} ip addr                 # a node: br-ul (underlay address), OVS taps",
        n1.netns
    ));
    say(&format!(
        "   ip netns exec {client_ns} ip addr   # a pod: eth0 from the CNI plugin"
    ));
    say(&format!(
        "   OVS_RUNDIR={d} ovs-ofctl -O OpenFlow15 dump-flows br-int",
        d = state.ovs_dir(&n1.name).display()
    ));
    say(&format!(
        "   ovs-vsctl --db=unix:{} show",
        state.ovsdb_socket(&n1.name).display()
    ));
    say(&format!(
        "   logs: {}/apiserver.log, runtime.log, nodes/<node>/{{agent,proxy,cni,dns}}.log, nodes/<node>/ovs/*.log",
        state.root().display()
    ));
    if opts.teardown {
        step(6, "Removing the lab (--teardown)");
        let r = up::down(state)?;
        say(&format!(
            "   stopped {} processes, deleted {} namespaces and {} host interfaces",
            r.processes, r.namespaces, r.links
        ));
    } else {
        say(&format!(
            "\nThe lab stays up. Remove it with: {lab_bin} down --state-dir {}",
            state.root().display()
        ));
    }
    Ok(())
}

/// The demo's NetworkPolicy: the web pods admit only the client, on TCP 8080.
pub const DEMO_POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-from-client\nspec:\n  podSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: client\n    ports:\n    - protocol: TCP\n      port: 8080\n";

/// NetworkPolicy, checked by traffic: after `web-from-client` the client still reaches a web
/// pod on another node, web-1 no longer does.
fn network_policy_checks(
    state: &StateDir,
    info: &super::state::LabInfo,
    running: &dyn Fn(&str) -> Option<(String, String)>,
    results: &mut Vec<(String, bool)>,
) -> Result<(), LabError> {
    say("\n-- NetworkPolicy web-from-client: pods app=web admit only app=client, on TCP 8080");
    let dir = state.root().join("demo");
    fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join("network-policy.yaml");
    fs::write(&path, DEMO_POLICY)
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    let mut apply = kubectl(state);
    apply.arg("apply").arg("-f").arg(&path);
    say(&format!("   $ {}", sys::command_line(&apply)));
    match sys::run(&mut apply) {
        Ok(out) => say(&format!("   {}", out.trim())),
        Err(e) => say(&format!("   FAILED: {e}")),
    }
    let target = ["web-2", "web-3"]
        .into_iter()
        .find_map(|w| running(w).filter(|(n, _)| n != "node1").map(|t| (w, t)));
    let (Some((name, (node, ip))), Some(_), Some(_)) =
        (target, running("client"), running("web-1"))
    else {
        say("   NOT CHECKED: needs client, web-1 and a web pod on another node Running.");
        results.push(("NetworkPolicy allows the client".into(), false));
        results.push(("NetworkPolicy blocks web-1".into(), false));
        return Ok(());
    };
    let url = format!("http://{ip}:8080/");
    let from = |pod: &str| info.pod_netns("default", pod);
    say(&format!("   allowed: client (node1) -> {name} ({node})"));
    let allowed = sys::poll_until(Duration::from_secs(10), || {
        let (line, r) = curl_in(&from("client"), &url);
        (r.as_deref() == Ok(name)).then(|| say(&format!("   $ {line}\n   OK: answered {name:?}")))
    })
    .is_some();
    if !allowed {
        say("   FAILED: the client gets no answer");
    }
    results.push(("NetworkPolicy allows the client".into(), allowed));
    say(&format!(
        "   blocked: web-1 (node1, not app=client) -> {name} ({node})"
    ));
    let blocked = sys::poll_until(Duration::from_secs(10), || {
        let (line, r) = curl_in(&from("web-1"), &url);
        r.is_err().then(|| {
            say(&format!(
                "   $ {line}\n   OK: no answer (dropped by {node}'s INGRESS_POLICY table)"
            ))
        })
    })
    .is_some();
    if !blocked {
        say("   FAILED: web-1 still gets an answer");
    }
    results.push(("NetworkPolicy blocks web-1".into(), blocked));
    Ok(())
}

/// Prints what `up` brought up, for people.
pub fn print_up_report(state: &StateDir, report: &UpReport) {
    let info = &report.info;
    say(&format!(
        "   API server: {} (kubeconfig {})",
        info.api_url.as_deref().unwrap_or("-"),
        state.kubeconfig().display()
    ));
    say(&format!(
        "   underlay {} in namespace {} (bridge br0); host end {} = {}",
        info.underlay,
        info.underlay_netns(),
        info.host_link(),
        info.host_address
    ));
    for n in &info.nodes {
        let agent = report
            .agents
            .iter()
            .find(|(name, _)| *name == n.name)
            .map(|(_, a)| a.clone());
        let proxy = report
            .proxies
            .iter()
            .find(|(name, _)| *name == n.name)
            .map(|(_, a)| a.clone());
        let show = |r: Option<Result<u32, String>>| match r {
            Some(Ok(pid)) => format!("running (pid {pid})"),
            Some(Err(why)) => format!("NOT RUNNING: {why}"),
            None => "-".into(),
        };
        say(&format!(
            "   {}: namespace {}, underlay address {}, ovs-vswitchd + ovsdb-server in {}",
            n.name,
            n.netns,
            n.address,
            state.ovs_dir(&n.name).display()
        ));
        say(&format!("      switchyard-agent: {}", show(agent)));
        say(&format!("      switchyard-proxy: {}", show(proxy)));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn manifest_spreads_web_pods_over_nodes() {
        let m = super::manifest(3);
        assert!(m.contains("name: web-1\n  labels:\n    app: web\nspec:\n  nodeName: node1"));
        assert!(m.contains("name: web-3\n  labels:\n    app: web\nspec:\n  nodeName: node3"));
        assert!(m.contains("kind: Service"));
        let one = super::manifest(1);
        assert!(!one.contains("node2"));
    }
}
