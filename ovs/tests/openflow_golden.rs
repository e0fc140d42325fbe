//! Golden wire-format tests for `switchyard_ovs::openflow`.
//!
//! Two oracles, both Open vSwitch's own code (`ovs-ofctl`, no daemon needed):
//!
//! 1. Our encoding -> `ovs-ofctl ofp-print <hex>` must print the expected
//!    text, and the bytes must equal the golden hex kept in this file.
//! 2. OVS's encoding -> our decoder: `ovs-ofctl -O OpenFlow15 add-flow
//!    unix:<sock> ...` is pointed at a tiny fake switch in this test (a Unix
//!    socket that answers HELLO/ECHO/BARRIER/FEATURES/BUNDLE_CONTROL), which
//!    captures the FLOW_MOD / GROUP_MOD / BUNDLE_ADD bytes ovs-ofctl sends.
//!    We decode them, re-encode them byte-for-byte, and feed our `Display`
//!    text back to ovs-ofctl to get the very same bytes again.
//!
//! Needs `ovs-ofctl` (package openvswitch-switch) but no root.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_ovs::openflow::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ofp_print(bytes: &[u8]) -> String {
    let out = Command::new("ovs-ofctl")
        .args(["ofp-print", &hex(bytes)])
        .output()
        .expect("ovs-ofctl must be installed (openvswitch-switch)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks golden bytes, ofp-print text and decode round trip for one message.
fn check(name: &str, msg: Message, golden: &str, expect: &str) {
    let bytes = msg.to_bytes(7).unwrap();
    let printed = ofp_print(&bytes);
    assert!(
        printed.contains(expect),
        "{name}: ovs-ofctl ofp-print of our bytes\n{}\nprinted\n{printed}\nexpected to contain\n{expect}",
        hex(&bytes)
    );
    assert!(!printed.contains("decode error"), "{name}: {printed}");
    assert_eq!(
        hex(&bytes),
        hex(&unhex(golden)),
        "{name}: bytes differ from golden"
    );
    let (version, xid, decoded) = Message::decode(&bytes).unwrap();
    assert_eq!((version, xid), (OFP15_VERSION, 7));
    assert_eq!(decoded, msg, "{name}: decode(encode(msg)) != msg");
}

fn service_flow() -> Flow {
    Flow::new(3, 100)
        .cookie(0x1234)
        .matching(MatchField::in_port(5))
        .matching(MatchField::eth_type(0x0800))
        .matching(MatchField::ip_proto(6))
        .matching(MatchField::ipv4_src(Ipv4Addr::new(10, 0, 0, 0), 24))
        .matching(MatchField::ipv4_dst(Ipv4Addr::new(10, 96, 0, 1), 32))
        .matching(MatchField::tcp_dst(80))
        .matching(MatchField::reg_masked(3, 5, 0xff))
        .matching(MatchField::ct_state(
            ct_state::TRK | ct_state::NEW,
            ct_state::TRK | ct_state::NEW,
        ))
        .matching(MatchField::ct_mark(1, 0xffff_ffff))
        .action(Action::Ct(Ct {
            commit: true,
            zone: CtZone::Immediate(5),
            nat: Some(Nat::dst(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), Some(8080))),
            exec: vec![Action::set_field(Field::CtMark, 7)],
            ..Ct::default()
        }))
        .action(Action::load(SubField::bits(Field::Reg(0), 0, 15), 0x22))
        .action(Action::Move {
            src: SubField::whole(Field::Reg(1)),
            dst: SubField::whole(Field::Reg(2)),
        })
        .action(Action::Resubmit {
            port: None,
            table: Some(4),
            ct: true,
        })
        .action(Action::GotoTable(9))
}

#[test]
fn port_status_in_openflow_1_5() {
    check(
        "port status",
        Message::PortStatus(PortStatus {
            reason: PortReason::Add,
            port_no: 13,
            name: "sxa71".into(),
        }),
        "060c00380000000700000000000000000000000d002800000000000000000000737861373100000000000000000000000000000000000000",
        "OFPT_PORT_STATUS (OF1.5) (xid=0x7): ADD: 13(sxa71)",
    );
}

/// A port status in OpenFlow 1.3's fixed 64-byte `ofp_port` (with a
/// hardware address, state LIVE and speeds), as `ovs-vswitchd` sends it on a
/// 1.3 connection: the same port number and name.
#[test]
fn port_status_in_openflow_1_3_decodes_to_the_same_port() {
    let bytes = unhex(
        "040c00500000000000000000000000000000000d00000000264e80848e170000737861373100000000000000000000000000000000000004000000000000000000000000000000000000000000000000",
    );
    let printed = ofp_print(&bytes);
    assert!(
        printed.contains("OFPT_PORT_STATUS (OF1.3) (xid=0x0): ADD: 13(sxa71)"),
        "{printed}"
    );
    let (version, _, decoded) = Message::decode(&bytes).unwrap();
    assert_eq!(version, OFP13_VERSION);
    assert_eq!(
        decoded,
        Message::PortStatus(PortStatus {
            reason: PortReason::Add,
            port_no: 13,
            name: "sxa71".into(),
        })
    );
    // A removal and a change keep their reason.
    let mut removed = bytes.clone();
    removed[8] = 1;
    assert!(matches!(
        Message::decode(&removed).unwrap().2,
        Message::PortStatus(PortStatus {
            reason: PortReason::Delete,
            ..
        })
    ));
}

#[test]
fn display_is_ofctl_syntax() {
    assert_eq!(
        service_flow().to_string(),
        "table=3,cookie=0x1234,priority=100,tcp,in_port=5,nw_src=10.0.0.0/24,nw_dst=10.96.0.1,\
         tcp_dst=80,reg3=0x5/0xff,ct_state=+new+trk,ct_mark=0x1 actions=ct(commit,zone=5,\
         nat(dst=10.1.0.2:8080),exec(set_field:0x7->ct_mark)),set_field:0x22/0xffff->reg0,\
         move:NXM_NX_REG1[]->NXM_NX_REG2[],resubmit(,4,ct),goto_table:9"
    );
    assert_eq!(
        Flow::new(0, 0).to_string(),
        "table=0,priority=0 actions=drop"
    );
}

#[test]
fn golden_flow_mod_service() {
    check(
        "flow_mod service",
        Message::FlowMod(FlowMod::add(service_flow())),
        "060e011800000007000000000000123400000000000000000300000000000064ffffffffffffffff
         ffffffff0000000000010059800000040000000580000a0208008000140106800017080a000000ff
         ffff00800018040a60000180001c02005080010310000000000000000500000000000000ff0001d3
         0800000021000000210001d60400000001000000000000000004008000000000ffff004000002320
         00230001000000000005ff0000000000ffff00180000232000240000000200110a0100021f900000
         001900100001d60400000007000000000019001000010108000000220000ffff001c001800200000
         00000000000102040001040400000000ffff001000002320002cfff8040000000001000809000000",
        "ADD table:3 priority=100,ct_state=+new+trk,ct_mark=0x1,tcp,reg3=0x5/0xff,in_port=5,\
         nw_src=10.0.0.0/24,nw_dst=10.96.0.1,tp_dst=80 cookie:0x1234 actions=ct(commit,zone=5,\
         nat(dst=10.1.0.2:8080),exec(set_field:0x7->ct_mark)),set_field:0x22/0xffff->reg0,\
         move:NXM_NX_REG1[]->NXM_NX_REG2[],resubmit(,4,ct),goto_table:9",
    );
}

#[test]
fn golden_delete_by_cookie() {
    let mut d = FlowMod::delete_cookie(0x100, 0xff00);
    d.out_port = 4;
    assert_eq!(d.to_string(), "delete cookie=0x100/0xff00,out_port=4");
    assert_eq!(
        FlowMod::delete_strict(Flow::new(3, 7).matching(MatchField::ip_proto(6))).to_string(),
        "delete_strict table=3,priority=7,nw_proto=6"
    );
    check(
        "delete by cookie",
        Message::FlowMod(d),
        "060e0038000000070000000000000100000000000000ff00ff03000000000000ffffffff00000004
         ffffffff000000000001000400000000",
        "DEL table:255 priority=0 cookie:0x100/0xff00 out_port:4 actions=drop",
    );
}

fn service_group() -> Group {
    Group::select(
        7,
        vec![
            (
                100,
                vec![Action::Ct(Ct {
                    commit: true,
                    zone: CtZone::Immediate(1),
                    nat: Some(Nat::dst("10.1.0.2".parse().unwrap(), Some(80))),
                    ..Ct::default()
                })],
            ),
            (50, vec![Action::Output(3)]),
        ],
    )
    .selection(SelectionMethod::hash(&[
        Field::Ipv4Src,
        Field::Ipv4Dst,
        Field::TcpDst,
    ]))
}

#[test]
fn golden_group_mods() {
    check(
        "select group",
        Message::GroupMod(GroupMod::add(service_group())),
        "060f00b800000007000001000000000700600000ffffffff0040003000000000ffff003000002320
         00230001000000000001ff0000000000ffff00180000232000240000000200110a01000200500000
         00000008006400000020001000000001000000100000000300000000000000000000000800320000
         ffff003e0000154d00000001000000006861736800000000000000000000000000000000000000008000
         1604ffffffff80001804ffffffff80001c02ffff0000",
        " ADD group_id=7,type=select,selection_method=hash,fields(ip_src,ip_dst,tcp_dst),\
         bucket=bucket_id:0,weight:100,actions=ct(commit,zone=1,nat(dst=10.1.0.2:80)),\
         bucket=bucket_id:1,weight:50,actions=output:3",
    );
    check(
        "delete group",
        Message::GroupMod(GroupMod::delete(7)),
        "060f001800000007000200000000000700000000ffffffff",
        " DEL group_id=7,type=all",
    );
}

#[test]
fn golden_bundles_and_control_messages() {
    check(
        "bundle open",
        Message::BundleControl {
            bundle_id: 1,
            ctrl: BundleCtrlType::OpenRequest,
            flags: bundle_flags::ATOMIC | bundle_flags::ORDERED,
        },
        "06210010000000070000000100000003",
        "bundle_id=0x1 type=OPEN_REQUEST flags=atomic ordered",
    );
    check(
        "bundle commit",
        Message::BundleControl {
            bundle_id: 1,
            ctrl: BundleCtrlType::CommitRequest,
            flags: bundle_flags::ATOMIC,
        },
        "06210010000000070000000100040001",
        "bundle_id=0x1 type=COMMIT_REQUEST flags=atomic",
    );
    check(
        "bundle add",
        Message::BundleAdd {
            bundle_id: 1,
            flags: bundle_flags::ATOMIC | bundle_flags::ORDERED,
            inner: Box::new(Message::FlowMod(FlowMod::add(Flow::new(0, 1)))),
        },
        "06220048000000070000000100000003060e00380000000700000000000000000000000000000000
         0000000000000001ffffffffffffffffffffffff000000000001000400000000",
        "OFPT_FLOW_MOD (OF1.5) (xid=0x7): ADD priority=1 actions=drop",
    );
    check(
        "group desc request",
        Message::MultipartRequest(MultipartRequest::GroupDesc(ALL_GROUPS)),
        "06120018000000070007000000000000fffffffc00000000",
        "OFPST_GROUP_DESC request (OF1.5) (xid=0x7): group_id=ALL",
    );
    check(
        "group stats request",
        Message::MultipartRequest(MultipartRequest::Group(ALL_GROUPS)),
        "06120018000000070006000000000000fffffffc00000000",
        "OFPST_GROUP request (OF1.5) (xid=0x7): group_id=ALL",
    );
    check(
        "packet out",
        Message::PacketOut(PacketOut {
            in_port: port::CONTROLLER,
            actions: vec![Action::Output(1)],
            data: vec![0xff; 14],
        }),
        "060d003e00000007ffffffff001000000001000c80000004fffffffd000000000000001000000001
         0000000000000000ffffffffffffffffffffffffffff",
        "in_port=CONTROLLER actions=output:1 data_len=14",
    );
    check(
        "hello",
        Message::Hello(0x50),
        "06000010000000070001000800000050",
        "version bitmap: 0x04, 0x06",
    );
    check(
        "set async",
        Message::SetAsync {
            packet_in_mask: 0x3f,
        },
        "061c001800000007000000080000003f000100080000003f",
        "PACKET_IN: no_match action invalid_ttl action_set group packet_out",
    );
    check(
        "set packet-in format",
        Message::SetPacketInFormat(2),
        "0604001400000007000023200000001000000002",
        "format=nxt_packet_in2",
    );
    check(
        "barrier",
        Message::BarrierRequest,
        "0614000800000007",
        "OFPT_BARRIER_REQUEST (OF1.5) (xid=0x7):",
    );
    check(
        "echo",
        Message::EchoRequest(b"hi".to_vec()),
        "0602000a000000076869",
        "OFPT_ECHO_REQUEST (OF1.5) (xid=0x7): 2 bytes of payload",
    );
}

/// Runs `ovs-ofctl -O OpenFlow15 <args with SOCK replaced>` against a fake
/// switch and returns every message ovs-ofctl sent (raw bytes), HELLO,
/// barriers and bundle control excluded.
fn ofctl_capture(args: &[&str]) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let target = format!("unix:{}", sock.display());
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if *a == "SOCK" {
                target.clone()
            } else {
                (*a).to_string()
            }
        })
        .collect();
    let mut child = Command::new("ovs-ofctl")
        .arg("-O")
        .arg("OpenFlow15")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ovs-ofctl must be installed");
    // ovs-ofctl may connect more than once (first to read table features,
    // then to send the flow_mod): serve connections until it exits.
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut servers = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let c = captured.clone();
                servers.push(std::thread::spawn(move || serve_fake_switch(stream, &c)));
            }
            Err(_) => {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("ovs-ofctl {args:?} did not finish");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ovs-ofctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in servers {
        s.join().unwrap();
    }
    std::mem::take(&mut *captured.lock().unwrap())
}

fn serve_fake_switch(
    mut stream: std::os::unix::net::UnixStream,
    captured: &std::sync::Mutex<Vec<Vec<u8>>>,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    loop {
        let mut h = [0u8; 8];
        if stream.read_exact(&mut h).is_err() {
            break;
        }
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let mut msg = h.to_vec();
        msg.resize(len, 0);
        stream.read_exact(&mut msg[8..]).unwrap();
        let xid = [h[4], h[5], h[6], h[7]];
        let reply = |ty: u8, body: &[u8]| {
            let mut r = vec![6u8, ty, 0, 0, xid[0], xid[1], xid[2], xid[3]];
            r.extend_from_slice(body);
            let l = u16::try_from(r.len()).unwrap().to_be_bytes();
            r[2] = l[0];
            r[3] = l[1];
            r
        };
        let answer = match h[1] {
            0 => Some(reply(0, &[0, 1, 0, 8, 0, 0, 0, 0x40])),
            2 => Some(reply(3, &msg[8..])),
            5 => Some(reply(6, &[0; 24])),
            // Multipart request: ovs-ofctl asks for table features to
            // resolve table names. Answer with 255 unnamed tables and no
            // properties (64-byte ofp13_table_features each).
            // Other multipart requests (port descriptions, flow stats): an
            // empty reply; flow/group statistics requests are captured.
            18 if msg[9] != 12 => {
                if matches!(msg[9], 1 | 6 | 7) {
                    captured.lock().unwrap().push(msg.clone());
                }
                Some(reply(19, &[msg[8], msg[9], 0, 0, 0, 0, 0, 0]))
            }
            18 => {
                let mut body = vec![msg[8], msg[9], 0, 0, 0, 0, 0, 0];
                for t in 0..255u8 {
                    let mut e = vec![0u8; 64];
                    e[1] = 64;
                    e[2] = t;
                    e[60..64].copy_from_slice(&1_000_000u32.to_be_bytes());
                    body.extend_from_slice(&e);
                }
                Some(reply(19, &body))
            }
            20 => Some(reply(21, &[])),
            33 => {
                // Bundle control: reply with type + 1 (OPEN_REPLY, COMMIT_REPLY ...).
                let mut body = msg[8..16].to_vec();
                body[5] += 1;
                Some(reply(33, &body))
            }
            _ => {
                captured.lock().unwrap().push(msg.clone());
                None
            }
        };
        if let Some(a) = answer {
            stream.write_all(&a).unwrap();
        }
    }
}

/// Flows given to ovs-ofctl; we must decode OVS's bytes, re-encode them
/// identically, and print text that ovs-ofctl turns into the same bytes.
const OFCTL_FLOWS: &[&str] = &[
    "table=3,cookie=0x1234,priority=100,tcp,in_port=5,nw_src=10.0.0.0/24,nw_dst=10.96.0.1,tp_dst=80,reg3=0x5/0xff,ct_state=+new+trk,ct_mark=0x1 actions=ct(commit,zone=5,nat(dst=10.1.0.2:8080),exec(set_field:0x7->ct_mark)),load:0x22->NXM_NX_REG0[0..15],move:NXM_NX_REG1[]->NXM_NX_REG2[],resubmit(,4,ct),goto_table:9",
    "table=0,priority=10,arp,arp_op=1,arp_spa=10.0.0.1,arp_tpa=10.0.0.2,arp_sha=01:02:03:04:05:06,arp_tha=00:00:00:00:00:00 actions=NORMAL",
    "table=0,priority=20,dl_vlan=100,dl_src=aa:00:00:00:00:01,dl_dst=aa:00:00:00:00:02/ff:ff:ff:00:00:00 actions=pop_vlan,output:2",
    "table=1,priority=5,in_port=LOCAL,ip actions=push_vlan:0x8100,set_field:4196->vlan_vid,IN_PORT,LOCAL,output:7",
    "table=2,priority=7,ct_state=+trk+est-new,ct_zone=3,ip,ct_nw_dst=10.96.0.10,ct_nw_proto=6,ct_tp_dst=53,ct_label=0x1/0x1 actions=ct(table=7,zone=NXM_NX_REG6[0..15],nat)",
    "table=2,priority=8,ip,pkt_mark=0x1/0x1,conj_id=9,metadata=0x55,tun_id=0x99,tun_src=1.2.3.4,tun_dst=5.6.7.8,reg15=0xffffffff actions=ct_clear,dec_ttl,group:4,note:68.69.00.00.00.00",
    "table=2,priority=9,ip,nw_src=10.1.0.0/16 actions=conjunction(9,1/2),note:01.02.03.04.05.06",
    "table=4,priority=9,tcp,tcp_flags=+syn-ack actions=learn(table=10,idle_timeout=60,hard_timeout=120,priority=200,delete_learned,cookie=0x5,eth_type=0x800,nw_proto=6,NXM_OF_IP_SRC[],NXM_OF_IP_DST[],NXM_OF_TCP_DST[],load:NXM_NX_REG3[]->NXM_NX_REG3[]),resubmit(,11)",
    "table=5,priority=2,udp6,ipv6_src=fd00::/64,ipv6_dst=fd00::1,udp_dst=53 actions=ct(commit,nat(dst=[fd00::5]:53))",
    "table=5,priority=1,udp,nw_src=10.0.0.0/8,udp_src=53 actions=ct(commit,nat(src=10.0.0.1-10.0.0.9:1000-2000,random),exec(set_field:0x10000000000000000/0x10000000000000000->ct_label))",
    "table=6,priority=2,sctp,sctp_dst=9 actions=meter:2,controller(reason=no_match,userdata=01.02.03)",
    "table=6,priority=3,icmp,icmp_type=8,icmp_code=0 actions=CONTROLLER:65535,controller(max_len=128)",
    "table=7,priority=0 actions=drop",
    "table=8,priority=1,icmp6,icmp_type=135,icmp_code=0,nd_target=fd00::1,nd_sll=00:00:00:00:00:01 actions=drop",
    "table=8,priority=2,icmp6,icmp_type=136,nd_target=fd00::2,nd_tll=00:00:00:00:00:02 actions=drop",
    "table=8,priority=3,ip,ip_dscp=46,nw_ecn=1,nw_ttl=64 actions=drop",
    "table=8,priority=4,ipv6,ipv6_label=0x12345 actions=dec_ttl",
];

fn flow_mod_of(bytes: &[u8]) -> FlowMod {
    match Message::decode(bytes).unwrap().2 {
        Message::FlowMod(fm) => fm,
        Message::BundleAdd { inner, .. } => match *inner {
            Message::FlowMod(fm) => fm,
            m => panic!("expected flow_mod in bundle, got {m:?}"),
        },
        m => panic!("expected flow_mod, got {m:?}"),
    }
}

#[test]
fn decodes_flow_mods_produced_by_ovs_ofctl() {
    for text in OFCTL_FLOWS {
        let captured = ofctl_capture(&["add-flow", "SOCK", text]);
        assert_eq!(captured.len(), 1, "{text}: {captured:?}");
        let ovs_bytes = &captured[0];
        let fm = flow_mod_of(ovs_bytes);
        let xid = u32::from_be_bytes([ovs_bytes[4], ovs_bytes[5], ovs_bytes[6], ovs_bytes[7]]);
        assert_eq!(
            hex(&Message::FlowMod(fm.clone()).to_bytes(xid).unwrap()),
            hex(ovs_bytes),
            "re-encoding OVS's flow_mod for {text} differs\n{}",
            ofp_print(ovs_bytes)
        );
        // Our Display is accepted by ovs-ofctl and means the same flow.
        let ours = fm.flow.to_string();
        let again = ofctl_capture(&["add-flow", "SOCK", &ours]);
        let fm2 = flow_mod_of(&again[0]);
        assert_eq!(
            fm2, fm,
            "{text}\n  displayed as {ours}\n  which ovs-ofctl parses differently"
        );
    }
}

#[test]
fn decodes_bundle_adds_and_group_mods_produced_by_ovs_ofctl() {
    let captured = ofctl_capture(&[
        "--bundle",
        "add-flow",
        "SOCK",
        "table=0,priority=1,ip,nw_dst=10.0.0.1 actions=output:1",
    ]);
    let types: Vec<u8> = captured.iter().map(|m| m[1]).collect();
    assert_eq!(types, [34], "ovs-ofctl --bundle sent {captured:02x?}");
    match Message::decode(&captured[0]).unwrap().2 {
        Message::BundleAdd { flags, inner, .. } => {
            assert_eq!(flags, bundle_flags::ATOMIC | bundle_flags::ORDERED);
            assert!(matches!(*inner, Message::FlowMod(_)));
        }
        m => panic!("{m:?}"),
    }
    let xid = u32::from_be_bytes(captured[0][4..8].try_into().unwrap());
    let (_, _, m) = Message::decode(&captured[0]).unwrap();
    assert_eq!(hex(&m.to_bytes(xid).unwrap()), hex(&captured[0]));

    for text in [
        "group_id=7,type=select,selection_method=hash,fields(ip_src,ip_dst,tcp_dst),bucket=bucket_id:0,weight:100,actions=ct(commit,zone=1,nat(dst=10.1.0.2:80)),bucket=bucket_id:1,weight:50,actions=output:3",
        "group_id=8,type=select,selection_method=dp_hash,bucket=bucket_id:0,weight:10,actions=output:1,bucket=bucket_id:1,weight:20,actions=output:2",
        "group_id=9,type=all,bucket=bucket_id:0,actions=output:1,bucket=bucket_id:1,actions=output:2",
        "group_id=10,type=indirect,bucket=bucket_id:0,actions=resubmit(,5)",
    ] {
        let captured = ofctl_capture(&["add-group", "SOCK", text]);
        assert_eq!(captured.len(), 1, "{text}");
        let (_, xid, m) = Message::decode(&captured[0]).unwrap();
        assert_eq!(hex(&m.to_bytes(xid).unwrap()), hex(&captured[0]), "{text}");
        let Message::GroupMod(gm) = m else {
            panic!("expected group_mod")
        };
        let ours = gm.group.to_string();
        let again = ofctl_capture(&["add-group", "SOCK", &ours]);
        let (_, _, m2) = Message::decode(&again[0]).unwrap();
        assert_eq!(m2, Message::GroupMod(gm), "{text} displayed as {ours}");
    }
}

#[test]
fn decodes_stats_requests_produced_by_ovs_ofctl() {
    let captured = ofctl_capture(&["dump-flows", "SOCK", "cookie=0x1/0xff,table=3,ip"]);
    assert_eq!(captured.len(), 1);
    let (_, xid, m) = Message::decode(&captured[0]).unwrap();
    let expect = FlowStatsRequest {
        table: 3,
        matches: vec![MatchField::eth_type(0x0800)],
        ..FlowStatsRequest::cookie(1, 0xff)
    };
    assert_eq!(
        m,
        Message::MultipartRequest(MultipartRequest::Flow(expect.clone()))
    );
    assert_eq!(
        hex(&Message::MultipartRequest(MultipartRequest::Flow(expect))
            .to_bytes(xid)
            .unwrap()),
        hex(&captured[0])
    );
    let captured = ofctl_capture(&["dump-groups", "SOCK"]);
    let (_, xid, m) = Message::decode(&captured[0]).unwrap();
    assert_eq!(
        m,
        Message::MultipartRequest(MultipartRequest::GroupDesc(ALL_GROUPS))
    );
    assert_eq!(hex(&m.to_bytes(xid).unwrap()), hex(&captured[0]));
}

/// Decoding arbitrary and truncated bytes returns errors, never panics.
#[test]
fn decoder_survives_random_and_truncated_input() {
    let mut seeds: Vec<Vec<u8>> = vec![
        Message::FlowMod(FlowMod::add(service_flow()))
            .to_bytes(1)
            .unwrap(),
        Message::GroupMod(GroupMod::add(service_group()))
            .to_bytes(2)
            .unwrap(),
        Message::BundleAdd {
            bundle_id: 1,
            flags: 1,
            inner: Box::new(Message::FlowMod(FlowMod::add(service_flow()))),
        }
        .to_bytes(3)
        .unwrap(),
    ];
    for text in OFCTL_FLOWS {
        seeds.push(
            Message::FlowMod(FlowMod::add(Flow::new(0, 0)))
                .to_bytes(0)
                .unwrap(),
        );
        let _ = text;
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for seed in &seeds {
        for cut in 0..seed.len() {
            let _ = Message::decode(&seed[..cut]);
        }
        for _ in 0..3000 {
            let mut m = seed.clone();
            let flips = 1 + next() % 4;
            for _ in 0..flips {
                let i = usize::try_from(next() % m.len() as u64).unwrap();
                m[i] = u8::try_from(next() & 0xff).unwrap();
            }
            if let Ok((_, _, msg)) = Message::decode(&m) {
                // Whatever decodes must also encode and print.
                let _ = msg.to_bytes(0).unwrap();
                let _ = format!("{msg:?}");
                if let Message::FlowMod(fm) = &msg {
                    let _ = fm.to_string();
                }
            }
        }
    }
    for _ in 0..20000 {
        let len = usize::try_from(next() % 200).unwrap();
        let mut m: Vec<u8> = (0..len)
            .map(|_| u8::try_from(next() & 0xff).unwrap())
            .collect();
        if m.len() >= 4 {
            m[0] = 6;
            let l = u16::try_from(m.len()).unwrap().to_be_bytes();
            m[2] = l[0];
            m[3] = l[1];
        }
        let _ = Message::decode(&m);
    }
}

/// The fuzz seeds (golden messages) and every input the fuzzer once crashed
/// on (`regression_*`) decode without panicking.
#[test]
fn fuzz_seeds_and_regressions_decode_without_panic() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/openflow_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok((_, xid, msg)) = Message::decode(&bytes) {
            let _ = Message::decode(&msg.to_bytes(xid).unwrap());
            let _ = format!("{msg:?}");
        }
        n += 1;
    }
    assert!(n >= 15, "seeds missing from {dir}");
}

#[test]
fn decodes_tlv_map_produced_by_ovs_ofctl() {
    let captured = ofctl_capture(&[
        "add-tlv-map",
        "SOCK",
        "{class=0xffff,type=0,len=4}->tun_metadata0,{class=0x0102,type=0x80,len=8}->tun_metadata1",
    ]);
    assert_eq!(captured.len(), 1, "{captured:02x?}");
    let (_, xid, m) = Message::decode(&captured[0]).unwrap();
    let expect = Message::TlvTableMod {
        command: TlvTableCommand::Add,
        maps: vec![
            TlvMap {
                option_class: 0xffff,
                option_type: 0,
                option_len: 4,
                index: 0,
            },
            TlvMap {
                option_class: 0x0102,
                option_type: 0x80,
                option_len: 8,
                index: 1,
            },
        ],
    };
    assert_eq!(m, expect);
    assert_eq!(hex(&expect.to_bytes(xid).unwrap()), hex(&captured[0]));
}

#[test]
fn decodes_meter_mods_produced_by_ovs_ofctl() {
    for (text, expect) in [
        (
            "meter=1,pktps,band=type=drop,rate=100",
            MeterMod::add_pktps(1, 100),
        ),
        (
            "meter=2,kbps,burst,stats,band=type=drop,rate=1000,burst_size=50",
            MeterMod {
                command: MeterModCommand::Add,
                meter_id: 2,
                pktps: false,
                burst: true,
                stats: true,
                drop_bands: vec![(1000, 50)],
            },
        ),
    ] {
        let captured = ofctl_capture(&["add-meter", "SOCK", text]);
        assert_eq!(captured.len(), 1, "{captured:02x?}");
        let (_, xid, m) = Message::decode(&captured[0]).unwrap();
        assert_eq!(m, Message::MeterMod(expect.clone()), "{text}");
        assert_eq!(
            hex(&Message::MeterMod(expect.clone()).to_bytes(xid).unwrap()),
            hex(&captured[0])
        );
        assert_eq!(expect.to_string(), format!("add {text}"));
    }
}

#[test]
fn ct_flush_is_byte_identical_to_ovs_ofctl() {
    let v4 = |s: &str| Some(IpAddr::V4(s.parse::<Ipv4Addr>().unwrap()));
    let cases = [
        (
            vec![
                "ct-flush",
                "SOCK",
                "zone=65520",
                "ct_nw_dst=10.96.0.1,ct_nw_proto=17,ct_tp_dst=53",
                "ct_nw_src=10.244.0.11,ct_nw_proto=17,ct_tp_src=5353",
            ],
            Message::CtFlush {
                zone: Some(65520),
                ip_proto: 17,
                orig: CtTuple {
                    dst: v4("10.96.0.1"),
                    dst_port: Some(53),
                    ..CtTuple::default()
                },
                reply: CtTuple {
                    src: v4("10.244.0.11"),
                    src_port: Some(5353),
                    ..CtTuple::default()
                },
            },
        ),
        (
            vec![
                "ct-flush",
                "SOCK",
                "zone=7",
                "ct_nw_src=1.2.3.4,ct_nw_dst=5.6.7.8,ct_nw_proto=6,ct_tp_src=1,ct_tp_dst=2",
            ],
            Message::CtFlush {
                zone: Some(7),
                ip_proto: 6,
                orig: CtTuple {
                    src: v4("1.2.3.4"),
                    dst: v4("5.6.7.8"),
                    src_port: Some(1),
                    dst_port: Some(2),
                },
                reply: CtTuple::default(),
            },
        ),
    ];
    for (args, msg) in cases {
        let captured = ofctl_capture(&args);
        assert_eq!(captured.len(), 1, "{captured:02x?}");
        let xid = u32::from_be_bytes([
            captured[0][4],
            captured[0][5],
            captured[0][6],
            captured[0][7],
        ]);
        assert_eq!(
            hex(&msg.to_bytes(xid).unwrap()),
            hex(&captured[0]),
            "{args:?}"
        );
    }
}

/// Encodes `msg` in its OpenFlow 1.3 form with xid 7; checks the golden
/// bytes and that ovs-ofctl prints them as OF1.3 with `expect`.
fn check13(name: &str, msg: &Message, golden: &str, expect: &str) {
    assert!(msg.encodable_as(OFP13_VERSION), "{name}");
    let mut b = bytes::BytesMut::new();
    msg.encode_as(OFP13_VERSION, 7, &mut b).unwrap();
    let printed = ofp_print(&b);
    assert!(
        printed.contains(expect),
        "{name}: ovs-ofctl ofp-print of our bytes\n{}\nprinted\n{printed}\nexpected to contain\n{expect}",
        hex(&b)
    );
    assert!(!printed.contains("decode error"), "{name}: {printed}");
    assert_eq!(
        hex(&b),
        hex(&unhex(golden)),
        "{name}: bytes differ from golden"
    );
}

/// The OpenFlow 1.3 forms (a bridge whose `protocols` allow no 1.5): the
/// service flow with registers matched as `NXM_NX_REGn` (no xreg class in
/// 1.3), `move` as `NXAST_REG_MOVE` and the masked `set_field` as
/// `NXAST_REG_LOAD`; SET_ASYNC as the fixed 1.3 `ofp_async_config`.
#[test]
fn golden_of13_forms() {
    check13(
        "flow_mod service (OF1.3)",
        &Message::FlowMod(FlowMod::add(service_flow())),
        "040e011800000007000000000000123400000000000000000300000000000064ffffffffffffffff
         ffffffff0000000000010051800000040000000580000a0208008000140106800017080a000000ff
         ffff00800018040a60000180001c0200500001070800000005000000ff0001d30800000021000000
         210001d60400000001000000000000000004008800000000ffff00400000232000230001000000000
         005ff0000000000ffff00180000232000240000000200110a0100021f900000001900100001d60400
         00000700000000ffff0018000023200007000f000100040000000000000022ffff00180000232000
         060020000000000001020400010404ffff001000002320002cfff8040000000001000809000000",
        "OFPT_FLOW_MOD (OF1.3) (xid=0x7): ADD table:3 priority=100,ct_state=+new+trk,ct_mark=0x1,\
         tcp,reg3=0x5/0xff,in_port=5,nw_src=10.0.0.0/24,nw_dst=10.96.0.1,tp_dst=80 cookie:0x1234 \
         actions=ct(commit,zone=5,nat(dst=10.1.0.2:8080),exec(set_field:0x7->ct_mark)),\
         load:0x22->NXM_NX_REG0[0..15],move:NXM_NX_REG1[]->NXM_NX_REG2[],resubmit(,4,ct),goto_table:9",
    );
    check13(
        "set_async (OF1.3)",
        &Message::SetAsync {
            packet_in_mask: 0x3f,
        },
        "041c002000000007 0000003f 0000003f 00000000 00000000 00000000 00000000",
        "OFPT_SET_ASYNC (OF1.3) (xid=0x7)",
    );
    // 1.5-only messages have no 1.3 form and append nothing.
    let mut b = bytes::BytesMut::new();
    for msg in [
        Message::GroupMod(GroupMod::add(service_group())),
        Message::BundleControl {
            bundle_id: 1,
            ctrl: BundleCtrlType::OpenRequest,
            flags: 0,
        },
        Message::MultipartRequest(MultipartRequest::Flow(FlowStatsRequest::all())),
        Message::FlowMod(FlowMod::add(Flow::new(0, 1).action(Action::Meter(1)))),
    ] {
        assert!(!msg.encodable_as(OFP13_VERSION), "{msg:?}");
        assert!(matches!(
            msg.encode_as(OFP13_VERSION, 7, &mut b),
            Err(EncodeError::NoEncoding { .. })
        ));
        assert!(msg.encodable_as(OFP15_VERSION));
    }
    assert!(b.is_empty());
}
