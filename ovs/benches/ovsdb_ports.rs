//! Adds and deletes N ports (default 500) on a netdev bridge of a private
//! ovsdb-server (no vswitchd, so both sides measure only the database work):
//!
//! - our OVSDB client, one transaction per port (`add_port`/`remove_port`);
//! - our OVSDB client, one batched transaction (`add_ports`/`remove_ports`);
//! - baseline: one `ovs-vsctl --no-wait` call per port, as a shell script would.
//!
//! Each port is a `dummy` interface with a VLAN tag and external_ids.
//! Run as root: `cargo bench -p switchyard-ovs --bench ovsdb_ports`
//! (`SY_BENCH_PORTS`, `SY_BENCH_ROUNDS` override the defaults 500 and 3).

use std::time::{Duration, Instant};

use switchyard_ovs::ovsdb::{BridgeSpec, Client, PortSpec};
use switchyard_ovs_harness::{OvsInstance, require_privileges};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spec(i: usize) -> PortSpec {
    PortSpec::new(&format!("bp{i}"))
        .with_type("dummy")
        .with_tag(100 + (i % 10) as u16)
        .with_external_id("k8s-pod", &format!("bench/pod-{i}"))
}

fn port_count(ovs: &OvsInstance) -> usize {
    ovs.vsctl(&["list-ports", "br-bench"])
        .unwrap()
        .lines()
        .count()
}

#[derive(Default, Clone, Copy)]
struct Times {
    add: Duration,
    del: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !require_privileges("ovsdb_ports benchmark") {
        return;
    }
    let n = env_or("SY_BENCH_PORTS", 500);
    let rounds = env_or("SY_BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ovs = OvsInstance::builder().start().unwrap();
    let client = runtime
        .block_on(Client::connect(&ovs.db_endpoint()))
        .unwrap();
    runtime
        .block_on(client.ensure_bridge(&BridgeSpec::netdev("br-bench")))
        .unwrap();
    let specs: Vec<PortSpec> = (0..n).map(spec).collect();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();

    let mut single = Vec::new();
    let mut batched = Vec::new();
    let mut vsctl = Vec::new();
    for round in 0..rounds {
        // Client, one transaction per port.
        let t = Instant::now();
        runtime.block_on(async {
            for s in &specs {
                client.add_port("br-bench", s).await.unwrap();
            }
        });
        let add = t.elapsed();
        assert_eq!(port_count(&ovs), n);
        let t = Instant::now();
        runtime.block_on(async {
            for name in &name_refs {
                client.remove_port(name).await.unwrap();
            }
        });
        single.push(Times {
            add,
            del: t.elapsed(),
        });
        assert_eq!(port_count(&ovs), 0);

        // Client, one batched transaction.
        let t = Instant::now();
        runtime
            .block_on(client.add_ports("br-bench", &specs))
            .unwrap();
        let add = t.elapsed();
        assert_eq!(port_count(&ovs), n);
        let t = Instant::now();
        runtime.block_on(client.remove_ports(&name_refs)).unwrap();
        batched.push(Times {
            add,
            del: t.elapsed(),
        });
        assert_eq!(port_count(&ovs), 0);

        // Baseline: one ovs-vsctl call per port (same columns).
        let t = Instant::now();
        for (i, name) in names.iter().enumerate() {
            let tag = format!("tag={}", 100 + i % 10);
            let pod = format!("external_ids:k8s-pod=\"bench/pod-{i}\"");
            ovs.vsctl(&[
                "add-port",
                "br-bench",
                name,
                &tag,
                "--",
                "set",
                "Interface",
                name,
                "type=dummy",
                &pod,
                "--",
                "set",
                "Port",
                name,
                &pod,
            ])
            .unwrap();
        }
        let add = t.elapsed();
        assert_eq!(port_count(&ovs), n);
        let t = Instant::now();
        for name in &names {
            ovs.vsctl(&["del-port", "br-bench", name]).unwrap();
        }
        vsctl.push(Times {
            add,
            del: t.elapsed(),
        });
        assert_eq!(port_count(&ovs), 0);
        eprintln!("round {} of {rounds} done", round + 1);
    }

    let summarize = |v: &[Times]| {
        (
            median(v.iter().map(|t| t.add).collect()),
            median(v.iter().map(|t| t.del).collect()),
        )
    };
    let (base_add, base_del) = summarize(&vsctl);
    println!("ovsdb_ports: {n} ports, median of {rounds} rounds, ovsdb-server only (no vswitchd)");
    println!(
        "{:<34} {:>10} {:>10} {:>12} {:>12}",
        "method", "add (s)", "del (s)", "add speedup", "del speedup"
    );
    for (label, v) in [
        ("ovs-vsctl, one call per port", &vsctl),
        ("client, one transaction per port", &single),
        ("client, one batched transaction", &batched),
    ] {
        let (add, del) = summarize(v);
        println!(
            "{:<34} {:>10.3} {:>10.3} {:>11.1}x {:>11.1}x",
            label,
            add.as_secs_f64(),
            del.as_secs_f64(),
            base_add.as_secs_f64() / add.as_secs_f64(),
            base_del.as_secs_f64() / del.as_secs_f64(),
        );
    }
}
