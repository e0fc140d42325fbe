//! What the controller reads from a Service and writes into its status.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use switchyard_api::{
    ANNOTATION_LB_IPS, ANNOTATION_POOL, ANNOTATION_SHARED, LB_CLASS, LB_FINALIZER,
};

use crate::allocator::SvcRequest;

/// Condition type: whether the Service has its address(es).
pub const COND_ASSIGNED: &str = "switchyard.io/AddressAssigned";
/// Condition type: whether its addresses are announced (Route mode: routed).
pub const COND_ANNOUNCED: &str = "switchyard.io/Announced";

/// `namespace/name`.
pub fn key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether the Service is `type: LoadBalancer`.
pub fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// Whether Switchyard serves the Service's class (unset or `switchyard.io/lb`).
pub fn is_ours(svc: &Service) -> bool {
    match svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_class.as_deref())
    {
        None => true,
        Some(class) => class == LB_CLASS,
    }
}

/// Whether the Service is being deleted.
pub fn is_deleting(svc: &Service) -> bool {
    svc.metadata.deletion_timestamp.is_some()
}

/// Whether it carries the cleanup finalizer.
pub fn has_finalizer(svc: &Service) -> bool {
    svc.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == LB_FINALIZER))
}

/// Adds (`true`) or removes the finalizer.
pub fn set_finalizer(svc: &mut Service, on: bool) {
    let f = svc.metadata.finalizers.get_or_insert_with(Vec::new);
    f.retain(|f| f != LB_FINALIZER);
    if on {
        f.push(LB_FINALIZER.to_string());
    }
}

/// Addresses in `status.loadBalancer.ingress` (entries without a parsable `ip` are skipped).
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The Service's request; `Err` names an unparsable requested address.
pub fn request(
    svc: &Service,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<SvcRequest, String> {
    let annotation = |name: &str| svc.metadata.annotations.as_ref().and_then(|a| a.get(name));
    let spec = svc.spec.as_ref();
    let requested_text = annotation(ANNOTATION_LB_IPS)
        .or(spec.and_then(|s| s.load_balancer_ip.as_ref()))
        .map_or("", String::as_str);
    let mut requested = Vec::new();
    for part in requested_text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        requested.push(
            part.parse::<IpAddr>()
                .map_err(|_| format!("requested address {part:?} is not an IP address"))?,
        );
    }
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
        .collect();
    let ipv6 = spec
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
        .is_some_and(|f| f == "IPv6");
    Ok(SvcRequest {
        key: key(svc),
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        namespace_labels: namespace_labels.clone(),
        pool: annotation(ANNOTATION_POOL).cloned(),
        requested,
        share_key: annotation(ANNOTATION_SHARED).cloned(),
        ports,
        ipv6,
    })
}

/// Sets `status.loadBalancer.ingress` to `ips`.
pub fn set_ingress(svc: &mut Service, ips: &[IpAddr]) {
    let status = svc.status.get_or_insert_with(Default::default);
    status.load_balancer = Some(LoadBalancerStatus {
        ingress: (!ips.is_empty()).then(|| {
            ips.iter()
                .map(|ip| LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ip_mode: Some("VIP".into()),
                    ..Default::default()
                })
                .collect()
        }),
    });
}

/// The condition of `type_`, if present.
pub fn condition<'a>(svc: &'a Service, type_: &str) -> Option<&'a Condition> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Sets a condition; the transition time changes only when the status does.
pub fn set_condition(svc: &mut Service, type_: &str, ok: bool, reason: &str, message: &str) {
    let generation = svc.metadata.generation;
    let status = if ok { "True" } else { "False" };
    let conditions = svc
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new);
    let time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: time,
        observed_generation: generation,
    });
}

/// Removes a condition.
pub fn clear_condition(svc: &mut Service, type_: &str) {
    if let Some(c) = svc.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        c.retain(|c| c.type_ != type_);
        if c.is_empty() {
            svc.status
                .as_mut()
                .unwrap_or_else(|| unreachable!())
                .conditions = None;
        }
    }
}

/// The resourceVersion as a number, to order two copies of one object (etcd's and the lab's
/// resourceVersions are increasing integers); unparsable ones order first.
pub fn rv(svc: &Service) -> u64 {
    svc.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_classes() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "annotations": {
                "switchyard.io/load-balancer-ips": "192.0.2.1, 192.0.2.2",
                "switchyard.io/allow-shared-ip": "k"}},
            "spec": {"type": "LoadBalancer", "loadBalancerIP": "192.0.2.9",
                     "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let r = request(&svc, &BTreeMap::new()).unwrap();
        assert_eq!(r.key, "ns/web");
        assert_eq!(
            r.requested.len(),
            2,
            "the annotation wins over loadBalancerIP"
        );
        assert_eq!(r.share_key.as_deref(), Some("k"));
        assert!(r.ports.contains(&("UDP".to_string(), 53)));
        assert!(is_ours(&svc) && is_load_balancer(&svc));
        let mut other = svc.clone();
        other.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        assert!(!is_ours(&other));
        let mut bad = svc.clone();
        bad.metadata.annotations = None;
        bad.spec.as_mut().unwrap().load_balancer_ip = Some("nope".into());
        assert!(request(&bad, &BTreeMap::new()).is_err());
    }

    #[test]
    fn conditions_keep_their_transition_time_while_the_status_holds() {
        let mut svc = Service::default();
        set_condition(&mut svc, COND_ASSIGNED, false, "PoolExhausted", "a");
        let t = condition(&svc, COND_ASSIGNED)
            .unwrap()
            .last_transition_time
            .clone();
        set_condition(&mut svc, COND_ASSIGNED, false, "AddressTaken", "b");
        let c = condition(&svc, COND_ASSIGNED).unwrap();
        assert_eq!(
            (c.reason.as_str(), &c.last_transition_time),
            ("AddressTaken", &t)
        );
        set_ingress(&mut svc, &["192.0.2.1".parse().unwrap()]);
        assert_eq!(ingress_ips(&svc), ["192.0.2.1".parse::<IpAddr>().unwrap()]);
        clear_condition(&mut svc, COND_ASSIGNED);
        assert!(condition(&svc, COND_ASSIGNED).is_none());
    }
}
