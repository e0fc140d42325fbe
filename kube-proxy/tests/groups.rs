//! Ports with more endpoints than one group holds: chained groups, their
//! ids, sizes and the mods that install, change and remove them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use switchyard_ovs::openflow::{Action, Field, GroupMod, GroupModCommand, Message};
use switchyard_proxy::fixtures::{endpoint, service, slice};
use switchyard_proxy::groups::{GroupLayout, MAX_SUB_GROUPS, port_group_of, sub_group_id};
use switchyard_proxy::program::{self, HairpinRefs, SwitchInventory};
use switchyard_proxy::{DesiredState, GroupIdAllocator, build_desired_state, diff};

/// Service `big` (10.96.0.20:80 -> 8080) with `n` endpoints 10.200.x.y.
fn big(n: u32, affinity: bool) -> DesiredState {
    let mut svc = service("default", "big")
        .cluster_ip("10.96.0.20")
        .tcp("http", 80);
    if affinity {
        svc = svc.client_ip_affinity(None);
    }
    let mut s = slice("default", "big-1", "big").tcp("http", 8080);
    for i in 0..n {
        s = s.endpoint(endpoint(&Ipv4Addr::from(0x0ac8_0000 + i).to_string()).node("node-2"));
    }
    build_desired_state([&svc.build()], [&s.build()], "node-1")
}

fn encoded_len(m: &GroupMod) -> usize {
    Message::GroupMod(m.clone()).to_bytes(1).unwrap().len()
}

/// The endpoint addresses a group's buckets DNAT or load to.
fn endpoint_ips(actions: &[Action]) -> Vec<Ipv4Addr> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ct(ct) => ct.nat.as_ref().and_then(|n| match n.addrs {
                Some((std::net::IpAddr::V4(ip), _)) => Some(ip),
                _ => None,
            }),
            Action::SetField(f) if f.field == Field::Reg(3) => {
                Some(Ipv4Addr::from(u32::try_from(f.value).unwrap()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn small_ports_keep_one_group_and_large_ones_chain_equal_sub_groups() {
    let layout = GroupLayout::default();
    for (n, subs) in [
        (1, 0),
        (512, 0),
        (513, 2),
        (1_000, 2),
        (2_000, 4),
        (5_000, 10),
    ] {
        for affinity in [false, true] {
            let state = big(n, affinity);
            let (_, port) = state.iter().next().unwrap();
            let groups = layout.port_groups(7, port);
            assert_eq!(groups.len(), subs + 1, "{n}");
            assert_eq!(
                groups.iter().map(|g| g.group_id).collect::<Vec<_>>(),
                layout.group_ids(7, n as usize),
                "{n}: ids in install order"
            );
            let top = groups.last().unwrap();
            assert_eq!(top.group_id, 7);
            // Every group fits one message, with room to spare.
            for g in &groups {
                let len = encoded_len(&GroupMod::add(g.clone()));
                assert!(len <= 48_000, "{n}: group {} is {len} bytes", g.group_id);
            }
            if subs == 0 {
                assert_eq!(top.buckets.len(), n as usize);
                continue;
            }
            // The port's group chains to each sub-group once.
            let chained: Vec<u32> = top
                .buckets
                .iter()
                .map(|b| match b.actions.as_slice() {
                    [Action::Group(id)] => *id,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(
                chained,
                (0..subs).map(|i| sub_group_id(7, i)).collect::<Vec<_>>()
            );
            // Sub-groups: sizes differ by at most one, every endpoint once,
            // each with its own hash basis.
            let sizes: Vec<usize> = groups[..subs].iter().map(|g| g.buckets.len()).collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "{sizes:?}"
            );
            let ips: BTreeSet<Ipv4Addr> = groups[..subs]
                .iter()
                .flat_map(|g| g.buckets.iter().flat_map(|b| endpoint_ips(&b.actions)))
                .collect();
            assert_eq!(ips.len(), n as usize, "{n} affinity={affinity}");
            let bases: BTreeSet<u64> = groups
                .iter()
                .map(|g| g.selection.as_ref().unwrap().param)
                .collect();
            assert_eq!(bases.len(), subs + 1);
            for g in &groups[..subs] {
                assert_eq!(port_group_of(g.group_id), 7);
                assert!(g.group_id > 0x00ff_ffff);
            }
        }
    }
}

#[test]
fn endpoints_past_the_last_sub_group_are_left_out() {
    let layout = GroupLayout::new(2);
    let state = big(2 * MAX_SUB_GROUPS as u32 + 5, false);
    let (_, port) = state.iter().next().unwrap();
    let groups = layout.port_groups(0x00ff_ffff, port);
    assert_eq!(groups.len(), MAX_SUB_GROUPS + 1);
    // Sub-group 125 is the last; 126 is the cluster-endpoints group and 127
    // the local-endpoints group, the last id of the proxy's range.
    assert_eq!(groups[MAX_SUB_GROUPS - 1].group_id, 0x7dff_ffff);
    assert_eq!(
        switchyard_proxy::groups::cluster_group_id(0x00ff_ffff),
        0x7eff_ffff
    );
    assert_eq!(
        switchyard_proxy::groups::local_group_id(0x00ff_ffff),
        0x7fff_ffff
    );
    let buckets: usize = groups[..MAX_SUB_GROUPS]
        .iter()
        .map(|g| g.buckets.len())
        .sum();
    assert_eq!(buckets, layout.max_endpoints());
}

/// The group mods of a change set from `old` to `new` as (command, id).
fn group_mods(old: &DesiredState, new: &DesiredState) -> Vec<(GroupModCommand, u32)> {
    let mut groups = GroupIdAllocator::new();
    diff(&DesiredState::new(), old, &mut groups).unwrap();
    let mut hairpin = HairpinRefs::of_state(old);
    let changes = diff(old, new, &mut groups).unwrap();
    program::incremental(3, &changes, &mut hairpin, GroupLayout::default())
        .into_iter()
        .filter_map(|m| match m.msg {
            Message::GroupMod(gm) => Some((gm.command, gm.group.group_id)),
            _ => None,
        })
        .collect()
}

#[test]
fn growing_and_shrinking_ports_add_and_delete_sub_groups_in_a_safe_order() {
    use GroupModCommand::{Add, Delete, Modify};
    let s = |i| sub_group_id(1, i);
    // New large port: sub-groups before the group that chains to them.
    assert_eq!(
        group_mods(&DesiredState::new(), &big(1_000, false)),
        vec![(Add, s(0)), (Add, s(1)), (Add, 1)]
    );
    // Growing from one group to chained ones.
    assert_eq!(
        group_mods(&big(10, false), &big(1_100, false)),
        vec![(Add, s(0)), (Add, s(1)), (Add, s(2)), (Modify, 1)]
    );
    // Shrinking: the port's group stops chaining before sub-groups go.
    assert_eq!(
        group_mods(&big(1_100, true), &big(600, true)),
        vec![(Modify, s(0)), (Modify, s(1)), (Modify, 1), (Delete, s(2))]
    );
    assert_eq!(
        group_mods(&big(1_100, false), &big(3, false)),
        vec![(Modify, 1), (Delete, s(0)), (Delete, s(1)), (Delete, s(2))]
    );
    // Removed: the port's group first.
    assert_eq!(
        group_mods(&big(1_000, false), &DesiredState::new()),
        vec![(Delete, 1), (Delete, s(1)), (Delete, s(0))]
    );
}

#[test]
fn full_sync_modifies_what_exists_and_deletes_sub_groups_no_port_uses() {
    let state = big(1_100, false);
    let mut ids = GroupIdAllocator::new();
    diff(&DesiredState::new(), &state, &mut ids).unwrap();
    let s = |i| sub_group_id(1, i);
    // On the switch: the port's group and two sub-groups from before, and a
    // stale sub-group of the port (it had more endpoints) and a stale port.
    let inventory = SwitchInventory {
        generations: BTreeSet::from([1]),
        groups: [1, s(0), s(1), s(5), 9, sub_group_id(9, 0)]
            .into_iter()
            .collect(),
    };
    let (msgs, _) = program::full_sync(2, &state, &ids, &inventory, GroupLayout::default());
    let mods: Vec<(GroupModCommand, u32)> = msgs
        .iter()
        .filter_map(|m| match &m.msg {
            Message::GroupMod(gm) => Some((gm.command, gm.group.group_id)),
            _ => None,
        })
        .collect();
    use GroupModCommand::{Add, Delete, Modify};
    assert_eq!(
        mods,
        vec![
            (Modify, s(0)),
            (Modify, s(1)),
            (Add, s(2)),
            (Modify, 1),
            (Delete, 9),
            (Delete, sub_group_id(9, 0)),
            (Delete, s(5)),
        ]
    );
}
