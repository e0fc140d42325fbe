//! setns happens only on dedicated threads: neither the caller nor any tokio
//! worker ever changes namespace. Its own test binary, so no other test's
//! namespace threads run in this process. Needs root; see tests/common/mod.rs.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{NetnsGuard, poll_until, privileged};
use futures::TryStreamExt;
use switchyard_agent::netns::{
    Netns, NetnsError, NetnsPolicy, THREAD_NAME_PREFIX, run_async_in_netns, run_in_netns,
    run_in_netns_blocking,
};

fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn current_thread_netns() -> u64 {
    netns_inode("/proc/thread-self/ns/net")
}

/// (tid, thread name, netns inode) of every thread of this process.
fn threads() -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let tid = entry.unwrap().file_name().to_string_lossy().into_owned();
        let comm =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        // A thread may exit between listing and reading.
        if let Ok(meta) = std::fs::metadata(format!("/proc/self/task/{tid}/ns/net")) {
            out.push((tid, comm.trim().to_string(), meta.ino()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn setns_happens_on_a_dedicated_thread_only() {
    if !privileged("setns_happens_on_a_dedicated_thread_only") {
        return;
    }
    let host_netns = netns_inode("/proc/self/ns/net");
    assert_eq!(current_thread_netns(), host_netns);
    let pod = NetnsGuard::new("pod");
    let pod_ns = Netns::open(pod.path(), &NetnsPolicy::default()).unwrap();
    assert_ne!(pod_ns.inode(), host_netns);

    let caller_tid = nix::unistd::gettid();
    let (tid, name, inside) = run_in_netns(&pod_ns, || {
        (
            nix::unistd::gettid(),
            std::thread::current().name().unwrap_or("").to_string(),
            current_thread_netns(),
        )
    })
    .await
    .unwrap();
    assert_ne!(tid, caller_tid, "work ran on the calling thread");
    assert!(name.starts_with(THREAD_NAME_PREFIX), "{name}");
    assert_eq!(
        inside,
        pod_ns.inode(),
        "work did not run inside the pod netns"
    );
    assert_eq!(
        current_thread_netns(),
        host_netns,
        "caller's thread changed namespace"
    );

    // Many concurrent calls from tokio tasks: every task checks, before and
    // after, that the worker it runs on is in the host namespace.
    let pod_ns = std::sync::Arc::new(pod_ns);
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let pod_ns = pod_ns.clone();
        tasks.push(tokio::spawn(async move {
            assert_eq!(current_thread_netns(), host_netns);
            let inside = run_in_netns(&pod_ns, current_thread_netns).await.unwrap();
            assert_eq!(inside, pod_ns.inode());
            assert_eq!(current_thread_netns(), host_netns);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // The async form with a netlink handle opened inside sees the pod's links only.
    let links = run_async_in_netns(&pod_ns, |handle| async move {
        let mut names = Vec::new();
        let mut stream = handle.link().get().execute();
        while let Some(link) = stream.try_next().await.unwrap() {
            for attr in link.attributes {
                if let netlink_packet_route::link::LinkAttribute::IfName(n) = attr {
                    names.push(n);
                }
            }
        }
        names
    })
    .await
    .unwrap();
    assert_eq!(links, vec!["lo".to_string()]);

    // The blocking form from a plain thread.
    let for_thread = pod_ns.clone();
    let inside =
        std::thread::spawn(move || run_in_netns_blocking(&for_thread, current_thread_netns))
            .join()
            .unwrap()
            .unwrap();
    assert_eq!(inside, pod_ns.inode());

    // A panic inside is reported, not propagated, and leaves no thread behind.
    let err = run_in_netns(&pod_ns, || -> u32 { panic!("boom") })
        .await
        .unwrap_err();
    assert!(matches!(err, NetnsError::Panicked { .. }), "{err}");

    // The dedicated threads exit; afterwards every thread of the process,
    // tokio workers included, is in the host namespace.
    let exited = poll_until(Duration::from_secs(5), || {
        threads()
            .iter()
            .all(|(_, comm, _)| !comm.starts_with(THREAD_NAME_PREFIX))
    });
    assert!(exited, "namespace threads still alive: {:?}", threads());
    for (tid, comm, netns) in threads() {
        assert_eq!(
            netns, host_netns,
            "thread {tid} ({comm}) is in another namespace"
        );
    }
    let all = threads();
    assert!(
        all.iter()
            .any(|(_, comm, _)| comm.starts_with("tokio-rt-worker")),
        "{all:?}"
    );
}
