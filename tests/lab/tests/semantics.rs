//! Object lifecycle semantics through a kube-rs client: finalizers, owner references,
//! generation, namespace termination, deletecollection, custom resources with /status.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::json;
use switchyard_lab::apiserver::ApiServerOptions;

const DEADLINE: Duration = Duration::from_secs(10);

fn cm(v: serde_json::Value) -> ConfigMap {
    serde_json::from_value(v).unwrap()
}

fn api_err<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_until_removed() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    api.create(
        &PostParams::default(),
        &cm(json!({"metadata": {"name": "f", "finalizers": ["lab/keep"]}})),
    )
    .await
    .unwrap();
    api.delete("f", &DeleteParams::default()).await.unwrap();
    let held = api.get("f").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    // Removing the last finalizer completes the deletion.
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_err(api.get("f").await), (404, "NotFound".into()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_objects_are_garbage_collected_with_their_owner() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    let owner = api
        .create(
            &PostParams::default(),
            &cm(json!({"metadata": {"name": "owner"}})),
        )
        .await
        .unwrap();
    let uid = owner.metadata.uid.unwrap();
    api.create(
        &PostParams::default(),
        &cm(json!({"metadata": {"name": "owned", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
        ]}})),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &cm(json!({"metadata": {"name": "bystander"}})),
    )
    .await
    .unwrap();
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_err(api.get("owned").await), (404, "NotFound".into()));
    assert!(api.get("bystander").await.is_ok());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_counts_spec_changes_only() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    let c = api
        .create(
            &PostParams::default(),
            &cm(json!({"metadata": {"name": "g"}, "data": {"a": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(c.metadata.generation, Some(1));
    let rv0: u64 = c.metadata.resource_version.unwrap().parse().unwrap();
    let c = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(c.metadata.generation, Some(1));
    let c = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(c.metadata.generation, Some(2));
    let rv2: u64 = c
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv0);
    // A patch that changes nothing does not bump the resourceVersion.
    let same = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(same.metadata.resource_version, c.metadata.resource_version);
    // JSON patch with a failing test op is 422 and changes nothing.
    let failed = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([{"op": "test", "path": "/data/a", "value": "9"}]))
                    .unwrap(),
            ),
        )
        .await;
    assert_eq!(api_err(failed), (422, "Invalid".into()));
    assert_eq!(
        api.get("g").await.unwrap().metadata.resource_version,
        c.metadata.resource_version
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_terminates_it_then_removes_its_objects() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let client = common::client(&server);
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    cms.create(
        &PostParams::default(),
        &cm(json!({"metadata": {"name": "inside"}})),
    )
    .await
    .unwrap();
    nss.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let ns = nss.get("doomed").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert_eq!(
        api_err(
            cms.create(
                &PostParams::default(),
                &cm(json!({"metadata": {"name": "late"}}))
            )
            .await
        ),
        (403, "Forbidden".into())
    );
    common::eventually("namespace and contents gone", DEADLINE, || {
        let (nss, cms) = (nss.clone(), cms.clone());
        async move {
            let gone = nss.get_opt("doomed").await.unwrap().is_none();
            let empty = Api::<ConfigMap>::all(cms.clone().into_client())
                .list(&ListParams::default().fields("metadata.namespace=doomed"))
                .await
                .unwrap()
                .items
                .is_empty();
            (gone && empty).then_some(())
        }
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collection_honours_the_label_selector() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let api: Api<ConfigMap> = Api::namespaced(common::client(&server), "default");
    for (n, app) in [("a", "x"), ("b", "x"), ("c", "y")] {
        api.create(
            &PostParams::default(),
            &cm(json!({"metadata": {"name": n, "labels": {"app": app}}})),
        )
        .await
        .unwrap();
    }
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=x"),
    )
    .await
    .unwrap();
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["c"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_with_status_subresource() {
    let server = common::start(ApiServerOptions::without_controllers()).await;
    let client = common::client(&server);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "segments.switchyard.io"},
        "spec": {
            "group": "switchyard.io", "scope": "Namespaced",
            "names": {"plural": "segments", "singular": "segment", "kind": "Segment"},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}}}]
        }
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let bad: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "wrong-name"},
        "spec": {"group": "switchyard.io", "scope": "Namespaced",
            "names": {"plural": "things", "kind": "Thing"},
            "versions": [{"name": "v1", "served": true, "storage": true}]}
    }))
    .unwrap();
    assert_eq!(
        api_err(crds.create(&PostParams::default(), &bad).await).0,
        422
    );

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("switchyard.io", "v1alpha1", "Segment"),
        "segments",
    );
    let segs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "switchyard.io/v1alpha1", "kind": "Segment",
        "metadata": {"name": "blue"}, "spec": {"vlan": 100}, "status": {"ready": true}
    }))
    .unwrap();
    let created = segs.create(&PostParams::default(), &obj).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status is ignored on create"
    );
    assert_eq!(created.data["spec"]["vlan"], 100);
    let s = segs
        .patch_status(
            "blue",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}, "spec": {"vlan": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"]["ready"], true);
    assert_eq!(s.data["spec"]["vlan"], 100);
    // Strategic merge patch is not defined for custom resources.
    let smp = segs
        .patch(
            "blue",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"vlan": 7}})),
        )
        .await;
    assert_eq!(api_err(smp).0, 415);

    crds.delete("segments.switchyard.io", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_err(segs.get("blue").await).0, 404);
    server.shutdown().await;
}
