//! Services whose endpoints are not pod addresses (a selector-less Service with a manual
//! EndpointSlice: a server outside the cluster, another node's address, a node port), as
//! kube-proxy users have them, reached from a pod, from a node and from outside through a node
//! port and a LoadBalancer address. The node's and the outside's connections come into `br-int`
//! from `sy-gw0`; `switchyard-proxy` sends them back out of it SNATed to 169.254.169.251 and the
//! node masquerades them to its own address (`docs/pipeline.md`, "Endpoints outside the pod
//! networks"). Each server answers with the source address it saw (`echo-server --name @peer`).
//!
//! Needs root, OVS, nft, curl and kubectl, and the binaries built (`cargo build --workspace
//! --bins`); fails with the reason otherwise, unless SWITCHYARD_SKIP_PRIVILEGED=1. On failure
//! it prints, per node, the flows of `br-int`, the routes and the agent and proxy logs.

mod lab_support;

use std::time::{Duration, Instant};

use lab_support::*;

const POD_DEADLINE: Duration = Duration::from_secs(60);
const REACH_DEADLINE: Duration = Duration::from_secs(20);
/// The address a node-local endpoint sees for connections of the node and of the outside
/// (`switchyard_pipeline::OUTSIDE_SNAT_IP`: no masquerade on local delivery).
const OUTSIDE_SNAT_IP: &str = "169.254.169.251";
/// The internet namespace's address on its link to the fabric: a server outside the cluster,
/// and the source of the internet's requests.
const INTERNET: &str = "198.51.100.2";
const PEER_HTTP: u16 = 9090;
const PEER_UDP: u16 = 9053;
const NODE_PORT_TCP: u16 = 30095;
const NODE_PORT_UDP: u16 = 30096;
const LB_IP: &str = "192.0.2.70";

fn lab_up() -> Lab {
    Lab::up_with_daemons(2, &["--fabric", "--vlans", "100"])
}

fn pod(name: &str, node: &str, app: Option<&str>) -> String {
    let labels = app
        .map(|a| format!("  labels:\n    app: {a}\n"))
        .unwrap_or_default();
    pod_with(name, node, &labels)
}

/// A pod of the `vlan100` segment (the namespace must allow pods to choose).
fn vlan_pod(name: &str, node: &str) -> String {
    pod_with(
        name,
        node,
        "  annotations:\n    switchyard.io/segment: vlan100\n",
    )
}

fn pod_with(name: &str, node: &str, metadata: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n{metadata}spec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n"
    )
}

/// Service `name` of `kind` (ETP Cluster), without a selector: ports `http` 80/TCP and `udp`
/// 53/UDP with the given node ports (for NodePort and LoadBalancer).
fn selectorless_service(name: &str, kind: &str, node_ports: (u16, u16)) -> String {
    let np = |n: u16| {
        if kind == "ClusterIP" {
            String::new()
        } else {
            format!("\n    nodePort: {n}")
        }
    };
    let etp = if kind == "ClusterIP" {
        ""
    } else {
        "  externalTrafficPolicy: Cluster\n"
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: {kind}\n{etp}  ports:\n  - name: http\n    protocol: TCP\n    port: 80{}\n  - name: udp\n    protocol: UDP\n    port: 53{}\n---\n",
        np(node_ports.0),
        np(node_ports.1)
    )
}

/// The EndpointSlice of Service `service`, written by hand: one ready endpoint `address` with
/// ports `http` (TCP) and `udp` (UDP).
fn manual_slice(service: &str, address: &str, http: u16, udp: u16) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-manual\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n- name: http\n  protocol: TCP\n  port: {http}\n- name: udp\n  protocol: UDP\n  port: {udp}\nendpoints:\n- addresses: [\"{address}\"]\n  conditions:\n    ready: true\n---\n"
    )
}

/// Polls until 3 requests from `netns` to `target` are all answered with `expected`.
fn answers(netns: &str, proto: &str, target: &str, expected: &str) {
    let end = Instant::now() + REACH_DEADLINE;
    loop {
        let got = echo_client(netns, proto, target, 3);
        if got.len() == 3 && got.iter().all(|a| a == expected) {
            eprintln!("{netns} -> {proto} {target}: {got:?}");
            return;
        }
        assert!(
            Instant::now() < end,
            "{netns} -> {proto} {target}: answers {got:?}, expected every answer {expected}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// TCP `host:tcp` and UDP `host:udp` from `netns` are answered with `seen_as`.
fn seen_as(netns: &str, host: &str, (tcp, udp): (u16, u16), seen_as: &str) {
    answers(netns, "http", &format!("{host}:{tcp}"), seen_as);
    answers(netns, "udp", &format!("{host}:{udp}"), seen_as);
}

fn gateway(netns: &str) -> String {
    let out = in_netns(netns, &["ip", "-4", "-o", "addr", "show", "dev", "sy-gw0"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address on sy-gw0 in {netns}: {text}"))
        .to_string()
}

/// A selector-less Service (ClusterIP, then NodePort, then LoadBalancer) with a manual
/// EndpointSlice, node1 and node2 of a fabric lab, a client pod on node1:
/// 1. The endpoint is a server in the internet namespace (outside every cluster network).
///    ClusterIP: a pod on node1 is seen as node1's address (the agent's egress masquerade), node1
///    and node2 (host network) as their own addresses, and so is a `vlan` segment pod on node1
///    (SNATed to the gateway address by the agent, then as the node's own). NodePort from the internet through
///    node1 and node2: seen as that node's address. LoadBalancer (ingress IP routed by the
///    fabric to node1): the internet, a pod and node2 are answered.
/// 2. The endpoint is node2's address, a server in node2's network namespace: node1 and the
///    internet through node1's node port are seen as node1's address; node2 itself and the
///    internet through node2's node port (the endpoint is local there) as 169.254.169.251.
#[test]
fn selectorless_service_with_endpoints_outside_the_pod_networks() {
    if !privileged("selectorless_service_with_endpoints_outside_the_pod_networks") {
        return;
    }
    let lab = lab_up();
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    let fabric = info.fabric.clone().expect("lab has a fabric");
    let internet = fabric.internet_netns.clone();
    let node1 = info.node("node1").unwrap().clone();
    let node2 = info.node("node2").unwrap().clone();
    let (n1, n2) = (node1.address.to_string(), node2.address.to_string());

    lab.allow_pod_placement("default");
    let mut m = pod("client", "node1", None);
    m.push_str(&vlan_pod("vclient", "node1"));
    m.push_str(&selectorless_service("outside", "ClusterIP", (0, 0)));
    m.push_str(&manual_slice("outside", INTERNET, PEER_HTTP, PEER_UDP));
    lab.apply(&m);
    wait_running(&lab, "client", POD_DEADLINE);
    wait_running(&lab, "vclient", POD_DEADLINE);
    let client = info.pod_netns("default", "client");
    let vclient = info.pod_netns("default", "vclient");
    let _outside = peer_server(&internet, PEER_HTTP, PEER_UDP);
    // The server itself, straight from node1 (no Service): seen as node1's address.
    answers(
        &node1.netns,
        "http",
        &format!("{INTERNET}:{PEER_HTTP}"),
        &n1,
    );

    // 1. ClusterIP.
    let vip = cluster_ip(&lab, "default", "outside");
    let service_ports = (80, 53);
    seen_as(&client, &vip, service_ports, &n1);
    seen_as(&node1.netns, &vip, service_ports, &n1);
    seen_as(&node2.netns, &vip, service_ports, &n2);
    seen_as(&vclient, &vip, service_ports, &n1);

    // NodePort from the internet, through either node, and from node1 to its own node port.
    lab.apply(&selectorless_service(
        "outside",
        "NodePort",
        (NODE_PORT_TCP, NODE_PORT_UDP),
    ));
    let node_ports = (NODE_PORT_TCP, NODE_PORT_UDP);
    seen_as(&internet, &n1, node_ports, &n1);
    seen_as(&internet, &n2, node_ports, &n2);
    seen_as(&node1.netns, &n1, node_ports, &n1);
    seen_as(&client, &n1, node_ports, &n1);

    // LoadBalancer: the ingress IP routed to node1.
    lab.apply(&selectorless_service(
        "outside",
        "LoadBalancer",
        (NODE_PORT_TCP, NODE_PORT_UDP),
    ));
    set_lb_ingress(&lab, "outside", LB_IP, None);
    route_from_internet(&fabric.netns, &internet, LB_IP, &n1);
    seen_as(&internet, LB_IP, service_ports, &n1);
    seen_as(&client, LB_IP, service_ports, &n1);
    seen_as(&node2.netns, LB_IP, service_ports, &n2);

    // 2. The endpoint is node2's own address.
    let _on_node2 = peer_server(&node2.netns, PEER_HTTP, PEER_UDP);
    lab.apply(&manual_slice("outside", &n2, PEER_HTTP, PEER_UDP));
    seen_as(&node1.netns, &vip, service_ports, &n1);
    seen_as(&client, &vip, service_ports, &n1);
    seen_as(&vclient, &vip, service_ports, &n1);
    seen_as(&internet, &n1, node_ports, &n1);
    seen_as(&internet, LB_IP, service_ports, &n1);
    seen_as(&node2.netns, &vip, service_ports, OUTSIDE_SNAT_IP);
    seen_as(&internet, &n2, node_ports, OUTSIDE_SNAT_IP);
}

/// Issue 14's test 8 packet path inside one lab: a selector-less "supervisor" LoadBalancer
/// Service whose EndpointSlice holds the node port of a "guest" NodePort Service on another
/// node, as `switchyard-controller --provider supervisor` makes it. The internet reaches the
/// LoadBalancer address (routed to node1): node1's proxy DNATs to node2's node port, node2's
/// to the guest pod. The guest pod (its server answers with the source it saw) sees node2's
/// gateway address (ETP Cluster on node2); node1 and a pod reach the supervisor's ClusterIP
/// the same way.
#[test]
fn supervisor_service_reaches_a_guest_node_port_through_another_node() {
    if !privileged("supervisor_service_reaches_a_guest_node_port_through_another_node") {
        return;
    }
    let lab = lab_up();
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    let fabric = info.fabric.clone().expect("lab has a fabric");
    let internet = fabric.internet_netns.clone();
    let node1 = info.node("node1").unwrap().clone();
    let node2 = info.node("node2").unwrap().clone();
    let n2 = node2.address.to_string();
    let gw2 = gateway(&node2.netns);
    let guest_ports = (30097, 30098);

    let mut m = pod("guest-backend", "node1", Some("guest"));
    m.push_str(&pod("client", "node1", None));
    m.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: guest\n  namespace: default\nspec:\n  type: NodePort\n  externalTrafficPolicy: Cluster\n  selector:\n    app: guest\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: {PEER_HTTP}\n    nodePort: {}\n  - name: udp\n    protocol: UDP\n    port: 53\n    targetPort: {PEER_UDP}\n    nodePort: {}\n---\n",
        guest_ports.0, guest_ports.1
    ));
    m.push_str(&selectorless_service(
        "supervisor",
        "LoadBalancer",
        (30099, 30100),
    ));
    m.push_str(&manual_slice(
        "supervisor",
        &n2,
        guest_ports.0,
        guest_ports.1,
    ));
    lab.apply(&m);
    wait_running(&lab, "guest-backend", POD_DEADLINE);
    let client_ip = wait_running(&lab, "client", POD_DEADLINE);
    let _guest = peer_server(
        &info.pod_netns("default", "guest-backend"),
        PEER_HTTP,
        PEER_UDP,
    );
    let client = info.pod_netns("default", "client");

    // The guest node port itself, from the internet through node2.
    seen_as(&internet, &n2, guest_ports, &gw2);

    set_lb_ingress(&lab, "supervisor", LB_IP, None);
    route_from_internet(&fabric.netns, &internet, LB_IP, &node1.address.to_string());
    seen_as(&internet, LB_IP, (80, 53), &gw2);
    let vip = cluster_ip(&lab, "default", "supervisor");
    seen_as(&node1.netns, &vip, (80, 53), &gw2);
    // A pod's connection leaves node1 masqueraded to node1's address by the agent, so node2
    // sees a client outside: its node port masquerades it to node2's gateway too.
    seen_as(&client, &vip, (80, 53), &gw2);
    eprintln!("client pod {client_ip}");
}
