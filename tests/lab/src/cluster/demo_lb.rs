//! The demo's LoadBalancer step: `switchyard-controller` runs on the host against the lab,
//! with an `IPPool` in `Route` mode on a `RouteTarget` for the fabric's router (the lab's
//! fabric API, client certificate from a Secret), so `web-lb` gets its address from the
//! controller and the fabric routes it to the nodes over ECMP.

use std::fs;
use std::process::Command;
use std::time::Duration;

use super::LabError;
use super::demo::kubectl;
use super::fabric;
use super::state::{LabInfo, StateDir};
use super::sys;

/// The demo's LoadBalancer pool (TEST-NET-1); the first address goes to `web-lb`.
pub const DEMO_LB_POOL: &str = "192.0.2.80/29";

/// How long `web-lb` gets to receive its address.
const ASSIGN_DEADLINE: Duration = Duration::from_secs(30);

fn run_shown(cmd: &mut Command) -> Result<String, LabError> {
    println!("   $ {}", sys::command_line(cmd));
    let out = sys::run(cmd)?;
    for line in out.lines() {
        println!("   {line}");
    }
    Ok(out)
}

/// Starts the controller (recorded in the lab's journal, so `down` stops it) with the CRDs,
/// the fabric's credentials Secret, a `RouteTarget` and a `Route` pool, and routes the pool
/// from the internet namespace to the fabric. Returns `web-lb`'s address once the controller
/// wrote it, or why not.
pub fn assign_with_controller(state: &StateDir, info: &LabInfo) -> Result<String, String> {
    let fabric = info.fabric.as_ref().ok_or("the lab has no fabric")?;
    let api = fabric.api.as_ref().ok_or("the fabric API is not running")?;
    let controller = info.binaries.lab.with_file_name("switchyard-controller");
    if !controller.exists() {
        return Err(format!(
            "{} is not built (cargo build --workspace --bins)",
            controller.display()
        ));
    }
    let setup = || -> Result<(), LabError> {
        let dir = state.root().join("demo").join("crds");
        fs::create_dir_all(&dir).map_err(|e| LabError::io("creating the CRD directory", e))?;
        for (name, yaml) in switchyard_api::crd_files() {
            fs::write(dir.join(name), yaml).map_err(|e| LabError::io("writing a CRD", e))?;
        }
        run_shown(kubectl(state).arg("apply").arg("-f").arg(&dir))?;
        let from =
            |key: &str, path: &std::path::Path| format!("--from-file={key}={}", path.display());
        run_shown(kubectl(state).args([
            "create",
            "secret",
            "generic",
            "fabric-cred",
            "-n",
            "switchyard-system",
            &from("tls.crt", &api.pki.client_cert),
            &from("tls.key", &api.pki.client_key),
            &from("ca.crt", &api.pki.ca),
        ]))?;
        let pool = format!(
            "apiVersion: switchyard.io/v1alpha1\nkind: RouteTarget\nmetadata:\n  name: fabric\nspec:\n  driver: lab\n  endpoint: {}\n  credentialsSecretRef:\n    namespace: switchyard-system\n    name: fabric-cred\n---\napiVersion: switchyard.io/v1alpha1\nkind: IPPool\nmetadata:\n  name: demo\nspec:\n  cidrs: [\"{DEMO_LB_POOL}\"]\n  announce:\n    mode: Route\n    routeTarget: fabric\n",
            api.endpoint
        );
        let path = state.root().join("demo").join("pool.yaml");
        fs::write(&path, pool).map_err(|e| LabError::io("writing the pool", e))?;
        run_shown(kubectl(state).arg("apply").arg("-f").arg(&path))?;
        // The internet reaches the pool through the fabric (an upstream provider's job).
        let fabric_addr = fabric::FABRIC_INTERNET_ADDR
            .split('/')
            .next()
            .unwrap_or_default();
        run_shown(sys::netns_exec(&fabric.internet_netns, "ip").args([
            "route",
            "replace",
            DEMO_LB_POOL,
            "via",
            fabric_addr,
        ]))?;
        let log = state.root().join("controller.log");
        let mut cmd = Command::new(&controller);
        cmd.env("KUBECONFIG", state.kubeconfig())
            .env("RUST_LOG", "info")
            .args(["--identity", "demo-1", "--namespace", "switchyard-system"])
            .args(["--cluster-name", &info.name])
            .args(["--metrics-address", "127.0.0.1:0"]);
        println!(
            "   $ {} &   (log: {})",
            sys::command_line(&cmd),
            log.display()
        );
        let child = sys::spawn_background(&mut cmd, &log)?;
        state.record_pid(child.id(), "controller")?;
        Ok(())
    };
    setup().map_err(|e| e.to_string())?;
    sys::poll_until(ASSIGN_DEADLINE, || {
        let out = sys::run(kubectl(state).args([
            "get",
            "service",
            "web-lb",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]))
        .ok()?;
        let ip = out.trim().to_string();
        (!ip.is_empty()).then_some(ip)
    })
    .ok_or_else(|| {
        format!(
            "web-lb got no address within {ASSIGN_DEADLINE:?}; see {}",
            state.root().join("controller.log").display()
        )
    })
}
