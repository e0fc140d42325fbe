//! Byte-level behaviour over plain HTTP: Status bodies, discovery documents, watch framing.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_lab::apiserver::ApiServerOptions;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);

struct Reply {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn request_bytes(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = raw.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        raw = &rest[n + 2..];
    }
}

async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&request_bytes(addr, method, path, headers, body))
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let code = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        code,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_status_objects_byte_for_byte() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let addr = server.addr();
    let r = http(
        addr,
        "GET",
        "/api/v1/namespaces/default/configmaps/nope",
        &[],
        "",
    )
    .await;
    assert_eq!(r.code, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body,
        r#"{"apiVersion":"v1","code":404,"details":{"group":"","kind":"configmaps","name":"nope"},"kind":"Status","message":"configmaps \"nope\" not found","metadata":{},"reason":"NotFound","status":"Failure"}"#
    );

    let lease = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"l1"},"spec":{"holderIdentity":"a"}}"#;
    let path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let created = http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        lease,
    )
    .await;
    assert_eq!(created.code, 201);
    let created = created.json();
    assert_eq!(created["metadata"]["namespace"], "kube-node-lease");
    let again = http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        lease,
    )
    .await;
    assert_eq!(again.code, 409);
    assert_eq!(
        again.body,
        r#"{"apiVersion":"v1","code":409,"details":{"group":"coordination.k8s.io","kind":"leases","name":"l1"},"kind":"Status","message":"leases.coordination.k8s.io \"l1\" already exists","metadata":{},"reason":"AlreadyExists","status":"Failure"}"#
    );
    let stale = lease.replace(r#""name":"l1""#, r#""name":"l1","resourceVersion":"1""#);
    let conflict = http(
        addr,
        "PUT",
        &format!("{path}/l1"),
        &[("Content-Type", "application/json")],
        &stale,
    )
    .await;
    assert_eq!(conflict.code, 409);
    assert_eq!(
        conflict.body,
        r#"{"apiVersion":"v1","code":409,"details":{"group":"coordination.k8s.io","kind":"leases","name":"l1"},"kind":"Status","message":"Operation cannot be fulfilled on leases.coordination.k8s.io \"l1\": the object has been modified; please apply your changes to the latest version and try again","metadata":{},"reason":"Conflict","status":"Failure"}"#
    );
    let invalid = http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        r#"{"metadata":{"name":"Bad_Name"}}"#,
    )
    .await;
    assert_eq!(invalid.code, 422);
    assert_eq!(invalid.json()["reason"], "Invalid");
    let no_ns = http(
        addr,
        "POST",
        "/api/v1/namespaces/missing/configmaps",
        &[],
        r#"{"metadata":{"name":"x"}}"#,
    )
    .await;
    assert_eq!(
        (no_ns.code, no_ns.json()["message"].clone()),
        (404, json!("namespaces \"missing\" not found"))
    );
    let proto = http(
        addr,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        &[("Content-Type", "application/vnd.kubernetes.protobuf")],
        "k8s\0",
    )
    .await;
    assert_eq!(
        (proto.code, proto.json()["reason"].clone()),
        (415, json!("UnsupportedMediaType"))
    );
    let bad_patch = http(
        addr,
        "PATCH",
        &format!("{path}/l1"),
        &[("Content-Type", "text/plain")],
        "{}",
    )
    .await;
    assert_eq!(bad_patch.code, 415);
    let dry = http(addr, "DELETE", &format!("{path}/l1?dryRun=All"), &[], "").await;
    assert_eq!(
        (dry.code, dry.json()["reason"].clone()),
        (400, json!("BadRequest"))
    );
    // Nothing of the rejected requests changed the lease.
    let now = http(addr, "GET", &format!("{path}/l1"), &[], "")
        .await
        .json();
    assert_eq!(
        now["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_documents() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let addr = server.addr();
    // kubectl asks for aggregated discovery first but accepts plain JSON; we answer plain.
    let aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    let api = http(addr, "GET", "/api", &[("Accept", aggregated)], "").await;
    assert_eq!(api.header("content-type"), Some("application/json"));
    assert_eq!(api.json()["kind"], "APIVersions");
    assert_eq!(api.json()["versions"], json!(["v1"]));
    let apis = http(addr, "GET", "/apis", &[("Accept", aggregated)], "")
        .await
        .json();
    assert_eq!(apis["kind"], "APIGroupList");
    let groups: Vec<&str> = apis["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for g in [
        "discovery.k8s.io",
        "coordination.k8s.io",
        "apiextensions.k8s.io",
    ] {
        assert!(groups.contains(&g), "{g} in {groups:?}");
    }
    let v1 = http(addr, "GET", "/api/v1", &[], "").await.json();
    let pods = v1["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods")
        .unwrap();
    assert_eq!(
        *pods,
        json!({"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
               "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
               "shortNames": ["po"], "categories": ["all"]})
    );
    assert!(
        v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "pods/status")
    );
    let es = http(addr, "GET", "/apis/discovery.k8s.io/v1", &[], "")
        .await
        .json();
    assert_eq!(es["groupVersion"], "discovery.k8s.io/v1");
    assert_eq!(es["resources"][0]["kind"], "EndpointSlice");
    let version = http(addr, "GET", "/version", &[], "").await.json();
    assert_eq!(
        (version["major"].as_str(), version["minor"].as_str()),
        (Some("1"), Some("32"))
    );
    // Protobuf-only Accept is refused; protobuf-then-JSON gets JSON.
    assert_eq!(
        http(
            addr,
            "GET",
            "/api/v1/pods",
            &[("Accept", "application/vnd.kubernetes.protobuf")],
            ""
        )
        .await
        .code,
        406
    );
    let both = http(
        addr,
        "GET",
        "/api/v1/pods",
        &[(
            "Accept",
            "application/vnd.kubernetes.protobuf,application/json",
        )],
        "",
    )
    .await;
    assert_eq!(
        (both.code, both.json()["kind"].clone()),
        (200, json!("PodList"))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_body_in_kube_apiservers_field_order() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let addr = server.addr();
    for (name, tier) in [("a", "web"), ("b", "db")] {
        let cm = format!(
            r#"{{"metadata":{{"name":"{name}","labels":{{"tier":"{tier}"}}}},"data":{{"k":"v"}}}}"#
        );
        let created = http(
            addr,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &[],
            &cm,
        )
        .await;
        assert_eq!(created.code, 201, "{}", created.body);
    }
    let list = http(
        addr,
        "GET",
        "/api/v1/namespaces/default/configmaps?labelSelector=tier%3Dweb",
        &[],
        "",
    )
    .await;
    assert_eq!(list.code, 200, "{}", list.body);
    // The list's kind and apiVersion, its metadata, then the items, each with
    // its kind and apiVersion first: as kube-apiserver encodes its Go types.
    assert!(
        list.body.starts_with(
            r#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":""#
        ),
        "{}",
        list.body
    );
    assert!(
        list.body.contains(
            r#""items":[{"kind":"ConfigMap","apiVersion":"v1","data":{"k":"v"},"metadata":{"#
        ),
        "{}",
        list.body
    );
    let items = list.json()["items"].clone();
    let names: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stream_framing_bookmarks_and_timeout() {
    let server = common::start(ApiServerOptions {
        bookmark_interval: Duration::from_millis(200),
        ..ApiServerOptions::without_controllers()
    })
    .await;
    let addr = server.addr();
    let list = http(
        addr,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        &[],
        "",
    )
    .await
    .json();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let path = format!(
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2"
    );
    stream
        .write_all(&request_bytes(addr, "GET", &path, &[], ""))
        .await
        .unwrap();
    let cm = r#"{"metadata":{"name":"w"},"data":{"k":"v"}}"#;
    let created = http(
        addr,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        &[],
        cm,
    )
    .await
    .json();
    http(
        addr,
        "DELETE",
        "/api/v1/namespaces/default/configmaps/w",
        &[],
        "",
    )
    .await;

    // The stream ends by itself after timeoutSeconds.
    let mut raw = String::new();
    tokio::time::timeout(DEADLINE, BufReader::new(stream).read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let body = dechunk(body);
    assert!(body.ends_with('\n'));
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .filter(|t| *t != "BOOKMARK")
        .collect();
    assert_eq!(types, ["ADDED", "DELETED"]);
    assert_eq!(events[0]["object"], created);
    let first_line = body.lines().next().unwrap();
    // One compact line per event, in kube-apiserver's field order: the event's type,
    // then the object with its kind and apiVersion first.
    assert!(
        first_line.starts_with(
            r#"{"type":"ADDED","object":{"kind":"ConfigMap","apiVersion":"v1","data":{"k":"v"},"metadata":"#
        ),
        "{first_line}"
    );
    assert!(first_line.ends_with(r#""}}}"#), "{first_line}");
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .expect("a bookmark within 2s");
    assert_eq!(bookmark["object"]["kind"], "ConfigMap");
    assert_eq!(bookmark["object"]["apiVersion"], "v1");
    assert!(
        bookmark["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= rv.parse::<u64>().unwrap()
    );

    // A watch from a compacted resourceVersion: 200 and one ERROR event with a 410 Status.
    server.store().compact();
    let gone = http(
        addr,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}"),
        &[],
        "",
    )
    .await;
    assert_eq!(gone.code, 200);
    let line: Value = serde_json::from_str(gone.body.lines().next().unwrap()).unwrap();
    assert_eq!(line["type"], "ERROR");
    assert_eq!(line["object"]["code"], 410);
    assert_eq!(line["object"]["reason"], "Expired");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_watchers_all_see_every_event_in_order() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let addr = server.addr();
    let mut readers = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&request_bytes(
            addr,
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=3",
            &[],
            "",
        ))
        .await
        .unwrap();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(s).lines();
            let mut names = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(i) = line.find(r#""name":"cm-"#) {
                    let rest = &line[i + 8..];
                    names.push(rest[..rest.find('"').unwrap()].to_string());
                }
            }
            names
        }));
    }
    // Every watcher has received its (empty) initial state once a later event reaches it; we
    // give the watches a moment to be registered by waiting for the server to see them all.
    common::eventually("50 watchers registered", DEADLINE, || async {
        (server.store().subscriber_count() >= 50).then_some(())
    })
    .await;
    for i in 0..20 {
        http(
            addr,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &[],
            &format!(r#"{{"metadata":{{"name":"cm-{i:02}"}}}}"#),
        )
        .await;
    }
    let want: Vec<String> = (0..20).map(|i| format!("cm-{i:02}")).collect();
    for r in readers {
        assert_eq!(
            tokio::time::timeout(DEADLINE, r).await.unwrap().unwrap(),
            want
        );
    }
    server.shutdown().await;
}
