//! Running work inside a network namespace on a dedicated OS thread.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread*. Done
//! on a tokio worker (or a `spawn_blocking` thread, which the pool reuses),
//! every later task on that thread would silently run in the pod's namespace.
//! So each call here starts a fresh `std::thread`, enters the namespace on it,
//! runs the work, and lets the thread exit: it never goes back to the host
//! namespace and is never reused.
//!
//! Sockets keep the namespace they were created in, so the usual pattern is
//! to create a socket inside (netlink, ethtool ioctl, AF_PACKET) and use it
//! from anywhere afterwards; see [`super::Netlink::open_in`].

use std::future::Future;

use nix::sched::CloneFlags;

use super::path::{Netns, NetnsError};

/// Name prefix of the dedicated threads (visible in `/proc/<pid>/task/*/comm`).
pub const THREAD_NAME_PREFIX: &str = "sy-netns";

fn spawn_in_netns<F, T, D>(
    netns: &Netns,
    work: F,
    done: D,
) -> Result<std::thread::JoinHandle<()>, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
    D: FnOnce(Result<T, NetnsError>) + Send + 'static,
{
    let fd = netns.try_clone_fd()?;
    let label = netns.to_string();
    let spawn_label = label.clone();
    // Log lines of the work carry the caller's span (a CNI request's pod).
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name(format!("{THREAD_NAME_PREFIX}-{}", netns.inode()))
        .spawn(move || {
            let _span = span.entered();
            let result = match nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET) {
                Ok(()) => {
                    drop(fd);
                    tracing::trace!(netns = %label, "entered netns on dedicated thread");
                    Ok(work())
                }
                Err(source) => Err(NetnsError::Enter {
                    netns: label,
                    source,
                }),
            };
            done(result);
            // The thread ends here, still inside the namespace.
        })
        .map_err(|source| NetnsError::Spawn {
            netns: spawn_label,
            source,
        })
}

/// Runs `work` inside `netns` on a new thread and waits for it without
/// blocking the async runtime. Safe to call from any tokio task.
pub async fn run_in_netns<F, T>(netns: &Netns, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_in_netns(netns, work, move |result| {
        let _ = tx.send(result);
    })?;
    // The sender is dropped without sending only if `work` panicked.
    rx.await.map_err(|_| NetnsError::Panicked {
        netns: netns.to_string(),
    })?
}

/// Runs `work` inside `netns` on a new thread and blocks until it is done.
/// For synchronous callers (never call it from an async task).
pub fn run_in_netns_blocking<F, T>(netns: &Netns, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = spawn_in_netns(netns, work, move |result| {
        let _ = tx.send(result);
    })?;
    let panicked = || NetnsError::Panicked {
        netns: netns.to_string(),
    };
    let result = rx.recv().map_err(|_| panicked())?;
    handle.join().map_err(|_| panicked())?;
    result
}

/// Runs async work inside `netns`: on a new thread that entered the
/// namespace, with a current-thread tokio runtime and an rtnetlink
/// connection opened there (so it talks to the namespace's kernel tables).
/// The caller awaits the result without blocking its runtime.
pub async fn run_async_in_netns<F, Fut, T>(netns: &Netns, work: F) -> Result<T, NetnsError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let label = netns.to_string();
    run_in_netns(netns, move || {
        let io_err = |op, source| NetnsError::Io {
            path: label.clone().into(),
            op,
            source,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| io_err("starting a runtime", e))?;
        runtime.block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|e| io_err("opening netlink socket", e))?;
            let task = tokio::spawn(connection);
            let out = work(handle).await;
            task.abort();
            Ok(out)
        })
    })
    .await?
}
