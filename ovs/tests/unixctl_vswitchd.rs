//! The unixctl client against a real ovs-vswitchd, with `ovs-appctl` as the
//! oracle. Needs root and OVS.

use std::time::Duration;

use switchyard_ovs::unixctl::{Error, Unixctl};
use switchyard_ovs_harness::{OvsInstance, require_privileges};

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unixctl_answers_like_ovs_appctl_and_reports_unknown_commands() {
    if !require_privileges("unixctl_answers_like_ovs_appctl_and_reports_unknown_commands") {
        return;
    }
    let ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    let ctl = Unixctl::for_daemon(ovs.rundir(), "ovs-vswitchd").unwrap();
    assert_eq!(ctl.path(), ovs.vswitchd_ctl());

    let version = ctl.call("version", &[], TIMEOUT).await.unwrap();
    assert_eq!(version, ovs.appctl_vswitchd(&["version"]).unwrap());
    assert!(
        version.starts_with("ovs-vswitchd (Open vSwitch)"),
        "{version}"
    );

    // A command with a parameter, and the one the proxy relies on.
    ovs.vsctl(&[
        "add-br",
        "br0",
        "--",
        "set",
        "bridge",
        "br0",
        "datapath_type=netdev",
    ])
    .unwrap();
    let flows = ctl
        .call("bridge/dump-flows", &["br0"], TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        flows,
        ovs.appctl_vswitchd(&["bridge/dump-flows", "br0"]).unwrap()
    );
    assert!(flows.contains("priority=0"), "{flows}");
    ctl.call("revalidator/wait", &[], TIMEOUT).await.unwrap();

    match ctl.call("no-such/command", &[], TIMEOUT).await {
        Err(Error::Command { message, .. }) => {
            assert!(message.contains("is not a valid command"), "{message}");
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    match ctl
        .call("bridge/dump-flows", &["no-such-bridge"], TIMEOUT)
        .await
    {
        Err(Error::Command { message, .. }) => {
            assert_eq!(message, "Unknown bridge")
        }
        other => panic!("expected a command error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unixctl_finds_the_pid_named_socket_and_fails_clearly_when_the_daemon_is_gone() {
    if !require_privileges(
        "unixctl_finds_the_pid_named_socket_and_fails_clearly_when_the_daemon_is_gone",
    ) {
        return;
    }
    let mut ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    // The harness starts vswitchd with a fixed --unixctl path; a daemon started without one
    // (deploy/ovs.sh, ovs-ctl) listens on <daemon>.<pid>.ctl, so link that name to it.
    let pid = ovs.vswitchd_pid().unwrap();
    let pid_named = ovs.rundir().join(format!("ovs-vswitchd.{pid}.ctl"));
    std::os::unix::fs::symlink(ovs.vswitchd_ctl(), &pid_named).unwrap();
    let ctl = Unixctl::for_daemon(ovs.rundir(), "ovs-vswitchd").unwrap();
    assert_eq!(ctl.path(), pid_named);
    ctl.call("version", &[], TIMEOUT).await.unwrap();

    ovs.kill_vswitchd();
    std::fs::remove_file(&pid_named).unwrap();
    match ctl.call("version", &[], TIMEOUT).await {
        Err(Error::Connect { path, .. }) => assert_eq!(path, pid_named),
        other => panic!("expected a connect error, got {other:?}"),
    }
}
