//! deploy/Containerfile cannot be built here (no container engine), so this
//! checks it by reading: it builds the real packages, copies the real binary
//! names, installs the packages the pod needs, and provides every executable
//! the DaemonSet's containers and probes run.

mod common;

use std::collections::BTreeSet;

use common::{manifest, pod_spec, repo_root, rust_files};
use serde_json::Value;
use switchyard_deploy::Variant;

fn containerfile() -> String {
    std::fs::read_to_string(repo_root().join("deploy/Containerfile")).unwrap()
}

/// (package name, binary names) of a crate's Cargo.toml.
fn package_bins(dir: &str) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(repo_root().join(dir).join("Cargo.toml")).unwrap();
    let mut package = None;
    let mut bins = Vec::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if let Some(v) = line.strip_prefix("name = ") {
            let v = v.trim_matches('"').to_string();
            match section.as_str() {
                "[package]" => package = Some(v),
                "[[bin]]" => bins.push(v),
                _ => {}
            }
        }
    }
    (package.unwrap(), bins)
}

/// `/usr/local/bin/NAME` paths the image provides (COPY destinations).
fn image_executables(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("COPY "))
        .filter_map(|l| l.split_whitespace().last())
        .map(String::from)
        .collect()
}

#[test]
fn containerfile_builds_and_ships_the_three_binaries() {
    let text = containerfile();
    let shipped = image_executables(&text);
    for dir in ["cni", "node-agent", "kube-proxy"] {
        let (package, bins) = package_bins(dir);
        assert_eq!(bins.len(), 1, "{dir}: one binary");
        let bin = &bins[0];
        assert!(
            text.contains(&format!("-p {package}")),
            "Containerfile does not build package {package}"
        );
        assert!(
            shipped.contains(&format!("/usr/local/bin/{bin}")),
            "image lacks /usr/local/bin/{bin}"
        );
        // Copied from where cargo puts it.
        let from_build = text
            .lines()
            .filter(|l| l.starts_with("COPY --from=build"))
            .any(|l| l.ends_with(&format!("/usr/local/bin/{bin}")) && l.contains("/src/target/"));
        assert!(
            from_build,
            "{bin} is not copied from the build stage's target/"
        );
    }
    // The CNI binary runs on the host: statically linked.
    assert!(text.contains("+crt-static") && text.contains("--bin switchyard "));
    // The release build of the workspace, reproducible from the lock file.
    assert!(text.matches("cargo build --release --locked").count() >= 2);
    // The context (the repository) is sent without the build outputs.
    let ignore =
        std::fs::read_to_string(repo_root().join("deploy/Containerfile.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"), "{ignore}");
    assert!(text.contains("--ignorefile deploy/Containerfile.dockerignore"));
}

#[test]
fn containerfile_installs_the_runtime_packages() {
    let text = containerfile();
    let runtime = text.split("FROM ").last().expect("a runtime stage");
    for package in [
        "openvswitch-switch",
        "openvswitch-common",
        "iproute2",
        "ethtool",
        "conntrack",
        "kmod",
        "containernetworking-plugins",
    ] {
        assert!(
            runtime.split_whitespace().any(|w| w == package),
            "runtime stage does not install {package}"
        );
    }
    for script in ["deploy/install-cni.sh", "deploy/ovs.sh"] {
        assert!(repo_root().join(script).is_file(), "{script}");
        assert!(
            runtime.contains(&format!("COPY {script} ")),
            "{script} not copied"
        );
    }
}

fn executables_of(c: &Value) -> Vec<String> {
    let mut out = vec![common::argv(c)[0].clone()];
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        if let Some(cmd) = c[probe]["exec"]["command"].as_array() {
            out.push(cmd[0].as_str().unwrap().to_string());
        }
    }
    out
}

#[test]
fn image_provides_every_command_the_daemonset_runs() {
    let shipped = image_executables(&containerfile());
    for variant in Variant::ALL {
        let docs = manifest(variant);
        let pod = pod_spec(&docs);
        for c in pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().unwrap())
        {
            for exe in executables_of(c) {
                assert!(
                    shipped.contains(&exe),
                    "{}: container {} runs {exe}, which the image does not provide",
                    variant.file_name(),
                    c["name"]
                );
            }
        }
    }
    // install-cni's default plugin path is the shipped CNI binary.
    let script = std::fs::read_to_string(repo_root().join("deploy/install-cni.sh")).unwrap();
    assert!(script.contains("SWITCHYARD_CNI_BIN:-/usr/local/bin/switchyard}"));
    assert!(shipped.contains("/usr/local/bin/switchyard"));
}

/// Every program the three binaries execute comes with a package the
/// runtime stage installs (so a new `Command::new("...")` in their code
/// cannot ship without its tool).
#[test]
fn image_has_every_program_the_binaries_run() {
    let package_of = |program: &str| -> Option<&'static str> {
        Some(match program {
            "ovs-ofctl" | "ovs-vsctl" | "ovs-appctl" | "ovs-dpctl" => "openvswitch-common",
            "ip" | "tc" => "iproute2",
            "ethtool" => "ethtool",
            "conntrack" => "conntrack",
            "iptables" | "iptables-restore" => "iptables",
            "nft" => "nftables",
            "modprobe" => "kmod",
            _ => return None,
        })
    };
    let text = containerfile();
    let runtime = text.split("FROM ").last().unwrap();
    let mut seen = BTreeSet::new();
    for dir in ["cni/src", "node-agent/src", "kube-proxy/src", "ovs/src"] {
        for file in rust_files(&repo_root().join(dir)) {
            let src = std::fs::read_to_string(&file).unwrap();
            let src = &src[..src.find("#[cfg(test)]").unwrap_or(src.len())];
            for (i, _) in src.match_indices("Command::new(") {
                let arg = &src[i + "Command::new(".len()..];
                let Some(literal) = arg.strip_prefix('"') else {
                    panic!(
                        "{}: Command::new with a non-literal program; extend this check",
                        file.display()
                    );
                };
                let program = &literal[..literal.find('"').unwrap()];
                let package = package_of(program).unwrap_or_else(|| {
                    panic!(
                        "{}: runs {program}: which package provides it?",
                        file.display()
                    )
                });
                assert!(
                    runtime.split_whitespace().any(|w| w == package),
                    "{program} needs package {package} in the image"
                );
                seen.insert(program.to_string());
            }
        }
    }
    // The agent masquerades egress with iptables-restore: the scan must find
    // at least that, or it is not looking at the binaries' sources.
    assert!(seen.contains("iptables-restore"), "{seen:?}");
}
