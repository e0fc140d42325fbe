//! CNI 1.1.0 specification cases run against the real `switchyard` binary
//! with an in-test agent (the crate's `serve`) on a real Unix socket.
//! No root needed.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard_cni::{CniError, CniResult, ErrorCode, SpecVersion, Verb};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const LIMIT: Duration = Duration::from_secs(20);

/// A regular file standing in for the pod's netns path (exists, and is not the
/// plugin's own netns); the stub never enters it.
fn netns(a: &Agent) -> String {
    let p = a.dir.path().join("netns-pod");
    if !p.exists() {
        std::fs::write(&p, b"").unwrap();
    }
    p.display().to_string()
}

fn conf(a: &Agent, version: &str) -> Value {
    json!({"cniVersion": version, "name": "switchyard", "type": "switchyard",
           "agentSocket": a.socket, "timeoutSeconds": 10})
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn run(env: &[(&str, String)], stdin: &Value) -> Run {
    exec_plugin(
        &switchyard_bin(),
        env,
        Some(stdin.to_string().as_bytes()),
        LIMIT,
    )
}

fn add_env(a: &Agent) -> Vec<(&'static str, String)> {
    attachment_env("ADD", "c0ffee01", &netns(a), "eth0")
}

fn env_for(a: &Agent, command: &str) -> Vec<(&'static str, String)> {
    match command {
        "STATUS" => vec![
            ("CNI_COMMAND", "STATUS".into()),
            ("CNI_PATH", "/usr/lib/cni".into()),
        ],
        "GC" => vec![
            ("CNI_COMMAND", "GC".into()),
            ("CNI_PATH", "/usr/lib/cni".into()),
            ("CNI_CONTAINERID", String::new()),
            ("CNI_IFNAME", String::new()),
        ],
        c => attachment_env(c, "c0ffee01", &netns(a), "eth0"),
    }
}

fn without(env: Vec<(&'static str, String)>, name: &str) -> Vec<(&'static str, String)> {
    env.into_iter().filter(|(k, _)| *k != name).collect()
}

fn replace(
    env: Vec<(&'static str, String)>,
    name: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    let mut env = without(env, name);
    env.push((name, value.to_owned()));
    env
}

#[track_caller]
fn expect_error(r: &Run, code: ErrorCode, version: &str) {
    expect_error_code(r, code.code() as u64, version);
}

#[track_caller]
fn expect_error_code(r: &Run, code: u64, version: &str) {
    assert_eq!(r.status, Some(1), "exit status: {r:?}");
    let j = r.json();
    assert_eq!(j["code"], json!(code), "{r:?}");
    assert_eq!(j["cniVersion"], json!(version), "{r:?}");
    assert!(
        !j["msg"].as_str().unwrap_or("").is_empty(),
        "empty msg: {r:?}"
    );
    let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
    for k in keys {
        assert!(
            ["cniVersion", "code", "msg", "details"].contains(&k.as_str()),
            "unexpected key {k}: {r:?}"
        );
    }
}

#[track_caller]
fn expect_silent_success(r: &Run) {
    assert_eq!(r.status, Some(0), "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
}

fn prev_result(a: &Agent, version: &str) -> Value {
    serde_json::from_str(&sample_result(&netns(a)).to_output(version.parse().unwrap())).unwrap()
}

type RunFn = Box<dyn Fn(&Agent) -> Run>;
type CheckFn = Box<dyn Fn(&Agent, &Run)>;

struct Case {
    name: String,
    run: RunFn,
    check: CheckFn,
}

fn case(
    name: impl Into<String>,
    run: impl Fn(&Agent) -> Run + 'static,
    check: impl Fn(&Agent, &Run) + 'static,
) -> Case {
    Case {
        name: name.into(),
        run: Box::new(run),
        check: Box::new(check),
    }
}

fn agent_error(code: ErrorCode) -> CniError {
    CniError::new(code, format!("stub failure {}", code.code()), "what to do")
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();

    // ---- every verb in every version ----
    for v in VERSIONS {
        cases.push(case(
            format!("VERSION {v}"),
            move |_| {
                exec_plugin(
                    &switchyard_bin(),
                    &[("CNI_COMMAND", "VERSION".into())],
                    Some(json!({"cniVersion": v}).to_string().as_bytes()),
                    LIMIT,
                )
            },
            move |_, r| {
                assert_eq!(r.status, Some(0), "{r:?}");
                assert_eq!(
                    r.json(),
                    json!({"cniVersion": v, "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
                );
            },
        ));
        cases.push(case(
            format!("ADD {v} prints the result in {v}"),
            move |a| run(&add_env(a), &conf(a, v)),
            move |a, r| {
                assert_eq!(r.status, Some(0), "{r:?}");
                let version: SpecVersion = v.parse().unwrap();
                let expected = sample_result(&netns(a));
                assert_eq!(r.stdout.trim_end(), expected.to_output(version));
                let j = r.json();
                assert_eq!(j["cniVersion"], json!(v));
                if version.is_legacy_result() {
                    assert_eq!(j["ips"][0]["version"], json!("4"));
                    assert_eq!(j["ips"][1]["version"], json!("6"));
                    assert!(j["interfaces"][1].get("mtu").is_none(), "{j}");
                } else {
                    assert!(j["ips"][0].get("version").is_none(), "{j}");
                    assert_eq!(j["interfaces"][1]["mtu"], json!(1450));
                }
                assert_eq!(j["interfaces"][1]["sandbox"], json!(netns(a)));
                let seen = a.seen();
                assert_eq!(seen.len(), 1);
                assert_eq!(seen[0].verb, Verb::Add);
                assert_eq!(seen[0].env.container_id.as_deref(), Some("c0ffee01"));
                assert_eq!(seen[0].env.ifname.as_deref(), Some("eth0"));
                assert_eq!(seen[0].env.args.k8s_pod_name.as_deref(), Some("web-0"));
                assert_eq!(
                    seen[0].env.args.k8s_pod_namespace.as_deref(),
                    Some("default")
                );
                assert_eq!(seen[0].env.args.k8s_pod_uid.as_deref(), Some("uid-1"));
                assert_eq!(
                    seen[0].env.args.k8s_pod_infra_container_id.as_deref(),
                    Some("abc123")
                );
                assert_eq!(seen[0].config.cni_version, version);
            },
        ));
        cases.push(case(
            format!("DEL {v} twice succeeds silently, prevResult forwarded"),
            move |a| {
                let stdin = with(conf(a, v), json!({"prevResult": prev_result(a, v)}));
                let first = run(&env_for(a, "DEL"), &stdin);
                expect_silent_success(&first);
                run(&without(env_for(a, "DEL"), "CNI_NETNS"), &stdin)
            },
            |a, r| {
                expect_silent_success(r);
                let seen = a.seen();
                assert_eq!(seen.len(), 2);
                assert!(seen.iter().all(|s| s.verb == Verb::Del));
                assert_eq!(seen[1].env.netns, None);
                assert_eq!(
                    seen[0].config.prev_result.as_ref().map(|p| p.ips.len()),
                    Some(2)
                );
            },
        ));
        cases.push(case(
            format!("CHECK {v}"),
            move |a| {
                run(
                    &env_for(a, "CHECK"),
                    &with(conf(a, v), json!({"prevResult": prev_result(a, v)})),
                )
            },
            move |a, r| {
                if v.starts_with("0.3") {
                    expect_error(r, ErrorCode::IncompatibleCniVersion, v);
                    assert!(a.seen().is_empty());
                } else {
                    expect_silent_success(r);
                    let seen = a.seen();
                    assert_eq!(seen[0].verb, Verb::Check);
                    let mut expected = sample_result(&netns(a));
                    if v == "0.4.0" {
                        // The 0.4.0 layout has no interface mtu.
                        expected.interfaces.iter_mut().for_each(|i| i.mtu = None);
                    }
                    assert_eq!(seen[0].config.prev_result.as_ref(), Some(&expected));
                }
            },
        ));
        for verb in ["STATUS", "GC"] {
            cases.push(case(
                format!("{verb} {v}"),
                move |a| {
                    run(
                        &env_for(a, verb),
                        &with(conf(a, v), json!({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})),
                    )
                },
                move |a, r| {
                    if v == "1.1.0" {
                        expect_silent_success(r);
                        assert_eq!(a.seen().len(), 1);
                    } else {
                        expect_error(r, ErrorCode::IncompatibleCniVersion, v);
                        assert!(a.seen().is_empty());
                    }
                },
            ));
        }
    }

    cases.push(case(
        "DEL without prevResult and with a netns that is gone succeeds",
        |a| {
            run(
                &replace(
                    env_for(a, "DEL"),
                    "CNI_NETNS",
                    "/var/run/netns/switchyard-gone",
                ),
                &conf(a, "1.0.0"),
            )
        },
        |a, r| {
            expect_silent_success(r);
            let seen = a.seen();
            assert_eq!(seen[0].config.prev_result, None);
            assert_eq!(
                seen[0].env.netns.as_deref(),
                Some(std::path::Path::new("/var/run/netns/switchyard-gone"))
            );
        },
    ));
    cases.push(case(
        "VERSION without stdin answers 1.1.0",
        |_| {
            exec_plugin(
                &switchyard_bin(),
                &[("CNI_COMMAND", "VERSION".into())],
                None,
                LIMIT,
            )
        },
        |_, r| {
            assert_eq!(r.status, Some(0), "{r:?}");
            assert_eq!(r.json()["cniVersion"], json!("1.1.0"));
        },
    ));

    // ---- GC ----
    cases.push(case(
        "GC forwards cni.dev/valid-attachments",
        |a| {
            run(
                &env_for(a, "GC"),
                &with(
                    conf(a, "1.1.0"),
                    json!({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]}),
                ),
            )
        },
        |a, r| {
            expect_silent_success(r);
            let att = a.seen()[0].config.valid_attachments.clone().unwrap();
            assert_eq!(att.len(), 2);
            assert_eq!((att[1].container_id.as_str(), att[1].ifname.as_str()), ("c2", "net1"));
        },
    ));
    cases.push(case(
        "GC accepts libcni's cni.dev/attachments alias",
        |a| {
            run(
                &env_for(a, "GC"),
                &with(conf(a, "1.1.0"), json!({"cni.dev/attachments": []})),
            )
        },
        |a, r| {
            expect_silent_success(r);
            assert_eq!(a.seen()[0].config.valid_attachments, Some(vec![]));
        },
    ));
    cases.push(case(
        "GC without valid attachments changes nothing (7)",
        |a| run(&env_for(a, "GC"), &conf(a, "1.1.0")),
        |a, r| {
            expect_error(r, ErrorCode::InvalidNetworkConfig, "1.1.0");
            assert!(a.seen().is_empty());
        },
    ));
    cases.push(case(
        "GC without CNI_PATH (4)",
        |a| {
            run(
                &without(env_for(a, "GC"), "CNI_PATH"),
                &with(conf(a, "1.1.0"), json!({"cni.dev/valid-attachments": []})),
            )
        },
        |_, r| {
            expect_error(r, ErrorCode::InvalidEnvironmentVariables, "1.1.0");
            assert!(r.json()["msg"].as_str().unwrap().contains("CNI_PATH"));
        },
    ));

    // ---- STATUS errors from the agent ----
    for code in [
        ErrorCode::PluginNotAvailable,
        ErrorCode::LimitedConnectivity,
    ] {
        cases.push(case(
            format!("STATUS relays {}", code.code()),
            move |a| {
                a.reply("STATUS", Reply::Err(agent_error(code)));
                run(&env_for(a, "STATUS"), &conf(a, "1.1.0"))
            },
            move |_, r| {
                expect_error(r, code, "1.1.0");
                assert_eq!(r.json()["details"], json!("what to do"));
            },
        ));
    }

    // ---- agent-side errors relayed in the requested version ----
    for code in [
        ErrorCode::UnknownContainer,
        ErrorCode::UnsupportedField,
        ErrorCode::TryAgainLater,
        ErrorCode::InvalidPodNetworkRequest,
        ErrorCode::IpPoolExhausted,
        ErrorCode::OvsFailure,
        ErrorCode::InterfaceFailure,
        ErrorCode::ApiServerFailure,
        ErrorCode::CheckFailed,
        ErrorCode::AgentInternal,
    ] {
        cases.push(case(
            format!("ADD relays agent error {}", code.code()),
            move |a| {
                a.reply("ADD", Reply::Err(agent_error(code)));
                run(&add_env(a), &conf(a, "0.4.0"))
            },
            move |_, r| {
                expect_error(r, code, "0.4.0");
                assert_eq!(
                    r.json()["msg"],
                    json!(format!("stub failure {}", code.code()))
                );
            },
        ));
    }
    cases.push(case(
        "CHECK relays 3 unknown container",
        |a| {
            a.reply(
                "CHECK",
                Reply::Err(agent_error(ErrorCode::UnknownContainer)),
            );
            run(
                &env_for(a, "CHECK"),
                &with(
                    conf(a, "1.0.0"),
                    json!({"prevResult": prev_result(a, "1.0.0")}),
                ),
            )
        },
        |_, r| expect_error(r, ErrorCode::UnknownContainer, "1.0.0"),
    ));
    cases.push(case(
        "agent handler panic is 199",
        |a| {
            a.reply("ADD", Reply::Panic);
            run(&add_env(a), &conf(a, "1.1.0"))
        },
        |_, r| expect_error(r, ErrorCode::AgentInternal, "1.1.0"),
    ));
    cases.push(case(
        "agent result with a bad interface index is 107",
        |a| {
            let mut bad = sample_result(&netns(a));
            bad.ips[0].interface = Some(9);
            *a.stub.result.lock().unwrap() = bad;
            run(&add_env(a), &conf(a, "1.1.0"))
        },
        |_, r| expect_error(r, ErrorCode::InvalidAgentReply, "1.1.0"),
    ));

    // ---- environment ----
    cases.push(case(
        "no CNI_COMMAND (4), about on stderr",
        |a| {
            exec_plugin(
                &switchyard_bin(),
                &[],
                Some(conf(a, "1.0.0").to_string().as_bytes()),
                LIMIT,
            )
        },
        |_, r| {
            expect_error(r, ErrorCode::InvalidEnvironmentVariables, "1.1.0");
            assert!(
                r.stderr.contains("CNI protocol versions supported"),
                "{r:?}"
            );
        },
    ));
    cases.push(case(
        "unknown CNI_COMMAND (4)",
        |a| {
            run(
                &replace(add_env(a), "CNI_COMMAND", "ATTACH"),
                &conf(a, "1.0.0"),
            )
        },
        |_, r| expect_error(r, ErrorCode::InvalidEnvironmentVariables, "1.1.0"),
    ));
    for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        cases.push(case(
            format!("ADD without {missing} (4)"),
            move |a| run(&without(add_env(a), missing), &conf(a, "1.0.0")),
            move |a, r| {
                expect_error(r, ErrorCode::InvalidEnvironmentVariables, "1.0.0");
                assert!(r.json()["msg"].as_str().unwrap().contains(missing), "{r:?}");
                assert!(a.seen().is_empty());
            },
        ));
    }
    cases.push(case(
        "DEL without CNI_IFNAME (4)",
        |a| run(&without(env_for(a, "DEL"), "CNI_IFNAME"), &conf(a, "1.0.0")),
        |_, r| expect_error(r, ErrorCode::InvalidEnvironmentVariables, "1.0.0"),
    ));
    for (name, var, value) in [
        ("container id with a slash", "CNI_CONTAINERID", "abc/def"),
        (
            "container id starting with a dash",
            "CNI_CONTAINERID",
            "-abc",
        ),
        ("ifname too long", "CNI_IFNAME", "eth0123456789012"),
        ("ifname with a colon", "CNI_IFNAME", "eth0:1"),
        ("ifname dot", "CNI_IFNAME", "."),
        ("CNI_ARGS without =", "CNI_ARGS", "K8S_POD_NAME"),
        (
            "CNI_ARGS unknown key without IgnoreUnknown",
            "CNI_ARGS",
            "FOO=bar",
        ),
        (
            "CNI_NETNS that does not exist",
            "CNI_NETNS",
            "/var/run/netns/switchyard-does-not-exist",
        ),
        (
            "CNI_NETNS is the plugin's own netns",
            "CNI_NETNS",
            "/proc/self/ns/net",
        ),
    ] {
        cases.push(case(
            format!("ADD with {name} (4)"),
            move |a| run(&replace(add_env(a), var, value), &conf(a, "1.0.0")),
            |a, r| {
                expect_error(r, ErrorCode::InvalidEnvironmentVariables, "1.0.0");
                assert!(a.seen().is_empty());
            },
        ));
    }
    cases.push(case(
        "CNI_ARGS unknown key with IgnoreUnknown is forwarded",
        |a| {
            run(
                &replace(add_env(a), "CNI_ARGS", "IgnoreUnknown=true;FOO=bar"),
                &conf(a, "1.0.0"),
            )
        },
        |a, r| {
            assert_eq!(r.status, Some(0), "{r:?}");
            assert_eq!(
                a.seen()[0].env.args.other.get("FOO").map(String::as_str),
                Some("bar")
            );
        },
    ));

    // ---- stdin ----
    cases.push(case(
        "malformed JSON (6)",
        |a| {
            exec_plugin(
                &switchyard_bin(),
                &add_env(a),
                Some(b"{\"cniVersion\":\"1.0.0\","),
                LIMIT,
            )
        },
        |_, r| expect_error(r, ErrorCode::DecodingFailure, "1.1.0"),
    ));
    cases.push(case(
        "empty stdin (6)",
        |a| exec_plugin(&switchyard_bin(), &add_env(a), Some(b""), LIMIT),
        |_, r| expect_error(r, ErrorCode::DecodingFailure, "1.1.0"),
    ));
    cases.push(case(
        "unreadable stdin (5)",
        |a| {
            let dir = std::fs::File::open(a.dir.path()).unwrap();
            exec_plugin_with_stdin(
                &switchyard_bin(),
                &add_env(a),
                Some(StdinSource::File(dir)),
                LIMIT,
            )
        },
        |_, r| expect_error(r, ErrorCode::IoFailure, "1.1.0"),
    ));
    cases.push(case(
        "unsupported cniVersion (1)",
        |a| {
            run(
                &add_env(a),
                &with(conf(a, "1.0.0"), json!({"cniVersion": "0.2.0"})),
            )
        },
        |_, r| expect_error(r, ErrorCode::IncompatibleCniVersion, "1.1.0"),
    ));
    cases.push(case(
        "missing cniVersion (1)",
        |a| {
            let mut c = conf(a, "1.0.0");
            c.as_object_mut().unwrap().remove("cniVersion");
            run(&add_env(a), &c)
        },
        |_, r| expect_error(r, ErrorCode::IncompatibleCniVersion, "1.1.0"),
    ));
    cases.push(case(
        "ipam section is an unsupported field (2)",
        |a| {
            run(
                &add_env(a),
                &with(conf(a, "1.0.0"), json!({"ipam": {"type": "host-local"}})),
            )
        },
        |a, r| {
            expect_error(r, ErrorCode::UnsupportedField, "1.0.0");
            assert!(r.json()["msg"].as_str().unwrap().contains("host-local"));
            assert!(a.seen().is_empty());
        },
    ));
    for (name, extra) in [
        ("missing name", json!({"name": null})),
        ("bad network name", json!({"name": "a/b"})),
        (
            "timeoutSeconds of the wrong type",
            json!({"timeoutSeconds": "10"}),
        ),
        ("mtu of the wrong type", json!({"mtu": true})),
        ("logLevel unknown", json!({"logLevel": "chatty"})),
        ("agentSocket of the wrong type", json!({"agentSocket": 7})),
        (
            "pod annotations of the wrong type",
            json!({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": "vlan=5"}}),
        ),
        (
            "prevResult that is not a result",
            json!({"prevResult": {"ips": [{"address": "10.0.0.1"}]}}),
        ),
    ] {
        cases.push(case(
            format!("{name} (7)"),
            move |a| run(&add_env(a), &with(conf(a, "1.0.0"), extra.clone())),
            |a, r| {
                expect_error(r, ErrorCode::InvalidNetworkConfig, "1.0.0");
                assert!(a.seen().is_empty());
            },
        ));
    }
    cases.push(case(
        "CHECK without prevResult (7)",
        |a| run(&env_for(a, "CHECK"), &conf(a, "1.0.0")),
        |_, r| expect_error(r, ErrorCode::InvalidNetworkConfig, "1.0.0"),
    ));
    cases.push(case(
        "minimal configuration (plus agentSocket) gets the defaults",
        |a| {
            // The default socket is the real agent's: never sent to from tests.
            run(&add_env(a), &json!({"cniVersion": "1.0.0", "name": "switchyard", "type": "switchyard", "agentSocket": a.socket}))
        },
        |a, r| {
            assert_eq!(r.status, Some(0), "{r:?}");
            let cfg = &a.seen()[0].config;
            assert_eq!(cfg.timeout_seconds, 90);
            assert_eq!(cfg.mtu, None);
            assert_eq!(cfg.prev_result, None);
        },
    ));
    cases.push(case(
        "STATUS with the agent down is 50",
        |a| {
            run(
                &env_for(a, "STATUS"),
                &with(
                    conf(a, "1.1.0"),
                    json!({"agentSocket": a.dir.path().join("nobody.sock")}),
                ),
            )
        },
        |_, r| {
            expect_error(r, ErrorCode::PluginNotAvailable, "1.1.0");
            assert!(
                r.json()["details"]
                    .as_str()
                    .unwrap()
                    .contains("nobody.sock"),
                "{r:?}"
            );
        },
    ));
    cases.push(case(
        "STATUS with the agent hanging is 50 after timeoutSeconds",
        |a| {
            a.reply("STATUS", Reply::Hang);
            run(
                &env_for(a, "STATUS"),
                &with(conf(a, "1.1.0"), json!({"timeoutSeconds": 1})),
            )
        },
        |_, r| expect_error(r, ErrorCode::PluginNotAvailable, "1.1.0"),
    ));
    cases.push(case(
        "unknown keys are ignored; runtimeConfig annotations and mtu forwarded",
        |a| {
            run(
                &add_env(a),
                &with(
                    conf(a, "1.1.0"),
                    json!({"somethingNew": {"x": 1}, "mtu": 1400, "capabilities": {"io.kubernetes.cri.pod-annotations": true},
                           "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"switchyard.io/vlan": "120"}}}),
                ),
            )
        },
        |a, r| {
            assert_eq!(r.status, Some(0), "{r:?}");
            let cfg = &a.seen()[0].config;
            assert_eq!(cfg.mtu, Some(1400));
            assert_eq!(cfg.runtime_config.pod_annotations.get("switchyard.io/vlan").map(String::as_str), Some("120"));
            assert!(a.seen()[0].stdin.contains("somethingNew"));
        },
    ));

    // ---- chaining: switchyard after another interface plugin ----
    cases.push(case(
        "ADD with prevResult appends its interfaces",
        |a| {
            let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}],
                              "ips": [{"interface": 0, "address": "192.168.9.2/24"}]});
            run(
                &add_env(a),
                &with(conf(a, "1.0.0"), json!({"prevResult": prev})),
            )
        },
        |_, r| {
            assert_eq!(r.status, Some(0), "{r:?}");
            let j = r.json();
            assert_eq!(j["interfaces"].as_array().unwrap().len(), 3);
            assert_eq!(j["interfaces"][0]["name"], json!("lo0"));
            assert_eq!(j["ips"][0]["interface"], json!(0));
            assert_eq!(j["ips"][1]["interface"], json!(2));
            assert_eq!(j["ips"][1]["address"], json!("10.244.1.5/24"));
        },
    ));

    // ---- agent unavailable ----
    cases.push(case(
        "agent socket missing (11)",
        |a| {
            run(
                &add_env(a),
                &with(
                    conf(a, "1.0.0"),
                    json!({"agentSocket": a.dir.path().join("nobody.sock")}),
                ),
            )
        },
        |_, r| {
            expect_error(r, ErrorCode::TryAgainLater, "1.0.0");
            assert!(
                r.json()["details"]
                    .as_str()
                    .unwrap()
                    .contains("nobody.sock")
            );
        },
    ));
    cases.push(case(
        "agent socket without listener (11)",
        |a| {
            let path = a.dir.path().join("dead.sock");
            drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
            run(
                &add_env(a),
                &with(conf(a, "0.4.0"), json!({"agentSocket": path})),
            )
        },
        |_, r| expect_error(r, ErrorCode::TryAgainLater, "0.4.0"),
    ));
    cases.push(case(
        "agent hangs: 11 after timeoutSeconds",
        |a| {
            a.reply("ADD", Reply::Hang);
            run(
                &add_env(a),
                &with(conf(a, "1.1.0"), json!({"timeoutSeconds": 1})),
            )
        },
        |a, r| {
            expect_error(r, ErrorCode::TryAgainLater, "1.1.0");
            assert!(r.elapsed >= Duration::from_secs(1), "{r:?}");
            assert!(r.elapsed < Duration::from_secs(8), "{r:?}");
            assert_eq!(a.seen().len(), 1);
        },
    ));

    // ---- logging ----
    cases.push(case(
        "logFile receives logs, stdout only the result",
        |a| {
            let log = a.dir.path().join("switchyard.log");
            run(
                &add_env(a),
                &with(
                    conf(a, "1.0.0"),
                    json!({"logFile": log, "logLevel": "debug"}),
                ),
            )
        },
        |a, r| {
            assert_eq!(r.status, Some(0), "{r:?}");
            r.json();
            let log = std::fs::read_to_string(a.dir.path().join("switchyard.log")).unwrap();
            assert!(log.contains("forwarding to switchyard-agent"), "{log}");
            assert!(log.contains("c0ffee01"), "{log}");
        },
    ));
    cases
}

/// A fake agent answering every connection with fixed bytes (a frame or garbage).
fn raw_agent(dir: &std::path::Path, reply: &'static [u8]) -> std::path::PathBuf {
    let path = dir.join("raw.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            let _ = s.read_exact(&mut body);
            let _ = s.write_all(reply);
        }
    });
    path
}

#[test]
fn spec_table() {
    let mut failures = Vec::new();
    let cases = cases();
    let total = cases.len();
    for c in cases {
        let agent = Agent::start(sample_result(""));
        // The stub's sandbox is the per-agent fake netns path.
        *agent.stub.result.lock().unwrap() = sample_result(&netns(&agent));
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let r = (c.run)(&agent);
            (c.check)(&agent, &r);
        }));
        match outcome {
            Ok(()) => eprintln!("ok   {}", c.name),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("FAIL {}: {msg}", c.name);
                failures.push(c.name);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed: {failures:#?}",
        failures.len()
    );
}

#[test]
fn protocol_mismatch_is_106() {
    let agent = Agent::start(CniResult::default());
    let socket = raw_agent(agent.dir.path(), b"\x00\x00\x00\x15{\"protocolVersion\":9}");
    let r = run(
        &add_env(&agent),
        &with(conf(&agent, "1.0.0"), json!({"agentSocket": socket})),
    );
    expect_error(&r, ErrorCode::ProtocolMismatch, "1.0.0");
    assert!(
        r.json()["details"]
            .as_str()
            .unwrap()
            .contains("peer speaks 9"),
        "{r:?}"
    );
}

#[test]
fn garbage_reply_is_107() {
    let agent = Agent::start(CniResult::default());
    let socket = raw_agent(agent.dir.path(), b"\x00\x00\x00\x05hello");
    let r = run(
        &add_env(&agent),
        &with(conf(&agent, "1.1.0"), json!({"agentSocket": socket})),
    );
    expect_error(&r, ErrorCode::InvalidAgentReply, "1.1.0");
}

#[test]
fn agent_closing_without_reply_is_11() {
    let agent = Agent::start(CniResult::default());
    let socket = raw_agent(agent.dir.path(), b"");
    let r = run(
        &add_env(&agent),
        &with(conf(&agent, "1.1.0"), json!({"agentSocket": socket})),
    );
    expect_error(&r, ErrorCode::TryAgainLater, "1.1.0");
}

#[test]
fn agent_answers_a_newer_protocol_with_106() {
    use std::io::{Read, Write};
    let agent = Agent::start(CniResult::default());
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    let body = br#"{"protocolVersion":2,"verb":"ADD","somethingElse":true}"#;
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["protocolVersion"], json!(1));
    assert_eq!(reply["error"]["code"], json!(106));
    assert!(
        reply["error"]["details"]
            .as_str()
            .unwrap()
            .contains("peer speaks 2"),
        "{reply}"
    );
    assert!(agent.seen().is_empty());
}

#[test]
fn oversized_config_is_a_permanent_error_and_reaches_no_agent() {
    // Before: a config of about 1.8 MiB overflowed the protocol frame and
    // was answered 11, which runtimes retry forever.
    let agent = Agent::start(CniResult::default());
    for command in ["ADD", "DEL"] {
        let big = "x".repeat(1_900_000);
        let r = run(
            &env_for(&agent, command),
            &with(conf(&agent, "1.1.0"), json!({"args": {"padding": big}})),
        );
        expect_error(&r, ErrorCode::InvalidNetworkConfig, "1.1.0");
        assert!(
            r.json()["msg"].as_str().unwrap().contains("too large"),
            "{r:?}"
        );
    }
    assert!(agent.seen().is_empty());
    // Just under the limit still goes through.
    let r = run(
        &add_env(&agent),
        &with(
            conf(&agent, "1.1.0"),
            json!({"args": {"padding": "x".repeat(900_000)}}),
        ),
    );
    assert_eq!(r.status, Some(0), "{r:?}");
}

/// A pod never stays Terminating because of the plugin: DEL succeeds when the
/// agent is down (queued for it) and with a configuration ADD would refuse.
#[test]
fn del_succeeds_whatever_the_agent_and_the_configuration() {
    let agent = Agent::start(CniResult::default());
    // Agent down: the DEL is queued beside its socket and DEL succeeds.
    let dead = agent.dir.path().join("down/cni.sock");
    std::fs::create_dir_all(dead.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let r = run(
        &env_for(&agent, "DEL"),
        &with(conf(&agent, "1.0.0"), json!({"agentSocket": dead})),
    );
    expect_silent_success(&r);
    let queued = switchyard_cni::pending::queued_dels(&dead).unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    let request = queued[0].1.as_ref().unwrap();
    assert_eq!(request.verb, Verb::Del);
    assert_eq!(request.attachment(), Some(("c0ffee01", "eth0")));
    // ADD against the same dead agent is still 11 (the runtime retries it).
    let r = run(
        &add_env(&agent),
        &with(conf(&agent, "1.0.0"), json!({"agentSocket": dead})),
    );
    expect_error(&r, ErrorCode::TryAgainLater, "1.0.0");

    // Configurations ADD refuses: DEL goes through to the agent.
    for (what, extra) in [
        ("an ipam section", json!({"ipam": {"type": "host-local"}})),
        ("an unsupported version", json!({"cniVersion": "0.2.0"})),
        (
            "a malformed prevResult",
            json!({"prevResult": {"ips": "nope"}}),
        ),
        ("a missing name", json!({"name": null})),
    ] {
        let before = agent.seen().len();
        let r = run(&env_for(&agent, "DEL"), &with(conf(&agent, "1.0.0"), extra));
        expect_silent_success(&r);
        let seen = agent.seen();
        assert_eq!(seen.len(), before + 1, "{what}: DEL reached the agent");
        assert_eq!(seen[before].verb, Verb::Del, "{what}");
        assert_eq!(
            seen[before].attachment(),
            Some(("c0ffee01", "eth0")),
            "{what}"
        );
    }
}

/// `SWITCHYARD_CNI_TIMING` (benchmarks) adds one line on stderr with the
/// steps in order; stdout stays exactly the CNI result.
#[test]
fn step_timing_goes_to_stderr_and_leaves_the_result_alone() {
    let agent = Agent::start(sample_result("/var/run/netns/pod"));
    let plain = run(&add_env(&agent), &conf(&agent, "1.1.0"));
    let mut env = add_env(&agent);
    env.push(("SWITCHYARD_CNI_TIMING", "1".into()));
    let timed = run(&env, &conf(&agent, "1.1.0"));
    assert_eq!(timed.status, Some(0), "{timed:?}");
    assert_eq!(timed.json(), plain.json());
    assert!(!plain.stderr.contains("switchyard-timing"), "{plain:?}");
    let line = timed
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("switchyard-timing "))
        .unwrap_or_else(|| panic!("no timing line: {timed:?}"));
    let steps: Vec<(&str, u128)> = line
        .split_whitespace()
        .map(|f| {
            let (step, us) = f.split_once('=').unwrap();
            (step, us.parse().unwrap())
        })
        .collect();
    let names: Vec<&str> = steps.iter().map(|s| s.0).collect();
    assert_eq!(
        names,
        [
            "main",
            "input",
            "runtime",
            "connected",
            "sent",
            "replied",
            "printed"
        ]
    );
    assert!(steps.windows(2).all(|w| w[0].1 <= w[1].1), "{line}");
}
