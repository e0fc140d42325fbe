//! The watch loop over scripted watch streams: gating on the initial lists,
//! coalescing of bursts, relists, shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::{UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use switchyard_proxy::fixtures::{endpoint, service, slice};
use switchyard_proxy::watch::run;
use switchyard_proxy::{
    GroupIdAllocator, Protocol, ServicePortName, Update, WatchConfig, WatchError,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

type ServiceEvents = UnboundedSender<Result<Event<Service>, watcher::Error>>;
type SliceEvents = UnboundedSender<Result<Event<EndpointSlice>, watcher::Error>>;

/// Upper bound for waiting on an update; far above the 10 ms debounce.
const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    services: ServiceEvents,
    slices: SliceEvents,
    updates: mpsc::Receiver<Update>,
    task: JoinHandle<Result<(), WatchError>>,
}

fn start() -> Harness {
    let (services, service_stream) = unbounded();
    let (slices, slice_stream) = unbounded();
    let (tx, updates) = mpsc::channel(16);
    let config = WatchConfig {
        node_name: "node-a".to_owned(),
        debounce: Duration::from_millis(10),
        node: Default::default(),
        frontends: None,
    };
    let groups = Arc::new(Mutex::new(GroupIdAllocator::new()));
    let task = tokio::spawn(run(service_stream, slice_stream, config, groups, tx));
    Harness {
        services,
        slices,
        updates,
        task,
    }
}

impl Harness {
    fn service(&self, event: Event<Service>) {
        self.services.unbounded_send(Ok(event)).expect("loop alive");
    }

    fn slice(&self, event: Event<EndpointSlice>) {
        self.slices.unbounded_send(Ok(event)).expect("loop alive");
    }

    fn list_services(&self, items: Vec<Service>) {
        self.service(Event::Init);
        for item in items {
            self.service(Event::InitApply(item));
        }
        self.service(Event::InitDone);
    }

    fn list_slices(&self, items: Vec<EndpointSlice>) {
        self.slice(Event::Init);
        for item in items {
            self.slice(Event::InitApply(item));
        }
        self.slice(Event::InitDone);
    }

    async fn next_update(&mut self) -> Update {
        tokio::time::timeout(WAIT, self.updates.recv())
            .await
            .expect("an update within the deadline")
            .expect("loop still running")
    }

    /// Ends the input streams and returns every update still queued.
    async fn finish(mut self) -> Vec<Update> {
        drop(self.services);
        drop(self.slices);
        let result = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("loop ends")
            .expect("no panic");
        assert!(
            matches!(result, Err(WatchError::StreamEnded(_))),
            "{result:?}"
        );
        let mut rest = Vec::new();
        while let Some(update) = self.updates.recv().await {
            rest.push(update);
        }
        rest
    }
}

fn web_service() -> Service {
    service("default", "web")
        .cluster_ip("10.96.0.20")
        .tcp("http", 80)
        .build()
}

fn web_slice(hosts: u8) -> EndpointSlice {
    let mut builder = slice("default", "web-1", "web").tcp("http", 8080);
    for host in 1..=hosts {
        builder = builder.endpoint(endpoint(&format!("10.0.0.{host}")));
    }
    builder.build()
}

fn web_port() -> ServicePortName {
    ServicePortName::new("default", "web", "http", Protocol::Tcp)
}

fn web_endpoint_count(update: &Update) -> Option<usize> {
    update.state.get(&web_port()).map(|s| s.endpoints.len())
}

/// On a paused clock: the runtime runs the loop until it is idle (every event
/// sent handled) before the clock moves, so the windows below are exact.
#[tokio::test(start_paused = true)]
async fn first_update_waits_for_both_initial_lists() {
    let ten_windows = Duration::from_millis(100);
    let mut h = start();
    h.list_services(vec![web_service()]);
    h.slice(Event::Init);
    h.slice(Event::InitApply(web_slice(2)));
    // Ten debounce windows with only the Service list complete: nothing may
    // be sent (it would install the Service with no endpoints: reject).
    let early = tokio::time::timeout(ten_windows, h.updates.recv()).await;
    assert!(
        early.is_err(),
        "update before the slice list was complete: {early:?}"
    );
    h.slice(Event::InitDone);

    // The same window is long enough for an update once both lists are in.
    let first = tokio::time::timeout(ten_windows, h.updates.recv())
        .await
        .expect("an update within ten debounce windows of the slice list")
        .expect("loop still running");
    assert_eq!(first.generation, 1);
    assert_eq!(web_endpoint_count(&first), Some(2));
    assert_eq!(first.changes.added.len(), 1);
    assert_eq!(first.changes.added[0].group_id, 1);
    assert!(h.finish().await.is_empty());
}

#[tokio::test]
async fn a_burst_becomes_one_update() {
    let mut h = start();
    h.list_services(vec![web_service()]);
    h.list_slices(vec![web_slice(1)]);
    assert_eq!(web_endpoint_count(&h.next_update().await), Some(1));

    // Scale 1 -> 20 one endpoint at a time, plus an affinity change.
    for hosts in 2..=20 {
        h.slice(Event::Apply(web_slice(hosts)));
    }
    h.service(Event::Apply(
        service("default", "web")
            .cluster_ip("10.96.0.20")
            .tcp("http", 80)
            .client_ip_affinity(None)
            .build(),
    ));
    let update = h.next_update().await;
    assert_eq!(update.generation, 2);
    assert_eq!(web_endpoint_count(&update), Some(20));
    assert_eq!(update.changes.changed.len(), 1);
    let change = &update.changes.changed[0];
    assert!(change.frontend_changed && change.endpoints_changed);
    assert_eq!(change.old.endpoints.len(), 1);
    assert!(
        h.finish().await.is_empty(),
        "the burst gave a second update"
    );
}

#[tokio::test]
async fn relist_drops_objects_deleted_while_disconnected() {
    let mut h = start();
    let db = service("default", "db")
        .cluster_ip("10.96.0.30")
        .udp("dns", 53)
        .build();
    let db_slice = slice("default", "db-1", "db")
        .udp("dns", 5353)
        .endpoint(endpoint("10.0.1.1"))
        .build();
    h.list_services(vec![web_service(), db.clone()]);
    h.list_slices(vec![web_slice(1), db_slice]);
    assert_eq!(h.next_update().await.state.len(), 2);

    // The watch restarted; db and its slice are gone from the new lists.
    h.list_services(vec![web_service()]);
    h.list_slices(vec![web_slice(1)]);
    let update = h.next_update().await;
    let removed: Vec<String> = update
        .changes
        .removed
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    assert_eq!(removed, ["default/db:dns/UDP"]);
    let stale: Vec<String> = update
        .changes
        .stale_udp_endpoints
        .iter()
        .map(|s| format!("{}:{}", s.endpoint_ip, s.endpoint_port))
        .collect();
    assert_eq!(stale, ["10.0.1.1:5353"]);
    assert!(update.changes.changed.is_empty() && update.changes.added.is_empty());
    assert!(h.finish().await.is_empty());
}

#[tokio::test]
async fn a_first_list_that_starts_over_drops_what_the_new_one_leaves_out() {
    let mut h = start();
    let db = service("default", "db")
        .cluster_ip("10.96.0.30")
        .tcp("sql", 5432)
        .build();
    // The first Service list breaks off after db (the watcher starts the
    // list again); db was deleted in between.
    h.service(Event::Init);
    h.service(Event::InitApply(db));
    h.list_services(vec![web_service()]);
    h.list_slices(vec![web_slice(1)]);
    let first = h.next_update().await;
    let names: Vec<String> = first.state.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names, ["default/web:http/TCP"]);
    assert!(h.finish().await.is_empty());
}

#[tokio::test]
async fn dropping_the_receiver_stops_the_loop() {
    let h = start();
    h.list_services(vec![web_service()]);
    h.list_slices(vec![web_slice(1)]);
    drop(h.updates);
    let result = tokio::time::timeout(WAIT, h.task)
        .await
        .expect("loop ends")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn watch_errors_do_not_stop_the_loop() {
    let mut h = start();
    h.services
        .unbounded_send(Err(watcher::Error::NoResourceVersion))
        .expect("loop alive");
    h.list_services(vec![web_service()]);
    h.slices
        .unbounded_send(Err(watcher::Error::NoResourceVersion))
        .expect("loop alive");
    h.list_slices(vec![web_slice(3)]);
    assert_eq!(web_endpoint_count(&h.next_update().await), Some(3));
    assert!(h.finish().await.is_empty());
}
