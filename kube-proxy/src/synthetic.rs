//! Synthetic clusters for benchmarks: many Services with endpoints spread
//! over a few nodes, built with the same builders the tests use.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::fixtures::{endpoint, service, slice};

/// Services `svc-0..count` in `namespace`, each with one TCP port 80 -> 8080,
/// a unique cluster IP from 10.96.0.0/12 and one slice of
/// `endpoints_per_service` ready endpoints from 10.128.0.0/9, spread over
/// nodes `node-0..7`.
pub fn cluster(
    namespace: &str,
    count: u32,
    endpoints_per_service: u32,
) -> (Vec<Service>, Vec<EndpointSlice>) {
    assert!(
        count < 1 << 20,
        "cluster IP range 10.96.0.0/12 holds 2^20 services"
    );
    let mut services = Vec::with_capacity(count as usize);
    let mut slices = Vec::with_capacity(count as usize);
    let mut next_pod: u32 = 0;
    for index in 0..count {
        let name = format!("svc-{index}");
        let vip = std::net::Ipv4Addr::from((10 << 24 | 96 << 16) + index);
        services.push(
            service(namespace, &name)
                .cluster_ip(&vip.to_string())
                .tcp("http", 80)
                .build(),
        );
        let mut builder = slice(namespace, &format!("{name}-0"), &name).tcp("http", 8080);
        for _ in 0..endpoints_per_service {
            let ip = std::net::Ipv4Addr::from((10 << 24 | 128 << 16) + next_pod);
            builder =
                builder.endpoint(endpoint(&ip.to_string()).node(&format!("node-{}", next_pod % 8)));
            next_pod = next_pod.wrapping_add(1);
        }
        slices.push(builder.build());
    }
    (services, slices)
}
