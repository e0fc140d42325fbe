//! The `SegmentAddress` objects themselves (see the parent module): one
//! request each, bounded in time, to create, read, delete and list them, and
//! what goes into a new one (labels, the Node as owner).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use switchyard_api::{
    LABEL_ADDRESS_NODE, LABEL_ADDRESS_SEGMENT, MANAGED_BY_AGENT, SegmentAddress,
    SegmentAddressSpec, segment_address_name,
};

use super::{ClusterIpamError, ClusterPools, PAGE, REQUEST_TIMEOUT, entry_of};
use crate::ipam::AttachmentKey;

pub(super) async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ClusterIpamError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ClusterIpamError::Api {
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(ClusterIpamError::Timeout(what.to_string())),
    }
}

pub(super) fn api_code(e: &ClusterIpamError) -> Option<u16> {
    match e {
        ClusterIpamError::Api {
            source: kube::Error::Api(s),
            ..
        } => Some(s.code),
        _ => None,
    }
}

/// A label value for `v` if it is one (a node name may be longer than 63).
pub(super) fn label_value(v: &str) -> Option<String> {
    (v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    .then(|| v.to_string())
}

impl ClusterPools {
    /// The ownerReference to `node`'s Node object; `None` when it does not
    /// exist (or cannot be read: the object is still created, and released
    /// with the node by [`super::release_departed_nodes`]).
    pub(super) async fn owner(&self, node: &str) -> Option<OwnerReference> {
        let cached = (node == self.node)
            .then(|| {
                self.node_uid
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            })
            .flatten();
        let uid = match cached {
            Some(uid) => uid,
            None => {
                let nodes: Api<Node> = Api::all(self.client.clone());
                let read = bounded(&format!("reading Node {node}"), nodes.get_opt(node)).await;
                let uid = read.ok().flatten()?.metadata.uid?;
                if node == self.node {
                    self.set_node_uid(Some(uid.clone()));
                }
                uid
            }
        };
        Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.to_string(),
            uid,
            ..OwnerReference::default()
        })
    }

    /// The allocation object of `ip` in `segment` for `node`'s `key`.
    pub(super) async fn object(
        &self,
        segment: &str,
        ip: Ipv4Addr,
        node: &str,
        key: &AttachmentKey,
    ) -> SegmentAddress {
        let mut obj = SegmentAddress::new(
            &segment_address_name(segment, ip),
            SegmentAddressSpec {
                segment: segment.to_string(),
                address: ip.to_string(),
                node: node.to_string(),
                container_id: key.container_id.clone(),
                interface: key.ifname.clone(),
            },
        );
        let mut labels = BTreeMap::from([
            (
                "app.kubernetes.io/name".to_string(),
                "switchyard".to_string(),
            ),
            (
                "app.kubernetes.io/managed-by".to_string(),
                MANAGED_BY_AGENT.to_string(),
            ),
            (LABEL_ADDRESS_SEGMENT.to_string(), segment.to_string()),
        ]);
        if let Some(n) = label_value(node) {
            labels.insert(LABEL_ADDRESS_NODE.to_string(), n);
        }
        obj.metadata.labels = Some(labels);
        obj.metadata.owner_references = self.owner(node).await.map(|o| vec![o]);
        obj
    }

    /// Creates the object of `ip` for `node`'s `key`: `Ok(true)` when
    /// created, `Ok(false)` when the name exists already (409).
    pub(super) async fn create(
        &self,
        segment: &str,
        ip: Ipv4Addr,
        node: &str,
        key: &AttachmentKey,
    ) -> Result<bool, ClusterIpamError> {
        let addresses: Api<SegmentAddress> = Api::all(self.client.clone());
        let obj = self.object(segment, ip, node, key).await;
        let name = segment_address_name(segment, ip);
        match bounded(
            &format!("creating SegmentAddress {name}"),
            addresses.create(&PostParams::default(), &obj),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(e) if api_code(&e) == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The holder of `ip` in `segment` as the API server has it.
    pub(super) async fn read(
        &self,
        segment: &str,
        ip: Ipv4Addr,
    ) -> Result<Option<SegmentAddress>, ClusterIpamError> {
        let addresses: Api<SegmentAddress> = Api::all(self.client.clone());
        let name = segment_address_name(segment, ip);
        bounded(
            &format!("reading SegmentAddress {name}"),
            addresses.get_opt(&name),
        )
        .await
    }

    /// Deletes `obj` (only that object: its uid is a precondition).
    pub(super) async fn delete(&self, obj: &SegmentAddress) -> Result<(), ClusterIpamError> {
        let addresses: Api<SegmentAddress> = Api::all(self.client.clone());
        let name = obj.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: obj.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match bounded(
            &format!("deleting SegmentAddress {name}"),
            addresses.delete(&name, &dp),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(api_code(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the object of `ip` if `node`'s `key` holds it; whether it did.
    pub(super) async fn delete_if_held(
        &self,
        segment: &str,
        ip: Ipv4Addr,
        key: &AttachmentKey,
    ) -> Result<bool, ClusterIpamError> {
        let Some(obj) = self.read(segment, ip).await? else {
            return Ok(false);
        };
        if entry_of(&obj).is_none_or(|(_, n, k)| n != self.node || k != *key) {
            return Ok(false);
        }
        self.delete(&obj).await?;
        Ok(true)
    }

    /// Every allocation object of `segment`, as the API server has them now.
    pub async fn list(&self, segment: &str) -> Result<Vec<SegmentAddress>, ClusterIpamError> {
        self.list_selected(segment, &format!("{LABEL_ADDRESS_SEGMENT}={segment}"))
            .await
    }

    /// This node's allocation objects of `segment`: a list by the node label too, so that
    /// a DEL after a restart reads this node's objects, not the whole segment's (every
    /// object, filtered here, when the node's name is no label value).
    pub(super) async fn list_own(
        &self,
        segment: &str,
    ) -> Result<Vec<SegmentAddress>, ClusterIpamError> {
        let selector = match label_value(&self.node) {
            Some(node) => format!("{LABEL_ADDRESS_SEGMENT}={segment},{LABEL_ADDRESS_NODE}={node}"),
            None => format!("{LABEL_ADDRESS_SEGMENT}={segment}"),
        };
        let mut objects = self.list_selected(segment, &selector).await?;
        objects.retain(|o| o.spec.node == self.node);
        Ok(objects)
    }

    pub(super) async fn list_selected(
        &self,
        segment: &str,
        selector: &str,
    ) -> Result<Vec<SegmentAddress>, ClusterIpamError> {
        let addresses: Api<SegmentAddress> = Api::all(self.client.clone());
        let mut lp = ListParams::default().labels(selector).limit(PAGE);
        let mut out = Vec::new();
        loop {
            let page = bounded(
                &format!("listing the SegmentAddresses of segment {segment}"),
                addresses.list(&lp),
            )
            .await?;
            out.extend(page.items.into_iter().filter(|o| o.spec.segment == segment));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp.continue_token = Some(c),
                None => return Ok(out),
            }
        }
    }
}
