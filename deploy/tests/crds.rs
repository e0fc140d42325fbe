//! The CRDs shipped in `deploy/crds/` are the ones generated from the Rust types
//! (`switchyard-api`), and the lab API server serves them.
//!
//! Regenerate: `SWITCHYARD_UPDATE_CRDS=1 cargo test -p switchyard-deploy --test crds`.

mod common;

use common::repo_root;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};

#[test]
fn shipped_crds_equal_the_generated_ones() {
    let dir = repo_root().join("deploy/crds");
    let update = std::env::var_os("SWITCHYARD_UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for (file, text) in switchyard_api::crd_files() {
        let path = dir.join(&file);
        if update {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(file);
        }
    }
    let shipped = std::fs::read_dir(&dir).unwrap().count();
    assert!(
        stale.is_empty(),
        "{stale:?} differ from the types: SWITCHYARD_UPDATE_CRDS=1 cargo test -p switchyard-deploy --test crds"
    );
    assert_eq!(
        shipped,
        switchyard_api::crds().len(),
        "a stale file in deploy/crds"
    );
}

#[tokio::test]
async fn the_lab_api_server_serves_the_shipped_crds() {
    use switchyard_lab::apiserver::{ApiServer, ApiServerOptions};
    let server = ApiServer::start(ApiServerOptions::without_controllers())
        .await
        .unwrap();
    let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, _) in switchyard_api::crd_files() {
        let text = std::fs::read_to_string(repo_root().join("deploy/crds").join(&file)).unwrap();
        let crd: CustomResourceDefinition = serde_norway::from_str(&text).unwrap();
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let pools: Api<switchyard_api::IPPool> = Api::all(client.clone());
    let spec = serde_json::from_value(serde_json::json!({"cidrs": ["192.0.2.0/30"]})).unwrap();
    pools
        .create(
            &PostParams::default(),
            &switchyard_api::IPPool::new("p", spec),
        )
        .await
        .unwrap();
    let mut pool = pools.get("p").await.unwrap();
    pool.status = Some(switchyard_api::IPPoolStatus {
        used: 1,
        free: 3,
        conflicts: vec![],
    });
    pools
        .replace_status("p", &PostParams::default(), &pool)
        .await
        .unwrap();
    assert_eq!(pools.get("p").await.unwrap().status.unwrap().free, 3);
    let targets: Api<switchyard_api::RouteTarget> = Api::all(client.clone());
    assert!(
        targets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    server.shutdown().await;
}
