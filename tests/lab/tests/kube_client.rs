//! kube-rs clients (the crates the agent and proxy use) against the lab API server.

mod common;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use switchyard_lab::apiserver::ApiServerOptions;

const STEP: Duration = Duration::from_secs(10);

fn config_map(name: &str, labels: serde_json::Value, data: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"value": data},
    }))
    .expect("valid ConfigMap")
}

async fn next_event<S>(stream: &mut S) -> watcher::Event<ConfigMap>
where
    S: futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(STEP, stream.next())
        .await
        .expect("watcher event within deadline")
        .expect("watcher stream continues")
        .expect("watcher event is not an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_create_update_delete_in_order() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    api.create(
        &PostParams::default(),
        &config_map("before", json!({}), "0"),
    )
    .await
    .unwrap();

    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Init
    ));
    match next_event(&mut stream).await {
        watcher::Event::InitApply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("before")),
        other => panic!("expected InitApply(before), got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitDone
    ));

    let created = api
        .create(&PostParams::default(), &config_map("cm", json!({}), "1"))
        .await
        .unwrap();
    let mut changed = created.clone();
    changed.data = Some([("value".to_string(), "2".to_string())].into());
    let updated = api
        .replace("cm", &PostParams::default(), &changed)
        .await
        .unwrap();
    api.delete("cm", &Default::default()).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        match next_event(&mut stream).await {
            watcher::Event::Apply(cm) => seen.push((
                "apply",
                cm.data.unwrap()["value"].clone(),
                cm.metadata.resource_version.unwrap(),
            )),
            watcher::Event::Delete(cm) => seen.push((
                "delete",
                cm.data.unwrap()["value"].clone(),
                cm.metadata.resource_version.unwrap(),
            )),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen[0].0, "apply");
    assert_eq!(seen[0].1, "1");
    assert_eq!(Some(&seen[0].2), created.metadata.resource_version.as_ref());
    assert_eq!(seen[1].0, "apply");
    assert_eq!(seen[1].1, "2");
    assert_eq!(Some(&seen[1].2), updated.metadata.resource_version.as_ref());
    assert_eq!(seen[2].0, "delete");
    let rvs: Vec<u64> = seen.iter().map(|s| s.2.parse().unwrap()).collect();
    assert!(
        rvs.windows(2).all(|w| w[0] < w[1]),
        "resourceVersions increase: {rvs:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_store_follows_the_server() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().labels("app=web")),
    );
    let task = tokio::spawn(stream.applied_objects().for_each(|_| async {}));

    api.create(
        &PostParams::default(),
        &config_map("web", json!({"app": "web"}), "a"),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &config_map("db", json!({"app": "db"}), "b"),
    )
    .await
    .unwrap();
    common::eventually("reflector has web", STEP, || {
        let r = reader.clone();
        async move {
            r.state()
                .iter()
                .any(|c| c.metadata.name.as_deref() == Some("web"))
                .then_some(())
        }
    })
    .await;
    // Relabelling out of the selector is a DELETED event for this watcher.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    common::eventually("reflector dropped web", STEP, || {
        let r = reader.clone();
        async move { r.state().is_empty().then_some(()) }
    })
    .await;
    assert!(
        reader
            .state()
            .iter()
            .all(|c| c.metadata.name.as_deref() != Some("db"))
    );
    task.abort();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_with_field_selector_sees_only_its_object() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    let mut stream = watcher(
        api.clone(),
        watcher::Config::default().fields("metadata.name=mine"),
    )
    .boxed();
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Init
    ));
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitDone
    ));
    api.create(&PostParams::default(), &config_map("other", json!({}), "1"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &config_map("mine", json!({}), "2"))
        .await
        .unwrap();
    match next_event(&mut stream).await {
        watcher::Event::Apply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("mine")),
        other => panic!("expected Apply(mine), got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_compacted_resource_version_is_410_and_watcher_relists() {
    let server = common::start(ApiServerOptions {
        history_limit: 5,
        ..ApiServerOptions::without_controllers()
    })
    .await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    let first = api
        .create(
            &PostParams::default(),
            &config_map("watched", json!({"app": "web"}), "1"),
        )
        .await
        .unwrap();
    let old_rv = first.metadata.resource_version.clone().unwrap();

    // Short watches without bookmarks: the watcher keeps the rv of the last object it saw.
    let config = watcher::Config::default()
        .labels("app=web")
        .timeout(1)
        .disable_bookmarks();
    let mut stream = watcher(api.clone(), config).boxed();
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Init
    ));
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitApply(_)
    ));
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitDone
    ));

    // Push the watched rv out of the bounded history with changes the watcher does not see.
    for i in 0..10 {
        api.create(
            &PostParams::default(),
            &config_map(&format!("other-{i}"), json!({"app": "db"}), "x"),
        )
        .await
        .unwrap();
    }

    // A raw watch from the old rv gets 200 and one ERROR event with a 410 Status.
    let mut raw = api
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(STEP, raw.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // The watcher's next watch (after its 1s timeout) gets 410 and relists.
    let gone = tokio::time::timeout(STEP, stream.next())
        .await
        .unwrap()
        .unwrap();
    match gone {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 watch error, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Init
    ));
    match next_event(&mut stream).await {
        watcher::Event::InitApply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("watched")),
        other => panic!("expected InitApply(watched), got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitDone
    ));
    // And it keeps watching.
    api.create(
        &PostParams::default(),
        &config_map("later", json!({"app": "web"}), "2"),
    )
    .await
    .unwrap();
    match next_event(&mut stream).await {
        watcher::Event::Apply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("later")),
        other => panic!("expected Apply(later), got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher_gets_initial_events_then_changes() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    api.create(&PostParams::default(), &config_map("a", json!({}), "1"))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Init
    ));
    assert!(
        matches!(next_event(&mut stream).await, watcher::Event::InitApply(cm) if cm.metadata.name.as_deref() == Some("a"))
    );
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitDone
    ));
    api.create(&PostParams::default(), &config_map("b", json!({}), "2"))
        .await
        .unwrap();
    assert!(
        matches!(next_event(&mut stream).await, watcher::Event::Apply(cm) if cm.metadata.name.as_deref() == Some("b"))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_resource_version_update_is_409_conflict() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    let original = api
        .create(&PostParams::default(), &config_map("cm", json!({}), "1"))
        .await
        .unwrap();
    let mut first = original.clone();
    first.data = Some([("value".to_string(), "2".to_string())].into());
    api.replace("cm", &PostParams::default(), &first)
        .await
        .unwrap();

    let mut stale = original.clone();
    stale.data = Some([("value".to_string(), "3".to_string())].into());
    match api.replace("cm", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "Conflict");
            assert!(
                status.message.contains("the object has been modified"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 409 Conflict, got {other:?}"),
    }
    assert_eq!(api.get("cm").await.unwrap().data.unwrap()["value"], "2");

    match api
        .create(&PostParams::default(), &config_map("cm", json!({}), "9"))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(
                (status.code, status.reason.as_str()),
                (409, "AlreadyExists")
            );
        }
        other => panic!("expected 409 AlreadyExists, got {other:?}"),
    }
    match api.get("missing").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
            assert_eq!(status.message, "configmaps \"missing\" not found");
        }
        other => panic!("expected 404 NotFound, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_label_selectors_and_pages() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    for (name, labels) in [
        ("a", json!({"app": "web", "tier": "front"})),
        ("b", json!({"app": "web", "tier": "back"})),
        ("c", json!({"app": "db"})),
        ("d", json!({})),
    ] {
        api.create(&PostParams::default(), &config_map(name, labels, "x"))
            .await
            .unwrap();
    }
    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app=web,tier!=front"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app in (db,web),!tier"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app notin (web)"))
                .await
                .unwrap()
        ),
        ["c", "d"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("tier"))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .unwrap()
        ),
        ["c"]
    );

    let page1 = api.list(&ListParams::default().limit(3)).await.unwrap();
    let token = page1.metadata.continue_.clone().expect("a continue token");
    assert_eq!(names(page1), ["a", "b", "c"]);
    let page2 = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert!(page2.metadata.continue_.as_deref().unwrap_or("").is_empty());
    assert_eq!(names(page2), ["d"]);

    match api.list(&ListParams::default().labels("app in web")).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 400),
        other => panic!("expected 400 for a bad selector, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_field_selector_status_subresource_and_server_side_apply() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let pods: Api<Pod> = Api::namespaced(common::client(&server), "default");
    for (name, node) in [("p1", "node-a"), ("p2", "node-b")] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        let created = pods.create(&PostParams::default(), &pod).await.unwrap();
        // Status in a create is reset by the server, as for real pods.
        assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    }
    let on_a = pods
        .list(&ListParams::default().fields("spec.nodeName=node-a"))
        .await
        .unwrap();
    assert_eq!(on_a.items.len(), 1);
    assert_eq!(on_a.items[0].metadata.name.as_deref(), Some("p1"));

    // The main resource ignores status; /status changes only status.
    let patched = pods
        .patch(
            "p1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Running"}, "metadata": {"labels": {"x": "y"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    assert_eq!(patched.metadata.labels.unwrap()["x"], "y");
    let status = pods
        .patch_status("p1", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.0.5"}, "metadata": {"labels": {"x": "z"}}})))
        .await
        .unwrap();
    assert_eq!(
        status.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    assert_eq!(status.metadata.labels.unwrap()["x"], "y");

    // Server-side apply creates, then updates.
    let ssa = PatchParams::apply("switchyard-test");
    let applied = pods
        .patch(
            "p3",
            &ssa,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p3"},
                "spec": {"containers": [{"name": "c", "image": "one"}]}
            })),
        )
        .await
        .unwrap();
    assert_eq!(
        applied.spec.unwrap().containers[0].image.as_deref(),
        Some("one")
    );
    let applied = pods
        .patch(
            "p3",
            &ssa,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p3"},
                "spec": {"containers": [{"name": "c", "image": "two"}]}
            })),
        )
        .await
        .unwrap();
    assert_eq!(
        applied.spec.unwrap().containers[0].image.as_deref(),
        Some("two")
    );
    assert_eq!(applied.metadata.generation, Some(2));
    server.shutdown().await;
}
