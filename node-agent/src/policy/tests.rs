//! The compiler and the update diff, with plain values and a recording
//! flow sink.

// Flow texts name tables: the pipeline lint reads no `#[cfg(test)]` module.
#[cfg(test)]
mod flows {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    use futures::FutureExt;
    use futures::future::BoxFuture;
    use switchyard_ovs::openflow::{self, FlowMod, FlowModCommand, FlowStats, FlowStatsRequest};

    use crate::drivers::FlowSink;
    use crate::policy::compile::{ConjIds, Inputs, compile};
    use crate::policy::model::{
        Labels, Peer, PodInfo, Policy, PortMatch, PortRule, Proto, Rule, Selector,
    };
    use crate::policy::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(pairs: &[(&str, &str)]) -> Selector {
        Selector {
            labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            expressions: Vec::new(),
        }
    }

    /// Namespaces x, y, z with `ns=<name>`; pods a, b, c in each with
    /// `pod=<name>`, addresses 10.0.<ns>.<pod>; on this node: x/a (ofport 10),
    /// x/b (11), y/a (12).
    struct World {
        pods: BTreeMap<(String, String), PodInfo>,
        namespaces: BTreeMap<String, Labels>,
        local: Vec<LocalPod>,
    }

    fn ip(ns: &str, pod: &str) -> Ipv4Addr {
        let n = |s: &str| match s {
            "x" | "a" => 1,
            "y" | "b" => 2,
            _ => 3,
        };
        Ipv4Addr::new(10, 0, n(ns), n(pod))
    }

    fn world() -> World {
        let mut pods = BTreeMap::new();
        let mut namespaces = BTreeMap::new();
        for ns in ["x", "y", "z"] {
            namespaces.insert(ns.to_string(), labels(&[("ns", ns)]));
            for pod in ["a", "b", "c"] {
                pods.insert(
                    (ns.to_string(), pod.to_string()),
                    PodInfo {
                        labels: labels(&[("pod", pod)]),
                        ip: Some(ip(ns, pod)),
                        named_ports: vec![
                            ("serve-80-tcp".into(), Proto::Tcp, 80),
                            ("serve-81-udp".into(), Proto::Udp, 81),
                        ],
                    },
                );
            }
        }
        let local = [("x", "a", 10), ("x", "b", 11), ("y", "a", 12)]
            .iter()
            .map(|(ns, n, port)| LocalPod {
                namespace: ns.to_string(),
                name: n.to_string(),
                ofport: *port,
                ip: ip(ns, n),
            })
            .collect();
        World {
            pods,
            namespaces,
            local,
        }
    }

    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn run(w: &World, policies: &[Policy], ids: &mut ConjIds) -> Compiled {
        let policies = policies
            .iter()
            .map(|p| ((p.namespace.clone(), p.name.clone()), p.clone()))
            .collect();
        compile(
            Inputs {
                policies: &policies,
                pods: &w.pods,
                namespaces: &w.namespaces,
                local: &w.local,
                gateway_ip: GW,
            },
            ids,
        )
    }

    fn texts(c: &Compiled) -> Vec<String> {
        c.flows
            .values()
            .map(|f| {
                let mut f = f.clone();
                f.cookie = 0;
                f.to_string()
            })
            .collect()
    }

    fn ingress(name: &str, selector: Selector, rules: Vec<Rule>) -> Policy {
        Policy {
            namespace: "x".into(),
            name: name.into(),
            selector,
            ingress: Some(rules),
            egress: None,
        }
    }

    fn pods_peer(pods: Option<Selector>, namespaces: Option<Selector>) -> Peer {
        Peer::Pods { pods, namespaces }
    }

    #[test]
    fn no_policy_no_flows_and_isolation_brings_the_exemptions() {
        assert!(run(&world(), &[], &mut ConjIds::default()).flows.is_empty());
        let c = run(
            &world(),
            &[ingress("deny", Selector::default(), vec![])],
            &mut ConjIds::default(),
        );
        let t = texts(&c);
        for expected in [
            "table=55,priority=220,ip,ct_state=-new+trk actions=goto_table:60",
            "table=55,priority=220,ip,nw_src=10.0.0.1 actions=goto_table:60",
            "table=55,priority=220,ip,nw_src=169.254.169.252 actions=goto_table:60",
        ] {
            assert!(t.contains(&expected.to_string()), "{t:#?}");
        }
        // Nothing isolated for egress: nothing in its table.
        assert!(!t.iter().any(|f| f.starts_with("table=35")));
    }

    #[test]
    fn deny_all_isolates_the_selected_local_pods_only() {
        let c = run(
            &world(),
            &[ingress("deny", Selector::default(), vec![])],
            &mut ConjIds::default(),
        );
        let t = texts(&c);
        // x/a and x/b are in x; y/a is not selected.
        assert!(t.contains(&"table=55,priority=100,ip,reg1=0xa actions=drop".to_string()));
        assert!(t.contains(&"table=55,priority=100,ip,reg1=0xb actions=drop".to_string()));
        assert!(!t.iter().any(|f| f.contains("reg1=0xc")));
        assert_eq!(c.rules.len(), 0);
    }

    #[test]
    fn pod_namespace_and_both_selectors_become_address_sets() {
        let w = world();
        let peers_of = |peer: Peer| {
            let c = run(
                &w,
                &[ingress(
                    "p",
                    sel(&[("pod", "a")]),
                    vec![Rule {
                        peers: vec![peer],
                        ports: vec![],
                    }],
                )],
                &mut ConjIds::default(),
            );
            let mut srcs: Vec<String> = texts(&c)
                .into_iter()
                .filter_map(|f| {
                    f.split(',')
                        .find(|p| p.starts_with("nw_src="))
                        .map(|p| p.split(' ').next().unwrap_or_default().to_string())
                })
                .filter(|s| s != "nw_src=10.0.0.1" && s != "nw_src=169.254.169.252")
                .collect();
            srcs.sort();
            srcs
        };
        // podSelector alone: the policy's namespace.
        assert_eq!(
            peers_of(pods_peer(Some(sel(&[("pod", "b")])), None)),
            ["nw_src=10.0.1.2"]
        );
        // namespaceSelector alone: every pod there.
        assert_eq!(
            peers_of(pods_peer(None, Some(sel(&[("ns", "y")])))),
            ["nw_src=10.0.2.1", "nw_src=10.0.2.2", "nw_src=10.0.2.3"]
        );
        // Both: the pods selected in the namespaces selected.
        assert_eq!(
            peers_of(pods_peer(
                Some(sel(&[("pod", "c")])),
                Some(Selector::default())
            )),
            ["nw_src=10.0.1.3", "nw_src=10.0.2.3", "nw_src=10.0.3.3"]
        );
        // ipBlock with except: disjoint positive prefixes.
        assert_eq!(
            peers_of(Peer::Block {
                cidr: "10.0.2.0/30".parse().unwrap(),
                except: vec!["10.0.2.2/32".parse().unwrap()],
            }),
            ["nw_src=10.0.2.0/31", "nw_src=10.0.2.3"]
        );
    }

    #[test]
    fn a_rule_is_one_conjunction_n_plus_m_plus_p_flows() {
        let w = world();
        let policy = ingress(
            "p",
            Selector::default(),
            vec![Rule {
                peers: vec![pods_peer(None, Some(Selector::default()))],
                ports: vec![
                    PortRule {
                        proto: Proto::Tcp,
                        port: PortMatch::Range(80, 81),
                    },
                    PortRule {
                        proto: Proto::Udp,
                        port: PortMatch::Range(53, 53),
                    },
                    PortRule {
                        proto: Proto::Sctp,
                        port: PortMatch::Any,
                    },
                ],
            }],
        );
        let c = run(&w, &[policy], &mut ConjIds::default());
        let t = texts(&c);
        let conj: Vec<&String> = t.iter().filter(|f| f.contains("conjunction(")).collect();
        // 2 local pods + 9 peers + 3 port matches, and one conj_id flow.
        assert_eq!(conj.len(), 2 + 9 + 3, "{t:#?}");
        assert_eq!(t.iter().filter(|f| f.contains("conj_id=")).count(), 1);
        for expected in [
            "table=55,priority=200,ip,reg1=0xa actions=conjunction(1,1/3)",
            "table=55,priority=200,ip,nw_src=10.0.3.3 actions=conjunction(1,2/3)",
            "table=55,priority=200,tcp,tcp_dst=0x50/0xfffe actions=conjunction(1,3/3)",
            "table=55,priority=200,udp,udp_dst=53 actions=conjunction(1,3/3)",
            "table=55,priority=200,sctp actions=conjunction(1,3/3)",
            "table=55,priority=200,ip,conj_id=1 actions=goto_table:60",
        ] {
            assert!(
                t.contains(&expected.to_string()),
                "{expected} not in {t:#?}"
            );
        }
    }

    #[test]
    fn allow_all_and_egress_use_their_own_matches() {
        let w = world();
        let policy = Policy {
            namespace: "y".into(),
            name: "p".into(),
            selector: Selector::default(),
            ingress: Some(vec![Rule::default()]),
            egress: Some(vec![Rule {
                peers: vec![Peer::Block {
                    cidr: "10.0.0.0/8".parse().unwrap(),
                    except: vec![],
                }],
                ports: vec![],
            }]),
        };
        let t = texts(&run(&w, &[policy], &mut ConjIds::default()));
        for expected in [
            "table=55,priority=201,ip,reg1=0xc actions=goto_table:60",
            "table=35,priority=100,ip,in_port=12 actions=drop",
            "table=35,priority=200,ip,in_port=12 actions=conjunction(2,1/2)",
            "table=35,priority=200,ip,nw_dst=10.0.0.0/8 actions=conjunction(2,2/2)",
            "table=35,priority=200,ip,conj_id=2 actions=goto_table:40",
        ] {
            assert!(
                t.contains(&expected.to_string()),
                "{expected} not in {t:#?}"
            );
        }
    }

    #[test]
    fn named_ports_resolve_per_destination_pod() {
        let mut w = world();
        // x/b serves "serve-80-tcp" on 8080 instead.
        w.pods
            .get_mut(&("x".to_string(), "b".to_string()))
            .unwrap()
            .named_ports[0]
            .2 = 8080;
        let named = |proto, name: &str| PortRule {
            proto,
            port: PortMatch::Named(name.into()),
        };
        let c = run(
            &w,
            &[ingress(
                "p",
                Selector::default(),
                vec![Rule {
                    peers: vec![],
                    ports: vec![named(Proto::Tcp, "serve-80-tcp")],
                }],
            )],
            &mut ConjIds::default(),
        );
        let t = texts(&c);
        assert!(t.contains(&"table=55,priority=200,ip,reg1=0xa actions=conjunction(1,1/2)".into()));
        assert!(
            t.contains(&"table=55,priority=200,tcp,tcp_dst=80 actions=conjunction(1,2/2)".into())
        );
        assert!(t.contains(&"table=55,priority=200,ip,reg1=0xb actions=conjunction(2,1/2)".into()));
        assert!(
            t.contains(&"table=55,priority=200,tcp,tcp_dst=8080 actions=conjunction(2,2/2)".into())
        );
        // Egress: by the peer's port.
        let egress = Policy {
            namespace: "x".into(),
            name: "e".into(),
            selector: sel(&[("pod", "a")]),
            ingress: None,
            egress: Some(vec![Rule {
                peers: vec![pods_peer(Some(Selector::default()), None)],
                ports: vec![named(Proto::Tcp, "serve-80-tcp")],
            }]),
        };
        let t = texts(&run(&w, &[egress], &mut ConjIds::default()));
        assert!(
            t.contains(
                &"table=35,priority=200,ip,nw_dst=10.0.1.2 actions=conjunction(2,2/3)".into()
            ),
            "{t:#?}"
        );
        assert!(
            t.contains(&"table=35,priority=200,tcp,tcp_dst=8080 actions=conjunction(2,3/3)".into())
        );
    }

    #[test]
    fn two_rules_share_clause_flows() {
        let w = world();
        let rule = |pod| Rule {
            peers: vec![pods_peer(Some(sel(&[("pod", pod)])), None)],
            ports: vec![],
        };
        let c = run(
            &w,
            &[
                ingress("one", sel(&[("pod", "a")]), vec![rule("b")]),
                ingress("two", sel(&[("pod", "a")]), vec![rule("c")]),
            ],
            &mut ConjIds::default(),
        );
        let t = texts(&c);
        assert!(
            t.contains(
                &"table=55,priority=200,ip,reg1=0xa actions=conjunction(1,1/2),conjunction(2,1/2)"
                    .into()
            )
        );
        assert_eq!(c.rules.len(), 2);
    }

    /// Records bundles.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<Vec<FlowMod>>>);

    impl FlowSink for Recorder {
        fn is_connected(&self) -> bool {
            true
        }
        fn bundle(&self, mods: Vec<FlowMod>) -> BoxFuture<'_, Result<(), openflow::Error>> {
            self.0.lock().unwrap().push(mods);
            async { Ok(()) }.boxed()
        }
        fn flow_mod(&self, fm: FlowMod) -> BoxFuture<'_, Result<(), openflow::Error>> {
            self.0.lock().unwrap().push(vec![fm]);
            async { Ok(()) }.boxed()
        }
        fn flow_mod_queued(
            &self,
            _fm: FlowMod,
        ) -> Result<crate::drivers::FlowConfirmation, openflow::Error> {
            unreachable!("NetworkPolicy sync queues no flow mods")
        }
        fn dump(
            &self,
            _req: FlowStatsRequest,
        ) -> BoxFuture<'_, Result<Vec<FlowStats>, openflow::Error>> {
            async { Ok(Vec::new()) }.boxed()
        }
    }

    #[tokio::test]
    async fn a_relabel_changes_only_the_affected_address_set_in_one_bundle() {
        let w = world();
        let np = NetworkPolicies::new(None, GW);
        let policy = ingress(
            "p",
            sel(&[("pod", "a")]),
            vec![Rule {
                peers: vec![pods_peer(
                    Some(sel(&[("role", "client")])),
                    Some(Selector::default()),
                )],
                ports: vec![PortRule {
                    proto: Proto::Tcp,
                    port: PortMatch::Range(80, 80),
                }],
            }],
        );
        let mut pods = w.pods.clone();
        pods.get_mut(&("z".into(), "c".into()))
            .unwrap()
            .labels
            .insert("role".into(), "client".into());
        np.set_inputs(vec![policy.clone()], pods.clone(), w.namespaces.clone());
        let sink = Recorder::default();
        let first = np.update(1, &w.local, &sink, None).await.unwrap();
        assert!(first.flow_mods > 0);
        // Nothing changed: nothing sent.
        let again = np.update(1, &w.local, &sink, None).await.unwrap();
        assert_eq!(again.flow_mods, 0);
        assert_eq!(sink.0.lock().unwrap().len(), 1);
        // y/b becomes a client: one clause flow added, in one bundle.
        pods.get_mut(&("y".into(), "b".into()))
            .unwrap()
            .labels
            .insert("role".into(), "client".into());
        np.set_inputs(vec![policy.clone()], pods.clone(), w.namespaces.clone());
        np.update(1, &w.local, &sink, None).await.unwrap();
        let bundles = sink.0.lock().unwrap().clone();
        assert_eq!(bundles.len(), 2);
        let last: Vec<String> = bundles[1].iter().map(ToString::to_string).collect();
        assert_eq!(last.len(), 1, "{last:#?}");
        assert!(last[0].contains("nw_src=10.0.2.2") && last[0].contains("conjunction(1,2/3)"));
        // z/c stops being one: a strict delete of its clause flow.
        pods.get_mut(&("z".into(), "c".into()))
            .unwrap()
            .labels
            .remove("role");
        np.set_inputs(vec![policy], pods, w.namespaces.clone());
        np.update(1, &w.local, &sink, None).await.unwrap();
        let bundles = sink.0.lock().unwrap().clone();
        assert_eq!(bundles[2].len(), 1);
        assert_eq!(bundles[2][0].command, FlowModCommand::DeleteStrict);
        assert!(bundles[2][0].to_string().contains("nw_src=10.0.3.3"));
    }

    #[tokio::test]
    async fn a_full_resync_carries_every_flow_under_the_new_generation() {
        let w = world();
        let np = NetworkPolicies::new(None, GW);
        np.set_inputs(
            vec![ingress("deny", Selector::default(), vec![])],
            w.pods.clone(),
            w.namespaces.clone(),
        );
        let (mods, compiled) = np.full(7, &w.local).await;
        assert_eq!(mods.len(), compiled.flows.len());
        assert!(mods.iter().all(|m| m.command == FlowModCommand::Add
            && switchyard_pipeline::Cookie::from_value(m.flow.cookie).map(|c| c.generation)
                == Some(7)));
        np.resynced(compiled).await;
        // The resync's flows are the installed ones: an update sends nothing.
        let sink = Recorder::default();
        assert_eq!(
            np.update(7, &w.local, &sink, None).await.unwrap().flow_mods,
            0
        );
    }

    #[test]
    fn policies_from_the_api() {
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(
            serde_json::json!({
                "metadata": {"name": "p", "namespace": "x"},
                "spec": {
                    "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                                "ports": [{"port": 80, "endPort": 90}, {"protocol": "UDP", "port": "dns"}]}]
                }
            }),
        )
        .unwrap();
        let p = Policy::from_api(&np).unwrap();
        // policyTypes absent, egress rules present: both directions isolated.
        assert_eq!(p.ingress, Some(vec![]));
        let egress = p.egress.unwrap();
        assert_eq!(
            egress[0].ports,
            vec![
                PortRule {
                    proto: Proto::Tcp,
                    port: PortMatch::Range(80, 90)
                },
                PortRule {
                    proto: Proto::Udp,
                    port: PortMatch::Named("dns".into())
                },
            ]
        );
        assert!(p.selector.matches(&labels(&[("pod", "b")])));
        assert!(!p.selector.matches(&labels(&[("pod", "c")])));
        let bad: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "x"},
                "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}
            }))
            .unwrap();
        assert!(Policy::from_api(&bad).is_err());
    }
}
