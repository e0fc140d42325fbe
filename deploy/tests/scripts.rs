//! The shell scripts: shellcheck on every script of the repository, the
//! install-cni script run for real on temporary directories, and
//! `vagrant validate` on the Vagrantfile when Vagrant is installed.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo_root;

fn shell_scripts() -> Vec<PathBuf> {
    let root = repo_root();
    let mut out = Vec::new();
    for dir in ["vagrant", "deploy", "scripts"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sh"))
            .collect();
        files.sort();
        out.extend(files);
    }
    for file in ["demo.sh", "test.sh", ".ci/run"] {
        let path = root.join(file);
        if path.is_file() {
            out.push(path);
        }
    }
    out
}

#[test]
fn shellcheck_passes_on_every_shell_script() {
    let scripts = shell_scripts();
    assert!(
        scripts.iter().any(|p| p.ends_with("vagrant/node.sh"))
            && scripts.iter().any(|p| p.ends_with("deploy/ovs.sh")),
        "{scripts:?}"
    );
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(scripts.iter().map(|p| p.strip_prefix(repo_root()).unwrap()))
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run shellcheck ({e}): install it (Debian package `shellcheck`)")
        });
    assert!(
        out.status.success(),
        "shellcheck findings:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

struct InstallDirs {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    conf: PathBuf,
    plugin: PathBuf,
    conflist: PathBuf,
    chained: PathBuf,
}

/// A temporary directory, removed on drop (also when a test panics).
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("switchyard-deploy-{tag}-"))
        .tempdir()
        .unwrap()
}

fn install_dirs(tag: &str) -> InstallDirs {
    let tmp = temp_dir(tag);
    let p = tmp.path().to_path_buf();
    let chained = p.join("chained");
    std::fs::create_dir_all(&chained).unwrap();
    std::fs::write(chained.join("portmap"), b"#!/bin/sh\necho portmap\n").unwrap();
    std::fs::write(p.join("switchyard"), b"#!/bin/sh\necho v1\n").unwrap();
    std::fs::write(
        p.join("10-switchyard.conflist"),
        switchyard_deploy::CONFLIST_SOURCE,
    )
    .unwrap();
    InstallDirs {
        bin: p.join("host/opt/cni/bin"),
        conf: p.join("host/etc/cni/net.d"),
        plugin: p.join("switchyard"),
        conflist: p.join("10-switchyard.conflist"),
        chained,
        _tmp: tmp,
    }
}

fn run_install(d: &InstallDirs) -> std::process::Output {
    Command::new(repo_root().join("deploy/install-cni.sh"))
        .env("CNI_BIN_DIR", &d.bin)
        .env("CNI_CONF_DIR", &d.conf)
        .env("CNI_CONFLIST", &d.conflist)
        .env("SWITCHYARD_CNI_BIN", &d.plugin)
        .env("CHAINED_PLUGINS_DIR", &d.chained)
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn install_cni_installs_the_plugin_and_conflist_by_rename() {
    let d = install_dirs("install");
    let out = run_install(&d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(entries(&d.bin), ["portmap", "switchyard"]);
    assert_eq!(entries(&d.conf), ["10-switchyard.conflist"]);
    assert_eq!(mode(&d.bin.join("switchyard")), 0o755);
    assert_eq!(mode(&d.conf.join("10-switchyard.conflist")), 0o644);
    assert_eq!(
        std::fs::read_to_string(d.conf.join("10-switchyard.conflist")).unwrap(),
        switchyard_deploy::CONFLIST_SOURCE
    );
    let first = std::fs::metadata(d.bin.join("switchyard")).unwrap().ino();

    // An upgrade: new binary; a node's own portmap is left alone.
    std::fs::write(&d.plugin, b"#!/bin/sh\necho v2\n").unwrap();
    std::fs::write(d.bin.join("portmap"), b"node's own").unwrap();
    let out = run_install(&d);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(d.bin.join("switchyard")).unwrap(),
        b"#!/bin/sh\necho v2\n"
    );
    // A new inode: renamed over, not rewritten in place (a running plugin
    // keeps its file; kubelet never sees half of the new one).
    assert_ne!(
        std::fs::metadata(d.bin.join("switchyard")).unwrap().ino(),
        first
    );
    assert_eq!(std::fs::read(d.bin.join("portmap")).unwrap(), b"node's own");
    assert_eq!(
        entries(&d.bin),
        ["portmap", "switchyard"],
        "no temporary files left"
    );
}

#[test]
fn install_cni_without_its_conflist_fails_and_installs_nothing() {
    let d = install_dirs("missing");
    std::fs::remove_file(&d.conflist).unwrap();
    let out = run_install(&d);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing") && stderr.contains("10-switchyard.conflist"),
        "{stderr}"
    );
    assert!(!d.bin.exists() && !d.conf.exists());
}

fn vagrant_validate(envs: &[(&str, &str)]) -> Option<std::process::Output> {
    let dot = temp_dir("vagrant");
    let mut cmd = Command::new("vagrant");
    cmd.args(["validate", "--ignore-provider"])
        .current_dir(repo_root())
        // Keep Vagrant's state out of the checkout.
        .env("VAGRANT_DOTFILE_PATH", dot.path().join(".vagrant"))
        .env("VAGRANT_HOME", dot.path().join("home"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    match cmd.output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running vagrant: {e}"),
    }
}

#[test]
fn vagrantfile_validates_in_every_configuration() {
    let configurations: &[&[(&str, &str)]] = &[
        &[],
        &[("SWITCHYARD_SEGMENTS", "vlan"), ("SWITCHYARD_WORKERS", "3")],
        &[("SWITCHYARD_OVS", "host"), ("SWITCHYARD_WORKERS", "0")],
        &[("SWITCHYARD_TUNNEL", "vxlan"), ("SWITCHYARD_WORKERS", "1")],
    ];
    for envs in configurations {
        let Some(out) = vagrant_validate(envs) else {
            println!(
                "SKIP vagrantfile_validates_in_every_configuration: vagrant is not installed (Debian package `vagrant`)"
            );
            return;
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("validated successfully"),
            "{envs:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = vagrant_validate(&[("SWITCHYARD_SEGMENTS", "vxlan")]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("SWITCHYARD_SEGMENTS must be overlay or vlan"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = vagrant_validate(&[("SWITCHYARD_TUNNEL", "gre")]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SWITCHYARD_TUNNEL must be geneve or vxlan"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fake plugin answering VERSION with `supported`.
fn fake_plugin(path: &Path, supported: &[&str]) {
    let list: Vec<String> = supported.iter().map(|v| format!("\"{v}\"")).collect();
    let script = format!(
        "#!/bin/sh\n[ \"$CNI_COMMAND\" = VERSION ] || exit 1\necho '{{\"cniVersion\": \"1.0.0\", \"supportedVersions\": [{}]}}'\n",
        list.join(", ")
    );
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn installed_cni_version(d: &InstallDirs) -> String {
    let text = std::fs::read_to_string(d.conf.join("10-switchyard.conflist")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cniVersion"].as_str().unwrap().to_owned()
}

#[test]
fn install_cni_chooses_1_1_0_only_when_every_chained_plugin_supports_it() {
    // Both support 1.1.0: runtimes will call STATUS and GC.
    let d = install_dirs("v110");
    fake_plugin(&d.plugin, &["0.4.0", "1.0.0", "1.1.0"]);
    fake_plugin(&d.chained.join("portmap"), &["0.4.0", "1.0.0", "1.1.0"]);
    let out = run_install(&d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(installed_cni_version(&d), "1.1.0");
    // Only the version changed; the rest is the shipped conflist.
    let installed = std::fs::read_to_string(d.conf.join("10-switchyard.conflist")).unwrap();
    assert_eq!(
        installed.replacen("\"1.1.0\"", "\"1.0.0\"", 1),
        switchyard_deploy::CONFLIST_SOURCE
    );
    assert_eq!(
        entries(&d.conf),
        ["10-switchyard.conflist"],
        "no temporary files left"
    );

    // The node's own portmap only goes to 1.0.0: keep 1.0.0.
    let d = install_dirs("v100");
    fake_plugin(&d.plugin, &["0.4.0", "1.0.0", "1.1.0"]);
    fake_plugin(&d.chained.join("portmap"), &["0.3.1", "0.4.0", "1.0.0"]);
    let out = run_install(&d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(installed_cni_version(&d), "1.0.0");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("plugin portmap does not list CNI 1.1.0")
    );

    // A plugin that does not answer VERSION: keep 1.0.0.
    let d = install_dirs("broken");
    fake_plugin(&d.plugin, &["1.0.0", "1.1.0"]);
    let out = run_install(&d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(installed_cni_version(&d), "1.0.0");
}
