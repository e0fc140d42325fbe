//! The Switchyard lab.
//!
//! - [`apiserver`]: an in-memory Kubernetes API server (below).
//! - [`cluster`]: the multi-node lab (`switchyard-lab up/down/status/demo`): node namespaces
//!   with their own Open vSwitch, agent and proxy, an underlay, and a runtime driver that runs
//!   pods through the real CNI plugin.
//!
//! # In-memory Kubernetes API server
//!
//! [`apiserver::ApiServer`] serves enough of the Kubernetes API over plain HTTP on loopback
//! for kube-rs clients (kube 5 watchers/reflectors, k8s-openapi 0.29) and the real `kubectl`
//! (1.32) to work unchanged through the kubeconfig from
//! [`apiserver::ApiServerHandle::write_kubeconfig`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use switchyard_lab::apiserver::{ApiServer, ApiServerOptions};
//! let server = ApiServer::start(ApiServerOptions::default()).await?;
//! server.write_kubeconfig(std::path::Path::new("/tmp/lab.kubeconfig"))?;
//! let url = server.url(); // http://127.0.0.1:<port>
//! # let _ = url;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The binary runs the same server in the foreground until SIGINT/SIGTERM, printing its URL
//! on stdout: `switchyard-lab apiserver --port 6443 --kubeconfig /tmp/lab.kubeconfig`
//! (`--port 0` picks a free port; `--no-controllers`, `--service-cidr`, `--cluster-cidr`,
//! `--advertise-address`).
//!
//! ## What is served
//!
//! - Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`.
//!   Aggregated discovery is not implemented: kubectl asks for it with an `Accept` list that
//!   ends in plain `application/json`, and gets the legacy documents, which it uses.
//! - Storage for namespaces, nodes, pods, services, endpoints, configmaps, secrets,
//!   serviceaccounts, events (core and events.k8s.io), endpointslices, leases, daemonsets,
//!   deployments, replicasets, networkpolicies and customresourcedefinitions; creating a CRD serves its
//!   resource (every served version, shared storage) until the CRD is deleted.
//! - create (generateName, uid, creationTimestamp, generation, namespace defaulting and
//!   existence, 409 AlreadyExists), get, list (label and field selectors, `limit`/`continue`),
//!   update (409 Conflict on a stale resourceVersion), patch (merge, JSON, strategic merge with
//!   the core merge keys, server-side apply as create-or-merge), delete (pods honour a grace
//!   period, finalizers keep objects terminating, owner references cascade, namespaces go
//!   Terminating then take their objects with them), deletecollection, `/status`.
//! - Watches from a resourceVersion with a bounded history (`410 Expired` as an ERROR event,
//!   like the real server), selectors (objects leaving a selector are DELETED), bookmarks,
//!   `sendInitialEvents` streaming lists, `timeoutSeconds`; `Table` output for kubectl.
//! - `pods/exec` (WebSocket `v5.channel.k8s.io`/`v4`) and `pods/log` through a
//!   [`apiserver::pods::PodRuntime`] (`ApiServerOptions::pod_runtime`; the netns lab's runs in
//!   the pods' namespaces), the `scale` subresource of Deployments and ReplicaSets, and the
//!   Deployment/ReplicaSet controllers of [`workloads`] (`ApiServerOptions::workload_controllers`).
//! - Errors are `metav1.Status` objects.
//!
//! ## How `kubectl apply` is supported
//!
//! Both flavours work with kubectl's defaults:
//!
//! - Client-side `kubectl apply -f` (and `kubectl create -f`): kubectl 1.32 validates with
//!   `--validate=strict`, which first asks `/openapi/v3` whether the server supports the
//!   `fieldValidation` parameter. The lab serves, per group/version, an OpenAPI v3 document
//!   with one PATCH operation per kind declaring that parameter (no schemas), so kubectl leaves
//!   validation to the server and skips client-side schema validation. `/openapi/v2` is 404, so
//!   kubectl computes apply patches from its compiled-in types: strategic merge patches for
//!   built-in kinds (which the server applies with the core merge keys), JSON merge patches
//!   for custom resources. The server accepts `fieldValidation` but does not check unknown
//!   fields (it has no schemas).
//! - `kubectl apply --server-side`: `application/apply-patch+yaml` creates the object when it
//!   does not exist and otherwise merges the applied configuration into it (strategically for
//!   built-in kinds). Field ownership (`managedFields`) is not tracked, so fields removed from
//!   an applied configuration are not pruned and there are no apply conflicts.
//!
//! As with a real cluster, a CRD and its custom resources cannot be applied from one file on
//! the first run (kubectl resolves every object before creating any): apply the CRD first.
//!
//! ## Limits
//!
//! - Request bodies are JSON or YAML. Protobuf bodies are decoded only for the kinds
//!   kubectl's imperative generators send that way (`kubectl create namespace|configmap|
//!   secret|serviceaccount|service ...`); any other protobuf body gets 415 and changes nothing
//!   (use `kubectl create -f` with a manifest). Responses are always JSON.
//! - `dryRun` is refused with 400 (nothing changes). No authentication or authorization.
//!
//! ## Controllers
//!
//! With [`apiserver::ApiServerOptions::default`]: nodes get `spec.podCIDR`/`podCIDRs` from
//! 10.244.0.0/16 in /24s; Services get a ClusterIP from 10.96.0.0/16 at admission (a
//! requested IP is honoured when free and in range, `None` stays headless) and NodePorts from
//! 30000-32767; the EndpointSlice controller keeps one slice per Service and distinct port set
//! (see [`controllers`]). Pods report readiness through `/status` (the lab runtime's job).
//!
//! Service admission follows kube-apiserver: `externalTrafficPolicy` defaults to `Cluster` for
//! NodePort and LoadBalancer Services (and ClusterIP ones with `externalIPs`) and is refused
//! on others; a LoadBalancer Service with `externalTrafficPolicy: Local` gets a
//! `healthCheckNodePort` from the node port range (a requested one is kept when free, else
//! 422); `allocateLoadBalancerNodePorts` defaults to `true`, and `false` allocates no node
//! ports; requested node ports are checked (range, already allocated). On a type change the
//! fields the new type does not use are cleared when the request left them unchanged
//! (kube-apiserver's `dropTypeDependentFields`): node ports when a Service becomes ClusterIP,
//! the health check node port when the policy becomes `Cluster`, the cluster IP when it
//! becomes ExternalName, `status.loadBalancer` when it stops being a LoadBalancer; what they
//! held is free again. `status` (the load balancer's `ingress`) is written through `/status`
//! only.
//!
//! The server also serves the `default/kubernetes` Service (ClusterIP 10.96.0.1, port 443
//! `https`) with its EndpointSlice and Endpoints `kubernetes` pointing at the advertised
//! address and port ([`apiserver::ApiServerOptions::advertise_address`]), recreated when
//! deleted; [`apiserver::ApiServerOptions::without_controllers`] and
//! `kubernetes_service: false` leave it out (an empty `default` namespace).

pub mod apiserver;
pub mod cluster;
pub mod controllers;
pub mod fabric_api;
pub mod kubeconfig;
pub mod relay;
pub mod workloads;
