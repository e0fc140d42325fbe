//! The lab API server's connections and paged lists, seen from a client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use switchyard_lab::apiserver::ApiServerOptions;

/// Port of a `/proc/net/tcp` address (`0100007F:1F90`).
fn port_of(address: &str) -> Option<u16> {
    let (_, hex) = address.rsplit_once(':')?;
    u16::from_str_radix(hex, 16).ok()
}

/// Socket inode of this process's TCP socket with local port `local` and remote port `remote`.
fn tcp_inode(local: u16, remote: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").expect("/proc/self/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (port_of(fields.get(1)?)? == local && port_of(fields.get(2)?)? == remote)
            .then(|| fields.get(9).map(|s| (*s).to_owned()))
            .flatten()
    })
}

/// TCP_NODELAY of this process's open socket with inode `inode`.
#[allow(unsafe_code)]
fn nodelay_of_inode(inode: &str) -> bool {
    use std::os::fd::BorrowedFd;
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy() == wanted) {
            // SAFETY: the descriptor is the server's side of the test's own open connection
            // (the test holds the client end open, so the server keeps it); it is only
            // borrowed for one getsockopt call and not closed.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            return nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::TcpNoDelay)
                .expect("getsockopt TCP_NODELAY");
        }
    }
    panic!("no descriptor for socket inode {inode}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_have_nagle_off() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let port = server.addr().port();
    let (mut conn, client_port) = tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        conn.write_all(b"GET /version HTTP/1.1\r\nHost: lab\r\n\r\n")
            .expect("request");
        let mut buf = [0u8; 12];
        conn.read_exact(&mut buf).expect("response");
        assert_eq!(&buf, b"HTTP/1.1 200");
        let client_port = conn.local_addr().expect("local address").port();
        (conn, client_port)
    })
    .await
    .expect("client thread");
    let server_side = tcp_inode(port, client_port).expect("the server's side of the connection");
    assert!(
        nodelay_of_inode(&server_side),
        "the server's socket has Nagle on (TCP_NODELAY unset)"
    );
    let client_side = tcp_inode(client_port, port).expect("the client's side");
    assert!(
        !nodelay_of_inode(&client_side),
        "the client's socket is a plain one (the check can tell the two apart)"
    );
    conn.flush().expect("connection still open");
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_list_across_namespaces_returns_every_object_once() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let client = common::client(&server);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // "a-x" sorts before "a/" as text but after "a" as a namespace name.
    let names = ["a", "a-x", "a.y", "b"];
    for ns in names {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace"),
            )
            .await
            .expect("create namespace");
    }
    let mut expected = Vec::new();
    for ns in names {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        for i in 0..7 {
            let name = format!("cm{i}");
            api.create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).expect("configmap"),
            )
            .await
            .expect("create configmap");
            expected.push(format!("{ns}/{name}"));
        }
    }
    let all: Api<ConfigMap> = Api::all(client.clone());
    let mut seen = Vec::new();
    let mut remaining = Vec::new();
    let mut params = ListParams::default().limit(3);
    for page in 0.. {
        assert!(page < 50, "the list does not end");
        let list = all.list(&params).await.expect("list page");
        seen.extend(list.items.iter().map(|cm| {
            format!(
                "{}/{}",
                cm.metadata.namespace.as_deref().unwrap_or_default(),
                cm.metadata.name.as_deref().unwrap_or_default()
            )
        }));
        remaining.push(list.metadata.remaining_item_count);
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    let want: Vec<Option<i64>> = (1..=9)
        .map(|page| Some(28 - 3 * page))
        .chain([None])
        .collect();
    assert_eq!(remaining, want);

    let bad = all
        .list(&ListParams::default().limit(2).continue_token("not-a-token"))
        .await;
    match bad {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 400, "{status:?}"),
        other => panic!("a malformed continue token is a bad request, got {other:?}"),
    }
}
