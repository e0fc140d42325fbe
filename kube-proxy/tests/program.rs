//! Golden tests: the flow and group mods for change sets and full syncs, in
//! ovs-ofctl syntax (the text `ovs-ofctl -O OpenFlow15 add-flow/add-group`
//! accepts; the datapath tests install the same values on a real switch).

use switchyard_proxy::fixtures::{ServiceBuilder, endpoint, service, slice};
use switchyard_proxy::groups::GroupLayout;
use switchyard_proxy::program::{self, HairpinRefs, SwitchInventory};
use switchyard_proxy::{DesiredState, GroupIdAllocator, build_desired_state, diff};

const NODE: &str = "node-1";

fn text(msgs: &[switchyard_ovs::openflow::TxMessage]) -> String {
    msgs.iter().map(|m| m.describe() + "\n").collect()
}

/// Compares with a golden text; `UPDATE_GOLDEN=1` prints the actual text instead.
fn check(name: &str, actual: &str, expected: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        println!("=== {name}\n{actual}===");
        return;
    }
    assert_eq!(actual, expected, "golden mismatch for {name}");
}

fn web(endpoints: &[(&str, &str)]) -> DesiredState {
    web_with(endpoints, |svc| svc)
}

fn web_with(
    endpoints: &[(&str, &str)],
    customize: impl FnOnce(ServiceBuilder) -> ServiceBuilder,
) -> DesiredState {
    let svc = customize(
        service("default", "web")
            .cluster_ip("10.96.0.10")
            .tcp("http", 80),
    )
    .build();
    let mut builder = slice("default", "web-abc", "web").tcp("http", 8080);
    for (ip, node) in endpoints {
        builder = builder.endpoint(endpoint(ip).node(node));
    }
    build_desired_state([&svc], [&builder.build()], NODE)
}

const TWO: &[(&str, &str)] = &[("10.244.1.5", "node-2"), ("10.244.0.7", NODE)];

/// The change set from `old` to `new` (group ids from a fresh allocator
/// that saw `old` first) rendered as generation 3.
fn incremental(old: &DesiredState, new: &DesiredState) -> String {
    let mut groups = GroupIdAllocator::new();
    diff(&DesiredState::new(), old, &mut groups).unwrap();
    let mut hairpin = HairpinRefs::of_state(old);
    let changes = diff(old, new, &mut groups).unwrap();
    text(&program::incremental(
        3,
        &changes,
        &mut hairpin,
        GroupLayout::default(),
    ))
}

#[test]
fn added_service_is_a_group_a_frontend_and_hairpin_for_local_endpoints() {
    check(
        "added",
        &incremental(&DesiredState::new(), &web(TWO)),
        GOLDEN_ADDED,
    );
}

#[test]
fn endpoint_change_is_a_group_modify_only() {
    let new = web(&[("10.244.1.5", "node-2"), ("10.244.1.6", "node-2")]);
    check(
        "endpoint change",
        &incremental(&web(TWO), &new),
        GOLDEN_ENDPOINTS,
    );
}

#[test]
fn losing_every_endpoint_rewrites_the_frontend_to_reject() {
    check("reject", &incremental(&web(TWO), &web(&[])), GOLDEN_REJECT);
}

#[test]
fn local_policy_without_local_endpoints_drops() {
    let new = web_with(&[("10.244.1.5", "node-2")], ServiceBuilder::internal_local);
    check(
        "drop",
        &incremental(&DesiredState::new(), &new),
        GOLDEN_DROP,
    );
}

#[test]
fn removed_service_deletes_by_object_cookie_then_the_group() {
    check(
        "removed",
        &incremental(&web(TWO), &DesiredState::new()),
        GOLDEN_REMOVED,
    );
}

#[test]
fn affinity_service_resubmits_and_learns_in_endpoint_dnat() {
    let new = web_with(&[("10.244.1.5", "node-2")], |svc| {
        svc.client_ip_affinity(Some(30))
    });
    check(
        "affinity",
        &incremental(&DesiredState::new(), &new),
        GOLDEN_AFFINITY,
    );
}

#[test]
fn full_sync_replaces_a_generation_and_deletes_unused_groups() {
    let state = web(TWO);
    let mut groups = GroupIdAllocator::new();
    diff(&DesiredState::new(), &state, &mut groups).unwrap();
    let inventory = SwitchInventory {
        generations: [2].into(),
        groups: [1, 7].into(),
    };
    let (msgs, hairpin) =
        program::full_sync(3, &state, &groups, &inventory, GroupLayout::default());
    assert_eq!(hairpin.addresses().count(), 1);
    check("full sync", &text(&msgs), GOLDEN_FULL);
}

/// Parts of one port each, concatenated, have the whole batch's mods; each
/// part has its groups before its flows, and the deletions come last.
#[test]
fn full_sync_in_parts_is_the_whole_batch() {
    let svc = |name: &str, ip: &str| {
        service("default", name)
            .cluster_ip(ip)
            .tcp("http", 80)
            .build()
    };
    let services = [
        svc("a", "10.96.0.1"),
        svc("b", "10.96.0.2"),
        svc("c", "10.96.0.3"),
    ];
    let slices = [
        slice("default", "a-1", "a")
            .tcp("http", 8080)
            .endpoint(endpoint("10.244.0.7").node(NODE))
            .build(),
        slice("default", "b-1", "b")
            .tcp("http", 8080)
            .endpoint(endpoint("10.244.1.5").node("node-2"))
            .build(),
    ];
    let state = build_desired_state(&services, &slices, NODE);
    let mut groups = GroupIdAllocator::new();
    diff(&DesiredState::new(), &state, &mut groups).unwrap();
    let inventory = SwitchInventory {
        generations: [2].into(),
        groups: [1, 9].into(),
    };
    let (whole, _) = program::full_sync(3, &state, &groups, &inventory, GroupLayout::default());
    let mut sync = program::FullSync::new(3, GroupLayout::default());
    let mut parts = Vec::new();
    for port in state.iter() {
        let part = sync.ports([port], &groups, &inventory);
        let text = text(&part);
        let first_flow = text.find("table=").expect("a flow");
        assert!(
            !text[first_flow..].contains("group_id="),
            "groups before flows:\n{text}"
        );
        parts.extend(part);
    }
    let finish = sync.finish(&HairpinRefs::of_state(&state), &inventory);
    let finish_text = text(&finish);
    parts.extend(finish);
    let sorted = |text: String| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(text(&parts)), sorted(text(&whole)));
    // The deletions come last, after every part's adds.
    assert!(text(&parts).ends_with(&finish_text));
    assert!(finish_text.contains("delete group_id=9"), "{finish_text}");
    assert!(finish_text.contains("delete cookie="), "{finish_text}");
}

const GOLDEN_ADDED: &str = "\
add group_id=1,type=select,selection_method=hash,fields(nw_proto,nw_src,nw_dst,tcp_src,tcp_dst),bucket=bucket_id:0,weight:100,actions=ct(commit,table=35,zone=65520,nat(dst=10.244.0.7:8080),exec(set_field:0x1->ct_mark)),bucket=bucket_id:1,weight:100,actions=ct(commit,table=35,zone=65520,nat(dst=10.244.1.5:8080),exec(set_field:0x1->ct_mark))\n\
add table=31,cookie=0x5359020300000001,priority=200,tcp,nw_dst=10.96.0.10,tcp_dst=80,reg4=0x0/0x30000 actions=note:64.65.66.61.75.6c.74.2f.77.65.62.3a.68.74.74.70.2f.54.43.50.00.00,set_field:0x10000/0x30000->reg4,group:1\n\
add table=40,cookie=0x5359020300000000,priority=300,ip,nw_src=10.244.0.7,nw_dst=10.244.0.7,ct_state=-rpl+trk,ct_zone=65520,ct_mark=0x1/0x1 actions=set_field:0x40000/0x40000->reg4,ct(commit,table=40,zone=65522,nat(src=169.254.169.252),exec(set_field:0x3->ct_mark))\n\
";
const GOLDEN_ENDPOINTS: &str = "\
modify group_id=1,type=select,selection_method=hash,fields(nw_proto,nw_src,nw_dst,tcp_src,tcp_dst),bucket=bucket_id:0,weight:100,actions=ct(commit,table=35,zone=65520,nat(dst=10.244.1.5:8080),exec(set_field:0x1->ct_mark)),bucket=bucket_id:1,weight:100,actions=ct(commit,table=35,zone=65520,nat(dst=10.244.1.6:8080),exec(set_field:0x1->ct_mark))\n\
delete_strict table=40,priority=300,ip,nw_src=10.244.0.7,nw_dst=10.244.0.7,ct_state=-rpl+trk,ct_zone=65520,ct_mark=0x1/0x1\n\
";
const GOLDEN_REJECT: &str = "\
modify group_id=1,type=select,selection_method=hash,fields(nw_proto,nw_src,nw_dst,tcp_src,tcp_dst)\n\
delete cookie=0x5359020000000001/0xffffff00ffffffff\n\
delete_strict table=40,priority=300,ip,nw_src=10.244.0.7,nw_dst=10.244.0.7,ct_state=-rpl+trk,ct_zone=65520,ct_mark=0x1/0x1\n\
add table=31,cookie=0x5359020300000001,priority=200,tcp,nw_dst=10.96.0.10,tcp_dst=80,reg4=0x0/0x30000 actions=note:64.65.66.61.75.6c.74.2f.77.65.62.3a.68.74.74.70.2f.54.43.50.00.00,controller(userdata=53.59.52.4a)\n\
";
const GOLDEN_DROP: &str = "\
add group_id=1,type=select,selection_method=hash,fields(nw_proto,nw_src,nw_dst,tcp_src,tcp_dst)\n\
add table=31,cookie=0x5359020300000001,priority=200,tcp,nw_dst=10.96.0.10,tcp_dst=80,reg4=0x0/0x30000 actions=note:64.65.66.61.75.6c.74.2f.77.65.62.3a.68.74.74.70.2f.54.43.50.00.00\n\
";
const GOLDEN_REMOVED: &str = "\
delete cookie=0x5359020000000001/0xffffff00ffffffff\n\
delete_strict table=40,priority=300,ip,nw_src=10.244.0.7,nw_dst=10.244.0.7,ct_state=-rpl+trk,ct_zone=65520,ct_mark=0x1/0x1\n\
delete group_id=1\n\
";
const GOLDEN_AFFINITY: &str = "\
add group_id=1,type=select,selection_method=hash,fields(nw_proto,nw_src,nw_dst,tcp_src,tcp_dst),bucket=bucket_id:0,weight:100,actions=set_field:0xaf40105->reg3,set_field:0x21f90/0x3ffff->reg4,resubmit(,32)\n\
add table=31,cookie=0x5359020300000001,priority=200,tcp,nw_dst=10.96.0.10,tcp_dst=80,reg4=0x0/0x30000 actions=note:64.65.66.61.75.6c.74.2f.77.65.62.3a.68.74.74.70.2f.54.43.50.00.00,set_field:0x1->reg6,set_field:0x10000/0x30000->reg4,resubmit(,30),resubmit(,31)\n\
add table=31,cookie=0x5359020300000001,priority=200,tcp,nw_dst=10.96.0.10,tcp_dst=80,reg4=0x10000/0x30000 actions=group:1\n\
add table=32,cookie=0x5359020300000001,priority=200,tcp,reg6=0x1,reg3=0xaf40105,reg4=0x21f90/0x3ffff actions=learn(table=30,idle_timeout=30,priority=200,cookie=0x535902ff00000001,dl_type=0x800,nw_proto=6,NXM_OF_IP_SRC[],NXM_NX_REG6[],NXM_NX_REG4[16..17]=0x1,load:NXM_NX_REG3[]->NXM_NX_REG3[],load:NXM_NX_REG4[0..17]->NXM_NX_REG4[0..17]),ct(commit,table=35,zone=65520,nat(dst=10.244.1.5:8080),exec(set_field:0x1->ct_mark))\n\
";
const GOLDEN_FULL: &str = "\
modify group_id=1,type=select,selection_method=hash,fields(nw_proto,nw_src,nw_dst,tcp_src,tcp_dst),bucket=bucket_id:0,weight:100,actions=ct(commit,table=35,zone=65520,nat(dst=10.244.0.7:8080),exec(set_field:0x1->ct_mark)),bucket=bucket_id:1,weight:100,actions=ct(commit,table=35,zone=65520,nat(dst=10.244.1.5:8080),exec(set_field:0x1->ct_mark))\n\
add table=30,cookie=0x5359020300000000,priority=1,reg4=0x10000/0x30000 actions=drop\n\
add table=31,cookie=0x5359020300000000,priority=100,reg4=0x20000/0x30000 actions=goto_table:32\n\
add table=20,cookie=0x5359020300000000,priority=300,ip,nw_dst=169.254.169.252 actions=set_field:0x40000/0x40000->reg4,ct(table=20,zone=65522,nat)\n\
add table=70,cookie=0x5359020300000000,priority=300,reg4=0x40000/0x40000 actions=IN_PORT\n\
add table=40,cookie=0x5359020300000000,priority=50,ip,ct_state=-rpl+trk,ct_mark=0x1/0x1,in_port=2,ct_zone=65520 actions=set_field:0x40000/0x40000->reg4,ct(commit,table=40,zone=65524,nat(src=169.254.169.251),exec(set_field:0x1->ct_mark))\n\
add table=40,cookie=0x5359020300000000,priority=50,ip,ct_state=-rpl+trk,ct_mark=0x1/0x1,reg0=0x2/0xf,ct_zone=65523 actions=ct(commit,table=40,zone=65524,nat(src=169.254.169.251),exec(set_field:0x1->ct_mark))\n\
add table=40,cookie=0x5359020300000000,priority=50,ip,ct_state=+rpl+trk,ct_mark=0x1/0x1,in_port=2,ct_zone=65520 actions=set_field:0x40000/0x40000->reg4,move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],goto_table:50\n\
add table=20,cookie=0x5359020300000000,priority=300,ip,in_port=2,nw_dst=169.254.169.251 actions=ct(table=20,zone=65524,nat)\n\
add table=20,cookie=0x5359020300000000,priority=301,ip,in_port=2,nw_dst=169.254.169.251,ct_zone=65524 actions=drop\n\
add table=31,cookie=0x5359020300000001,priority=200,tcp,nw_dst=10.96.0.10,tcp_dst=80,reg4=0x0/0x30000 actions=note:64.65.66.61.75.6c.74.2f.77.65.62.3a.68.74.74.70.2f.54.43.50.00.00,set_field:0x10000/0x30000->reg4,group:1\n\
add table=40,cookie=0x5359020300000000,priority=300,ip,nw_src=10.244.0.7,nw_dst=10.244.0.7,ct_state=-rpl+trk,ct_zone=65520,ct_mark=0x1/0x1 actions=set_field:0x40000/0x40000->reg4,ct(commit,table=40,zone=65522,nat(src=169.254.169.252),exec(set_field:0x3->ct_mark))\n\
delete cookie=0x5359020200000000/0xffffffff00000000\n\
delete cookie=0x5359020000000007/0xffffff00ffffffff\n\
delete group_id=7\n\
";
