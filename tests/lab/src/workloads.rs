//! In-process Deployment and ReplicaSet controllers, as kube-controller-manager runs them, so
//! `kubectl create deployment`, `kubectl scale` and `kubectl rollout restart|status` work
//! against the lab.
//!
//! - **Deployment**: one ReplicaSet per pod template, named `<deployment>-<pod-template-hash>`
//!   (label `pod-template-hash` on it, its selector and its pods; annotation
//!   `deployment.kubernetes.io/revision`). `RollingUpdate` (the default) honours `maxSurge`
//!   and `maxUnavailable` (integers or percentages of `replicas`, 25 % each by default; surge
//!   rounds up, unavailable down, both 0 means 1 unavailable) and counts only Ready pods as
//!   available, so a rollout waits for readiness: the total never exceeds
//!   `replicas + maxSurge` and the Ready pods never drop below `replicas - maxUnavailable`.
//!   `Recreate` scales the old ReplicaSets to 0 and starts the new one once their pods are
//!   gone. Status: `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`,
//!   `unavailableReplicas`, `observedGeneration` and the `Available` and `Progressing`
//!   conditions that `kubectl rollout status` reads. ReplicaSets with 0 replicas beyond
//!   `revisionHistoryLimit` (default 10) are deleted.
//! - **ReplicaSet**: creates pods from its template (`generateName: <rs>-`, owned by it) or
//!   deletes the surplus (unscheduled, then not Ready, then the newest first); terminating
//!   pods are not counted. Status: `replicas`, `readyReplicas`, `availableReplicas`,
//!   `fullyLabeledReplicas`, `observedGeneration`.
//!
//! Not done: `minReadySeconds` (Ready is available at once), `paused`,
//! `progressDeadlineSeconds` (never `ProgressDeadlineExceeded`), adoption of orphan pods,
//! `matchExpressions` in selectors (only `matchLabels` select). Deleting a Deployment
//! removes its ReplicaSets and their pods (the store's garbage collection, and this
//! controller for what is left over).

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::apiserver::Store;
use crate::apiserver::resources::ResourceType;
use crate::apiserver::selector::LabelSelector;
use crate::apiserver::store::DeleteOptions;

/// Label of the pod template's hash on ReplicaSets and pods.
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotation of the revision on ReplicaSets and Deployments.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

const INTERESTS: [(&str, &str); 3] = [
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("", "pods"),
];

/// Starts both controllers: a pass at start and after each batch of changes to Deployments,
/// ReplicaSets or pods.
pub fn start(store: &Arc<Store>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let store = Arc::clone(store);
    let mut events = store.subscribe();
    tokio::spawn(async move {
        let relevant = |g: &str, r: &str| INTERESTS.iter().any(|(ig, ir)| *ig == g && *ir == r);
        reconcile(&store);
        loop {
            let mut dirty = tokio::select! {
                _ = shutdown.wait_for(|v| *v) => return,
                r = events.recv() => match r {
                    Ok(e) => relevant(&e.key.group, &e.key.resource),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            loop {
                match events.try_recv() {
                    Ok(e) => dirty |= relevant(&e.key.group, &e.key.resource),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => dirty = true,
                    Err(_) => break,
                }
            }
            if dirty {
                reconcile(&store);
            }
        }
    })
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn int(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn owned_by<'a>(objects: &'a [Value], uid: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| {
        o.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| {
                refs.iter().any(|r| {
                    r["uid"].as_str() == Some(uid) && r["controller"].as_bool() == Some(true)
                })
            })
    })
}

fn controller_uid(o: &Value, kind: &str) -> Option<String> {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["kind"] == kind && r["controller"].as_bool() == Some(true))
        .and_then(|r| r["uid"].as_str())
        .map(str::to_string)
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn terminating(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

/// The hash of a pod template (FNV-1a of its JSON, in the letters kube-controller-manager's
/// safe encoding uses).
pub fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut out = String::new();
    for _ in 0..10 {
        out.push(char::from(ALPHABET[(h % ALPHABET.len() as u64) as usize]));
        h /= ALPHABET.len() as u64;
    }
    out
}

/// `maxSurge`/`maxUnavailable` against `replicas`: an integer, or a percentage rounded up
/// (surge) or down (unavailable).
pub fn resolve_int_or_percent(
    v: Option<&Value>,
    default: &str,
    replicas: i64,
    round_up: bool,
) -> i64 {
    let v = v.cloned().unwrap_or_else(|| json!(default));
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0).max(0),
        Value::String(p) => {
            let Some(pct) = p.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) else {
                return p.parse::<i64>().unwrap_or(0).max(0);
            };
            let x = replicas * pct;
            (if round_up { (x + 99) / 100 } else { x / 100 }).max(0)
        }
        _ => 0,
    }
}

/// Runs one pass of both controllers.
pub fn reconcile(store: &Arc<Store>) {
    let (Some(deploy_rt), Some(rs_rt), Some(pod_rt)) = (
        store.resource_type("apps", "v1", "deployments"),
        store.resource_type("apps", "v1", "replicasets"),
        store.resource_type("", "v1", "pods"),
    ) else {
        return;
    };
    let deployments = store.objects_of("apps", "deployments");
    let replicasets = store.objects_of("apps", "replicasets");
    let pods = store.objects_of("", "pods");
    for d in &deployments {
        if !terminating(d) {
            reconcile_deployment(store, &rs_rt, &deploy_rt, d, &replicasets, &pods);
        }
    }
    // Fresh: the pass above may have changed replica counts.
    let replicasets = store.objects_of("apps", "replicasets");
    for rs in &replicasets {
        if !terminating(rs) {
            reconcile_replicaset(store, &rs_rt, &pod_rt, rs, &pods);
        }
    }
    // What the owner left behind (an owner deleted while this pass was creating).
    let uid_of = |o: &Value| s(o, "/metadata/uid").to_string();
    let deploy_uids: Vec<String> = deployments.iter().map(uid_of).collect();
    for rs in &replicasets {
        if let Some(owner) = controller_uid(rs, "Deployment")
            && !deploy_uids.contains(&owner)
        {
            delete(store, &rs_rt, rs);
        }
    }
    let rs_uids: Vec<String> = replicasets.iter().map(uid_of).collect();
    for pod in &pods {
        if let Some(owner) = controller_uid(pod, "ReplicaSet")
            && !rs_uids.contains(&owner)
            && !terminating(pod)
        {
            delete_pod_gracefully(store, &pod_rt, pod);
        }
    }
}

fn delete(store: &Store, rt: &ResourceType, o: &Value) {
    let (ns, name) = (s(o, "/metadata/namespace"), s(o, "/metadata/name"));
    let opts = DeleteOptions {
        precondition_uid: Some(s(o, "/metadata/uid").to_string()),
        ..DeleteOptions::default()
    };
    if let Err(e) = store.delete_unscheduled(rt, ns, name, &opts) {
        tracing::debug!(kind = %rt.kind, %ns, %name, error = %e, "delete");
    }
}

fn merge_patch(store: &Store, rt: &ResourceType, o: &Value, patch: &Value, status: bool) {
    let (ns, name) = (s(o, "/metadata/namespace"), s(o, "/metadata/name"));
    if let Err(e) = store.patch(
        rt,
        ns,
        name,
        "application/merge-patch+json",
        patch.to_string().as_bytes(),
        status,
    ) {
        tracing::debug!(kind = %rt.kind, %ns, %name, error = %e, "patch");
    }
}

/// Per ReplicaSet: (object, spec replicas, live pods, ready pods).
struct RsState<'a> {
    rs: &'a Value,
    spec: i64,
    pods: i64,
    ready: i64,
}

fn reconcile_deployment(
    store: &Store,
    rs_rt: &ResourceType,
    deploy_rt: &ResourceType,
    d: &Value,
    replicasets: &[Value],
    pods: &[Value],
) {
    let ns = s(d, "/metadata/namespace");
    let name = s(d, "/metadata/name");
    let uid = s(d, "/metadata/uid");
    let replicas = int(d, "/spec/replicas").unwrap_or(1).max(0);
    let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    let mut states: Vec<RsState> = owned_by(replicasets, uid)
        .filter(|rs| !terminating(rs))
        .map(|rs| {
            let rs_uid = s(rs, "/metadata/uid");
            let live: Vec<&Value> = owned_by(pods, rs_uid).filter(|p| !terminating(p)).collect();
            RsState {
                rs,
                spec: int(rs, "/spec/replicas").unwrap_or(0),
                pods: live.len() as i64,
                ready: live.iter().filter(|p| ready(p)).count() as i64,
            }
        })
        .collect();
    // Oldest first (scale-down order).
    states.sort_by_key(|st| s(st.rs, "/metadata/creationTimestamp").to_string());
    let revision = |rs: &Value| {
        s(
            rs,
            &format!("/metadata/annotations/{}", REVISION.replace('/', "~1")),
        )
        .parse::<i64>()
        .unwrap_or(0)
    };
    let max_revision = states.iter().map(|st| revision(st.rs)).max().unwrap_or(0);
    let new_idx = states
        .iter()
        .position(|st| s(st.rs, &format!("/metadata/labels/{HASH_LABEL}")) == hash);
    let recreate = s(d, "/spec/strategy/type") == "Recreate";
    let surge = if recreate {
        0
    } else {
        resolve_int_or_percent(
            d.pointer("/spec/strategy/rollingUpdate/maxSurge"),
            "25%",
            replicas,
            true,
        )
    };
    let mut unavailable = if recreate {
        0
    } else {
        resolve_int_or_percent(
            d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
            "25%",
            replicas,
            false,
        )
    };
    if surge == 0 && unavailable == 0 && !recreate {
        unavailable = 1;
    }
    let old_total: i64 = states
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, st)| st.spec)
        .sum();
    let old_pods: i64 = states
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, st)| st.pods)
        .sum();
    let new_spec_now = new_idx.map_or(0, |i| states[i].spec);
    // The new ReplicaSet's size.
    let new_spec = if recreate {
        if old_total > 0 || old_pods > 0 {
            0
        } else {
            replicas
        }
    } else if new_spec_now > replicas {
        replicas
    } else {
        let room = replicas + surge - (old_total + new_spec_now);
        new_spec_now + room.clamp(0, replicas - new_spec_now)
    };
    let new_rs_name = format!("{name}-{hash}");
    match new_idx {
        Some(i) => {
            if states[i].spec != new_spec {
                merge_patch(
                    store,
                    rs_rt,
                    states[i].rs,
                    &json!({"spec": {"replicas": new_spec}}),
                    false,
                );
            }
        }
        None => {
            let mut labels = template
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            labels[HASH_LABEL] = json!(hash);
            let mut tmpl = template.clone();
            tmpl["metadata"]["labels"] = labels.clone();
            let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            selector["matchLabels"][HASH_LABEL] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": new_rs_name, "namespace": ns, "labels": labels,
                    "annotations": {REVISION: (max_revision + 1).to_string()},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                        "uid": uid, "controller": true, "blockOwnerDeletion": true}]
                },
                "spec": {"replicas": new_spec, "selector": selector, "template": tmpl}
            });
            match store.create(rs_rt, Some(ns), rs) {
                Ok(_) => {
                    tracing::info!(deployment = %format!("{ns}/{name}"), replicaset = %new_rs_name, "new ReplicaSet")
                }
                Err(e) => {
                    tracing::warn!(deployment = %format!("{ns}/{name}"), error = %e, "creating the ReplicaSet failed")
                }
            }
        }
    }
    // Old ReplicaSets down, keeping `replicas - maxUnavailable` Ready pods.
    let new_ready = new_idx.map_or(0, |i| states[i].ready);
    if recreate {
        for (i, st) in states.iter().enumerate() {
            if Some(i) != new_idx && st.spec > 0 {
                merge_patch(
                    store,
                    rs_rt,
                    st.rs,
                    &json!({"spec": {"replicas": 0}}),
                    false,
                );
            }
        }
    } else {
        let min_available = replicas - unavailable;
        let all_spec = old_total + new_spec;
        let new_unavailable = (new_spec - new_ready).max(0);
        let mut budget = all_spec - min_available - new_unavailable;
        let mut sizes: Vec<i64> = states.iter().map(|st| st.spec).collect();
        // First the old pods that are not Ready: removing them costs no availability.
        for (i, st) in states.iter().enumerate() {
            if Some(i) == new_idx || budget <= 0 {
                continue;
            }
            let unhealthy = (st.spec - st.ready).clamp(0, budget);
            sizes[i] -= unhealthy;
            budget -= unhealthy;
        }
        // Then Ready ones, as far as the Ready total allows.
        let total_ready: i64 = states.iter().map(|st| st.ready).sum();
        let mut can_remove = (total_ready - min_available).max(0);
        for (i, size) in sizes.iter_mut().enumerate() {
            if Some(i) == new_idx || can_remove <= 0 {
                continue;
            }
            let n = (*size).clamp(0, can_remove);
            *size -= n;
            can_remove -= n;
        }
        for (i, st) in states.iter().enumerate() {
            if Some(i) != new_idx && sizes[i] != st.spec {
                merge_patch(
                    store,
                    rs_rt,
                    st.rs,
                    &json!({"spec": {"replicas": sizes[i]}}),
                    false,
                );
            }
        }
    }
    // History: empty old ReplicaSets beyond revisionHistoryLimit go, oldest first.
    let limit = int(d, "/spec/revisionHistoryLimit").unwrap_or(10).max(0) as usize;
    let empty_old: Vec<&RsState> = states
        .iter()
        .enumerate()
        .filter(|(i, st)| Some(*i) != new_idx && st.spec == 0 && st.pods == 0)
        .map(|(_, st)| st)
        .collect();
    if empty_old.len() > limit {
        for st in &empty_old[..empty_old.len() - limit] {
            delete(store, rs_rt, st.rs);
        }
    }
    // Status.
    let total_pods: i64 = states.iter().map(|st| st.pods).sum();
    let total_ready: i64 = states.iter().map(|st| st.ready).sum();
    let updated = new_idx.map_or(0, |i| states[i].pods);
    let complete = updated == replicas && total_pods == replicas && new_ready == replicas;
    let available_ok = total_ready >= replicas - unavailable;
    let now = crate::apiserver::time::format_rfc3339(crate::apiserver::time::now_unix());
    let old_conditions = d
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let condition = |t: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let prior = old_conditions.iter().find(|c| c["type"] == t);
        let same = prior.is_some_and(|c| c["status"] == status && c["reason"] == reason);
        let stamp = |k: &str| match prior {
            Some(c) if same => c[k].clone(),
            _ => json!(now),
        };
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastUpdateTime": stamp("lastUpdateTime"), "lastTransitionTime": stamp("lastTransitionTime")})
    };
    let progressing = if complete {
        condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_rs_name}\" has successfully progressed."),
        )
    } else {
        condition(
            "Progressing",
            true,
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_rs_name}\" is progressing."),
        )
    };
    let available = if available_ok {
        condition(
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        condition(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let mut status = json!({
        "observedGeneration": int(d, "/metadata/generation").unwrap_or(1),
        "replicas": total_pods,
        "updatedReplicas": updated,
        "readyReplicas": total_ready,
        "availableReplicas": total_ready,
        "conditions": [available, progressing],
    });
    let unavailable_now = (replicas - total_ready).max(0);
    if unavailable_now > 0 {
        status["unavailableReplicas"] = json!(unavailable_now);
    }
    if d.get("status") != Some(&status) {
        // A full replacement of status (merge patch would keep stale keys such as
        // unavailableReplicas): null what is gone.
        let mut patch_status = status.clone();
        if let Some(old) = d.get("status").and_then(Value::as_object) {
            for k in old.keys() {
                if patch_status.get(k).is_none() {
                    patch_status[k] = Value::Null;
                }
            }
        }
        merge_patch(store, deploy_rt, d, &json!({"status": patch_status}), true);
    }
    let revision_now = new_idx.map_or(max_revision + 1, |i| revision(states[i].rs));
    let annotation = format!("/metadata/annotations/{}", REVISION.replace('/', "~1"));
    if s(d, &annotation) != revision_now.to_string() {
        merge_patch(
            store,
            deploy_rt,
            d,
            &json!({"metadata": {"annotations": {REVISION: revision_now.to_string()}}}),
            false,
        );
    }
}

/// Order of deletion of surplus pods: unscheduled, not running, not Ready, newest.
fn deletion_rank(p: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    (
        u8::from(p.pointer("/spec/nodeName").is_some()),
        u8::from(s(p, "/status/phase") == "Running"),
        u8::from(ready(p)),
        std::cmp::Reverse(s(p, "/metadata/creationTimestamp").to_string()),
    )
}

fn reconcile_replicaset(
    store: &Arc<Store>,
    rs_rt: &ResourceType,
    pod_rt: &ResourceType,
    rs: &Value,
    pods: &[Value],
) {
    let ns = s(rs, "/metadata/namespace");
    let name = s(rs, "/metadata/name");
    let uid = s(rs, "/metadata/uid");
    let want = int(rs, "/spec/replicas").unwrap_or(1).max(0);
    let mut live: Vec<&Value> = owned_by(pods, uid).filter(|p| !terminating(p)).collect();
    let have = live.len() as i64;
    if have < want {
        let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
        for _ in have..want {
            let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
            metadata["generateName"] = json!(format!("{name}-"));
            metadata["namespace"] = json!(ns);
            metadata["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
                             "spec": template.get("spec").cloned().unwrap_or(json!({}))});
            if let Err(e) = store.create(pod_rt, Some(ns), pod) {
                tracing::warn!(replicaset = %format!("{ns}/{name}"), error = %e, "creating a pod failed");
                break;
            }
        }
    } else if have > want {
        live.sort_by_key(|p| deletion_rank(p));
        for p in live.iter().take((have - want) as usize) {
            delete_pod_gracefully(store, pod_rt, p);
        }
    }
    // Status from the pods as they were at the start of the pass (the next pass sees the rest).
    let selector = rs
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(LabelSelector::from_map)
        .unwrap_or_default();
    let live: Vec<&Value> = owned_by(pods, uid).filter(|p| !terminating(p)).collect();
    let ready_n = live.iter().filter(|p| ready(p)).count();
    let status = json!({
        "replicas": live.len(),
        "fullyLabeledReplicas": live.iter().filter(|p| selector.matches(p)).count(),
        "readyReplicas": ready_n,
        "availableReplicas": ready_n,
        "observedGeneration": int(rs, "/metadata/generation").unwrap_or(1),
    });
    if rs.get("status") != Some(&status) {
        merge_patch(store, rs_rt, rs, &json!({"status": status}), true);
    }
}

/// Deletes a pod as kubectl would (graceful: the runtime driver stops it and completes the
/// deletion); a pod on no node goes at once.
fn delete_pod_gracefully(store: &Arc<Store>, pod_rt: &ResourceType, p: &Value) {
    let (ns, name) = (s(p, "/metadata/namespace"), s(p, "/metadata/name"));
    let opts = DeleteOptions {
        precondition_uid: Some(s(p, "/metadata/uid").to_string()),
        ..DeleteOptions::default()
    };
    if let Err(e) = store.delete(pod_rt, ns, name, &opts) {
        tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "deleting a surplus pod");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_and_unavailable_round_as_kubernetes_does() {
        assert_eq!(resolve_int_or_percent(None, "25%", 3, true), 1);
        assert_eq!(resolve_int_or_percent(None, "25%", 3, false), 0);
        assert_eq!(resolve_int_or_percent(Some(&json!(2)), "25%", 3, false), 2);
        assert_eq!(
            resolve_int_or_percent(Some(&json!("50%")), "25%", 5, true),
            3
        );
        assert_eq!(
            resolve_int_or_percent(Some(&json!("50%")), "25%", 5, false),
            2
        );
    }

    #[test]
    fn template_hash_is_stable_and_changes_with_the_template() {
        let a = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "x", "image": "x"}]}});
        let mut b = a.clone();
        b["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/restartedAt": "now"});
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a).len(), 10);
    }
}
