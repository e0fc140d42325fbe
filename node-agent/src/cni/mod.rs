//! The CNI layer: [`CniServer`] answers the `switchyard` binary's requests
//! on the agent's socket, one file per verb. This module is the edge: it
//! resolves what a request names ([`attachment_key`], [`pod_identity`]),
//! gives each request its tracing span and metrics, and maps every
//! [`AttachError`] to its CNI error code in one place
//! (`impl From<AttachError> for CniError`).

mod add;
mod check;
mod del;
pub(crate) use del::run_queued_dels;
mod gc;
mod status;

use std::sync::Arc;
use std::time::Instant;

use switchyard_cni::{CniError, CniHandler, CniRequest, CniResult, ErrorCode};
use tracing::Instrument;

use crate::attach_error::AttachError;
use crate::ipam::{AttachmentKey, IpamError};
use crate::state::NodeState;
use crate::vlan_pool::ClusterIpamError;

/// The CNI verbs on top of the node's [`NodeState`].
#[derive(Debug)]
pub(crate) struct CniServer(pub Arc<NodeState>);

impl CniHandler for CniServer {
    async fn add(&self, req: CniRequest) -> Result<CniResult, CniError> {
        let started = Instant::now();
        let span = request_span(&req);
        let out = add::add(&self.0, &req)
            .instrument(span.clone())
            .await
            .map_err(CniError::from);
        span.in_scope(|| tracing::debug!(elapsed = ?started.elapsed(), "ADD handled"));
        self.0.metrics.record_add(&out, started.elapsed());
        out
    }

    async fn del(&self, req: CniRequest) -> Result<(), CniError> {
        let started = Instant::now();
        let span = request_span(&req);
        let out = del::del(&self.0, &req)
            .instrument(span.clone())
            .await
            .map_err(CniError::from);
        span.in_scope(|| tracing::debug!(elapsed = ?started.elapsed(), "DEL handled"));
        self.0.metrics.record_del(&out, started.elapsed());
        out
    }

    async fn check(&self, req: CniRequest) -> Result<(), CniError> {
        check::check(&self.0, &req)
            .instrument(request_span(&req))
            .await
            .map_err(CniError::from)
    }

    async fn status(&self, req: CniRequest) -> Result<(), CniError> {
        let _span = request_span(&req).entered();
        status::status(&self.0).map_err(CniError::from)
    }

    async fn gc(&self, req: CniRequest) -> Result<(), CniError> {
        gc::gc(&self.0, &req)
            .instrument(request_span(&req))
            .await
            .map_err(CniError::from)
    }
}

/// The span of a request: every log line of its handling carries `verb`,
/// `namespace`, `pod`, `container_id` and `ifname` (empty when not given).
fn request_span(req: &CniRequest) -> tracing::Span {
    let container_id = req.env.container_id.as_deref().unwrap_or("");
    let ifname = req.env.ifname.as_deref().unwrap_or("");
    let namespace = req.env.args.k8s_pod_namespace.as_deref().unwrap_or("");
    let pod = req.env.args.k8s_pod_name.as_deref().unwrap_or("");
    tracing::info_span!("cni", verb = ?req.verb, namespace, pod, container_id, ifname)
}

/// The attachment a request names (CNI_CONTAINERID and CNI_IFNAME, which
/// `verb` needs).
fn attachment_key(req: &CniRequest, verb: &'static str) -> Result<AttachmentKey, AttachError> {
    let (container_id, ifname) = req
        .attachment()
        .ok_or(AttachError::MissingAttachment { verb })?;
    Ok(AttachmentKey::new(container_id, ifname))
}

fn valid_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// The pod a request is for (K8S_POD_NAMESPACE and K8S_POD_NAME); `None`
/// when the runtime names no pod namespace (a standalone attachment: podman,
/// nerdctl, any libcni program; podman's CNI backend sends K8S_POD_NAME set
/// to the container's name, and no namespace), an error when it names a
/// namespace without a pod.
fn pod_identity(req: &CniRequest) -> Result<Option<(String, String)>, AttachError> {
    let args = &req.env.args;
    let (ns, name) = match (&args.k8s_pod_namespace, &args.k8s_pod_name) {
        (None, _) => return Ok(None),
        (Some(ns), Some(name)) => (ns, name),
        (Some(_), None) => return Err(AttachError::MissingPodIdentity),
    };
    for (arg, v) in [("K8S_POD_NAMESPACE", ns), ("K8S_POD_NAME", name)] {
        if !valid_k8s_name(v) {
            return Err(AttachError::InvalidPodIdentity {
                arg,
                value: v.clone(),
            });
        }
    }
    Ok(Some((ns.clone(), name.clone())))
}

/// The one mapping from the verbs' errors to CNI error codes and messages.
impl From<AttachError> for CniError {
    fn from(e: AttachError) -> CniError {
        use AttachError as E;
        use ErrorCode as C;
        let (code, msg, details): (ErrorCode, String, String) = match e {
            E::NotReady => (
                C::TryAgainLater,
                "switchyard-agent is not ready".into(),
                "the agent is still starting (bridge, flows, reconciliation); retry".into(),
            ),
            E::OvsUnreachable => (
                C::TryAgainLater,
                "Open vSwitch is not reachable right now".into(),
                "the agent is reconnecting to ovsdb-server or ovs-vswitchd; retry".into(),
            ),
            E::MissingAttachment { verb } => (
                C::InvalidEnvironmentVariables,
                "CNI_CONTAINERID and CNI_IFNAME are required".into(),
                format!("{verb} needs CNI_CONTAINERID and CNI_IFNAME"),
            ),
            E::MissingPodIdentity => (
                C::InvalidPodNetworkRequest,
                "pod identity missing".into(),
                "CNI_ARGS names K8S_POD_NAMESPACE without K8S_POD_NAME (kubelet always sends both; a container that is no pod sends no K8S_POD_NAMESPACE)"
                    .into(),
            ),
            E::InvalidPodIdentity { arg, value } => (
                C::InvalidPodNetworkRequest,
                format!("{arg}={value:?} is not a Kubernetes name"),
                "use lowercase letters, digits, '-' and '.', at most 253 characters".into(),
            ),
            E::NetnsRequired => (
                C::InvalidEnvironmentVariables,
                "CNI_NETNS is required".into(),
                "ADD needs CNI_NETNS".into(),
            ),
            E::Netns(e) => (
                C::InterfaceFailure,
                "unusable network namespace".into(),
                e.to_string(),
            ),
            E::PodNotFound { namespace, name } => (
                C::ApiServerFailure,
                format!("pod {namespace}/{name} not found"),
                "the API server has no such pod (deleted while its sandbox was created?)".into(),
            ),
            E::ReadPod(e) => (
                C::ApiServerFailure,
                "cannot read the pod from the API server".into(),
                e.to_string(),
            ),
            E::ReadNamespace(e) => (
                C::ApiServerFailure,
                "cannot read the pod's namespace from the API server".into(),
                e.to_string(),
            ),
            E::Placement(e @ crate::segment::SegmentError::NetworkNotReady { .. }) => (
                C::TryAgainLater,
                "pod network not ready".into(),
                e.to_string(),
            ),
            E::Placement(e @ crate::segment::SegmentError::PlacementRefused { .. }) => (
                C::InvalidPodNetworkRequest,
                "pod placement refused: the namespace decides the segment and VLAN".into(),
                e.to_string(),
            ),
            E::Placement(e) => (
                C::InvalidPodNetworkRequest,
                "invalid pod network request".into(),
                e.to_string(),
            ),
            E::ClusterAddress(e) => match &e.source {
                ClusterIpamError::Ipam(IpamError::Exhausted { .. }) => {
                    (C::IpPoolExhausted, "IP pool exhausted".into(), e.to_string())
                }
                ClusterIpamError::Ipam(_) => (
                    C::InvalidPodNetworkRequest,
                    "requested address unusable".into(),
                    e.to_string(),
                ),
                other => (
                    C::ApiServerFailure,
                    "cluster-wide address allocation failed".into(),
                    other.to_string(),
                ),
            },
            E::NoPool { segment } => (
                C::InvalidPodNetworkRequest,
                format!("segment {segment} has no address pool"),
                "configure subnet and gateway for the segment".into(),
            ),
            E::Address(e @ IpamError::Exhausted { .. }) => {
                (C::IpPoolExhausted, "IP pool exhausted".into(), e.to_string())
            }
            E::Address(e) => (
                C::InvalidPodNetworkRequest,
                "requested address unusable".into(),
                e.to_string(),
            ),
            E::CreateInterface(e) => (
                C::InterfaceFailure,
                "creating the pod interface failed".into(),
                e.to_string(),
            ),
            E::DeleteInterface(e) => (
                C::InterfaceFailure,
                "deleting the pod's veth failed".into(),
                e.to_string(),
            ),
            E::Ovsdb { what, source } => (C::OvsFailure, format!("{what} failed"), source.to_string()),
            E::OpenFlow { what, source } => {
                (C::OvsFailure, format!("{what} failed"), source.to_string())
            }
            E::CheckFailed { differences } => (
                C::CheckFailed,
                "attachment differs from its record".into(),
                differences.join("; "),
            ),
            E::GcIncomplete { failures } => {
                // The first failure's code; every failure in the details.
                let details = failures
                    .iter()
                    .map(|(k, e)| format!("{k}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let code = failures
                    .into_iter()
                    .next()
                    .map_or(C::AgentInternal.code(), |(_, e)| CniError::from(e).code);
                return CniError {
                    code,
                    ..CniError::new(
                        C::AgentInternal,
                        "GC could not remove every attachment; it removed the others",
                        details,
                    )
                };
            }
            E::Unavailable { problems } => (
                C::PluginNotAvailable,
                "switchyard-agent cannot serve ADD".into(),
                problems.join("; "),
            ),
        };
        CniError::new(code, msg, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_cni::{CniEnv, NetworkConfig, Verb};

    #[test]
    fn attachment_key_needs_container_id_and_ifname() {
        let mut env = CniEnv {
            container_id: Some("c1".into()),
            ..CniEnv::default()
        };
        let req = |env: &CniEnv| {
            CniRequest::new(
                Verb::Del,
                env.clone(),
                NetworkConfig::default(),
                String::new(),
            )
        };
        let err = CniError::from(attachment_key(&req(&env), "DEL").unwrap_err());
        assert_eq!(err.code, ErrorCode::InvalidEnvironmentVariables as u32);
        assert_eq!(err.msg, "CNI_CONTAINERID and CNI_IFNAME are required");
        assert_eq!(err.details, "DEL needs CNI_CONTAINERID and CNI_IFNAME");
        env.ifname = Some("eth0".into());
        assert_eq!(
            attachment_key(&req(&env), "DEL").unwrap(),
            AttachmentKey::new("c1", "eth0")
        );
    }
}

#[cfg(test)]
mod verb_tests;

#[cfg(test)]
mod span_tests {
    use std::sync::{Arc, Mutex};

    use switchyard_cni::{CniEnv, CniHandler, CniRequest, Command, Verb, parse_config};

    use super::CniServer;
    use crate::drivers::fake::FakeNode;
    use crate::state::NodeState;

    /// A `Write` into a shared buffer, for a test subscriber.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    std::thread_local! {
        /// Where this thread's log lines go (nowhere when unset).
        static CAPTURE: std::cell::RefCell<Option<Buffer>> = const { std::cell::RefCell::new(None) };
    }

    /// Writes into the current thread's [`CAPTURE`], or discards.
    #[derive(Clone, Default)]
    struct ThreadCapture;

    impl std::io::Write for ThreadCapture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            CAPTURE.with(|c| match c.borrow_mut().as_mut() {
                Some(b) => b.write(buf),
                None => Ok(buf.len()),
            })
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Captures this thread's log lines (JSON, as `--log-format json` writes
    /// them) into the returned buffer. The subscriber is the test binary's
    /// global one, enabled for every level: a subscriber set per thread
    /// (`set_default`) loses the events of a callsite that another test's
    /// thread registers at the same moment (its interest is cached as
    /// "never"), which made this test fail under load.
    fn capture_this_thread() -> Buffer {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_max_level(tracing::Level::TRACE)
                .with_writer(|| ThreadCapture)
                .finish();
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        let buffer = Buffer::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(buffer.clone()));
        buffer
    }

    /// Every log line of an ADD and a DEL (JSON, as `--log-format json`
    /// writes them) carries the request's namespace, pod and container id.
    #[tokio::test(flavor = "current_thread")]
    async fn every_log_line_of_a_request_carries_its_pod() {
        let buffer = capture_this_thread();

        let fake = FakeNode::default();
        let state = Arc::new(NodeState::for_tests(fake.drivers(), None));
        fake.world().netns.insert("/var/run/netns/c1".into());
        let server = CniServer(state);
        let config = parse_config(
            br#"{"cniVersion":"1.1.0","name":"switchyard","type":"switchyard",
                 "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"}}}"#,
        )
        .unwrap();
        for (command, verb) in [(Command::Add, Verb::Add), (Command::Del, Verb::Del)] {
            let env = CniEnv::from_lookup(command, |name| {
                Some(
                    match name {
                        "CNI_CONTAINERID" => "c1",
                        "CNI_NETNS" => "/var/run/netns/c1",
                        "CNI_IFNAME" => "eth0",
                        "CNI_ARGS" => "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1",
                        "CNI_PATH" => "/opt/cni/bin",
                        _ => return None,
                    }
                    .to_string(),
                )
            })
            .unwrap();
            let req = CniRequest::new(verb, env, config.clone(), String::new());
            let _ = match verb {
                Verb::Add => server.add(req).await.map(|_| ()),
                _ => server.del(req).await,
            };
        }
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 2, "{text}");
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let span = &v["span"];
            assert_eq!(span["name"], "cni", "{line}");
            assert_eq!(span["namespace"], "default", "{line}");
            assert_eq!(span["pod"], "web-1", "{line}");
            assert_eq!(span["container_id"], "c1", "{line}");
        }
    }
}
