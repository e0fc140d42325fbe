//! The real `switchyard` binary rotates its `logFile` by size
//! (`logFileMaxBytes`): past the limit the file becomes `<logFile>.1`, one old
//! file is kept, and concurrent invocations rotate it once. No agent needed:
//! each STATUS logs its "forwarding" line and then fails (no socket). No root.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// `logFileMaxBytes` of the test: a few runs' lines (one run writes ~400 bytes).
const LIMIT: u64 = 1500;

fn status(dir: &std::path::Path, log: &std::path::Path, max: Option<u64>) -> Run {
    let mut conf = json!({
        "cniVersion": "1.1.0", "name": "switchyard", "type": "switchyard",
        "agentSocket": dir.join("no-agent.sock"), "timeoutSeconds": 1,
        "logFile": log, "logLevel": "info",
    });
    if let Some(max) = max {
        conf["logFileMaxBytes"] = json!(max);
    }
    exec_plugin(
        &switchyard_bin(),
        &[
            ("CNI_COMMAND", "STATUS".into()),
            ("CNI_PATH", "/usr/lib/cni".into()),
        ],
        Some(conf.to_string().as_bytes()),
        Duration::from_secs(30),
    )
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cni.log"))
        .collect();
    names.sort();
    names
}

#[test]
fn log_file_is_rotated_by_size_keeping_one_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cni.log");
    let first = status(dir.path(), &log, Some(LIMIT));
    assert_ne!(first.status, Some(0), "STATUS without an agent fails");
    let one_run = std::fs::metadata(&log).unwrap().len();
    assert!(one_run > 0 && one_run < LIMIT, "{one_run} bytes per run");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("forwarding to switchyard-agent"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in the file: {text}"
    );

    for _ in 0..20 {
        status(dir.path(), &log, Some(LIMIT));
    }
    assert_eq!(files(dir.path()), ["cni.log", "cni.log.1"]);
    let current = std::fs::metadata(&log).unwrap().len();
    let old = std::fs::metadata(dir.path().join("cni.log.1"))
        .unwrap()
        .len();
    // Rotated once past the limit: the current file holds at most the limit
    // plus one run, the old one passed the limit.
    assert!(current <= LIMIT + one_run, "current {current}");
    assert!(old > LIMIT, "old {old}");

    // Concurrent invocations: still one current and one old file, and every
    // line whole.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (dir, log) = (dir.path().to_path_buf(), log.clone());
            std::thread::spawn(move || {
                for _ in 0..5 {
                    status(&dir, &log, Some(LIMIT));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(files(dir.path()), ["cni.log", "cni.log.1"]);
    for name in ["cni.log", "cni.log.1"] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        for line in text.lines() {
            assert!(
                line.contains(" INFO ") || line.contains(" WARN ") || line.contains(" ERROR "),
                "{name}: {line:?}"
            );
        }
    }
}

#[test]
fn default_limit_leaves_a_small_file_alone_and_zero_disables() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cni.log");
    for _ in 0..3 {
        status(dir.path(), &log, None);
    }
    assert_eq!(files(dir.path()), ["cni.log"]);
    std::fs::write(&log, vec![b'x'; 1000]).unwrap();
    status(dir.path(), &log, Some(0));
    assert_eq!(files(dir.path()), ["cni.log"]);
    assert!(std::fs::metadata(&log).unwrap().len() > 1000);
}
