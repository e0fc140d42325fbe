#!/bin/bash
# Smoke test, run on the last node provisioned: every node Ready, the
# Switchyard DaemonSet rolled out, a server pod and a client pod on every node,
# every client pod reaching every server pod by its pod IP (on other nodes
# through the agents' Geneve/VXLAN overlay), and the server Service's
# ClusterIP answering from every client pod.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /vagrant/vagrant/lib.sh

if [ -f /etc/kubernetes/admin.conf ]; then
    export KUBECONFIG=/etc/kubernetes/admin.conf
else
    fetch_shared admin.conf /var/tmp/switchyard-admin.conf
    export KUBECONFIG=/var/tmp/switchyard-admin.conf
fi
ns=switchyard-smoke

log "waiting for nodes and the Switchyard DaemonSet"
kubectl wait --for=condition=Ready nodes --all --timeout=600s
kubectl -n switchyard-system rollout status daemonset/switchyard-node --timeout=600s

kubectl apply -f /vagrant/vagrant/smoke.yaml
kubectl -n "$ns" rollout status daemonset/echo --timeout=300s
kubectl -n "$ns" rollout status daemonset/client --timeout=300s

nodes=$(kubectl get nodes -o name | wc -l)
clients=$(kubectl -n "$ns" get pods -l app=client -o name | wc -l)
[ "$clients" -eq "$nodes" ] || die "$clients client pods for $nodes nodes"
vip=$(kubectl -n "$ns" get service echo -o jsonpath='{.spec.clusterIP}')

failed=0
# Pod to pod, on the same node and across nodes (the overlay).
servers=$(kubectl -n "$ns" get pods -l app=echo \
    -o jsonpath='{range .items[*]}{.metadata.name}={.status.podIP}@{.spec.nodeName}{"\n"}{end}')
for pod in $(kubectl -n "$ns" get pods -l app=client -o jsonpath='{.items[*].metadata.name}'); do
    node=$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.spec.nodeName}')
    for server in $servers; do
        name=${server%%=*}
        address=${server#*=}
        ip=${address%@*}
        if answer=$(retry 5 3 kubectl -n "$ns" exec "$pod" -- wget -qO- -T 5 "http://$ip:8080/hostname") &&
            [ "$answer" = "$name" ]; then
            log "client on $node -> $name ($ip on ${address#*@}): answered"
        else
            log "client on $node -> $name ($ip on ${address#*@}): NO ANSWER (${answer:-nothing})"
            failed=$((failed + 1))
        fi
    done
done
[ "$failed" -eq 0 ] || die "$failed pod-to-pod checks failed (docs/troubleshooting.md)"

# The ClusterIP.
for pod in $(kubectl -n "$ns" get pods -l app=client -o jsonpath='{.items[*].metadata.name}'); do
    node=$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.spec.nodeName}')
    if answer=$(retry 10 3 kubectl -n "$ns" exec "$pod" -- wget -qO- -T 5 "http://$vip/hostname"); then
        log "client on $node -> $vip: answered by $answer"
    else
        log "client on $node -> $vip: NO ANSWER"
        failed=$((failed + 1))
    fi
done
[ "$failed" -eq 0 ] || die "$failed of $clients clients could not reach the ClusterIP $vip (docs/troubleshooting.md)"
log "smoke test passed: $clients nodes, every pod reaches every pod, ClusterIP $vip reachable from all"
