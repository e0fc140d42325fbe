//! Match fields (OXM / NXM) and their values.
//!
//! A [`MatchField`] is one field with a value and an optional mask. On the wire
//! (OpenFlow 1.5) each field is written with the header Open vSwitch itself
//! prefers for that version: the standard OXM header where OpenFlow defines
//! one, otherwise the Nicira NXM header (registers, conntrack fields,
//! `pkt_mark`, `conj_id`, tunnel addresses). The decoder accepts both forms.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use bytes::{BufMut, BytesMut};

use super::wire::{DResult, DecodeError, Reader};

/// OXM class of standard OpenFlow fields.
pub const OFPXMC_OPENFLOW_BASIC: u16 = 0x8000;
/// OXM class of experimenter fields.
pub const OFPXMC_EXPERIMENTER: u16 = 0xffff;
/// NXM class 0 (`NXM_OF_*`).
pub const NXM_OF: u16 = 0x0000;
/// NXM class 1 (`NXM_NX_*`).
pub const NXM_NX: u16 = 0x0001;
/// Nicira experimenter id.
pub const NX_VENDOR_ID: u32 = 0x0000_2320;
/// ONF experimenter id.
pub const ONF_VENDOR_ID: u32 = 0x4f4e_4600;

/// A match or set-field field. Registers and `xxreg`s carry their index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// Ingress port (`in_port`).
    InPort,
    /// Ethernet destination (`dl_dst`).
    EthDst,
    /// Ethernet source (`dl_src`).
    EthSrc,
    /// Ethertype (`dl_type`).
    EthType,
    /// OXM VLAN id including the 0x1000 "present" bit (`vlan_vid`).
    VlanVid,
    /// VLAN priority (`dl_vlan_pcp`).
    VlanPcp,
    /// IP protocol (`nw_proto`).
    IpProto,
    /// IPv4 source (`nw_src`).
    Ipv4Src,
    /// IPv4 destination (`nw_dst`).
    Ipv4Dst,
    /// TCP source port.
    TcpSrc,
    /// TCP destination port.
    TcpDst,
    /// UDP source port.
    UdpSrc,
    /// UDP destination port.
    UdpDst,
    /// SCTP source port.
    SctpSrc,
    /// SCTP destination port.
    SctpDst,
    /// ICMPv4 type.
    IcmpType,
    /// ICMPv4 code.
    IcmpCode,
    /// ARP opcode.
    ArpOp,
    /// ARP sender protocol address.
    ArpSpa,
    /// ARP target protocol address.
    ArpTpa,
    /// ARP sender hardware address.
    ArpSha,
    /// ARP target hardware address.
    ArpTha,
    /// IPv6 source.
    Ipv6Src,
    /// IPv6 destination.
    Ipv6Dst,
    /// ICMPv6 type.
    Icmpv6Type,
    /// ICMPv6 code.
    Icmpv6Code,
    /// DSCP (6 bits, `ip_dscp`).
    IpDscp,
    /// ECN (2 bits, `nw_ecn`).
    IpEcn,
    /// IP TTL / hop limit (`nw_ttl`).
    IpTtl,
    /// IPv6 flow label.
    Ipv6Label,
    /// IPv6 neighbour discovery target.
    NdTarget,
    /// IPv6 ND source link-layer address.
    NdSll,
    /// IPv6 ND target link-layer address.
    NdTll,
    /// Tunnel id / VNI (`tun_id`).
    TunId,
    /// TCP flags.
    TcpFlags,
    /// OpenFlow metadata.
    Metadata,
    /// 32-bit register `reg0`..`reg15`.
    Reg(u8),
    /// 128-bit register `xxreg0`..`xxreg3`.
    Xxreg(u8),
    /// 64-bit register `xreg0`..`xreg7` (`reg2n` high, `reg2n+1` low). In
    /// OpenFlow 1.5 matches OVS writes registers in this form; matches built
    /// with [`Field::Reg`] are converted on the wire and decoded back to `Reg`.
    Xreg(u8),
    /// Tunnel IPv4 source.
    TunSrc,
    /// Tunnel IPv4 destination.
    TunDst,
    /// Conntrack state bits (see [`ct_state`]).
    CtState,
    /// Conntrack zone.
    CtZone,
    /// Conntrack mark.
    CtMark,
    /// Conntrack label (128 bits).
    CtLabel,
    /// Original-direction IP protocol of the connection.
    CtNwProto,
    /// Original-direction IPv4 source of the connection.
    CtNwSrc,
    /// Original-direction IPv4 destination of the connection.
    CtNwDst,
    /// Original-direction transport source port.
    CtTpSrc,
    /// Original-direction transport destination port.
    CtTpDst,
    /// Packet mark (skb mark).
    PktMark,
    /// Conjunction id.
    ConjId,
    /// Datapath hash.
    DpHash,
    /// Geneve option `tun_metadata<index>` (0..=63) of `len` bytes (at most
    /// 16 here), as mapped on the switch with [`super::Message::TlvTableMod`].
    TunMetadata {
        /// Index 0..=63.
        index: u8,
        /// Option length in bytes as mapped (multiple of 4).
        len: u8,
    },
    /// Any other field, kept as its raw header.
    Other {
        /// OXM/NXM class.
        class: u16,
        /// Field number.
        field: u8,
        /// Experimenter id (class 0xffff only, else 0).
        experimenter: u32,
        /// Value length in bytes (at most 16).
        len: u8,
    },
}

/// Conntrack state bits for [`Field::CtState`].
pub mod ct_state {
    /// Start of a new connection.
    pub const NEW: u32 = 0x01;
    /// Part of an established connection.
    pub const EST: u32 = 0x02;
    /// Related to an established connection.
    pub const REL: u32 = 0x04;
    /// Reply direction.
    pub const RPL: u32 = 0x08;
    /// Invalid.
    pub const INV: u32 = 0x10;
    /// Tracked.
    pub const TRK: u32 = 0x20;
    /// Source NATed.
    pub const SNAT: u32 = 0x40;
    /// Destination NATed.
    pub const DNAT: u32 = 0x80;
    pub(crate) const NAMES: [(u32, &str); 8] = [
        (NEW, "new"),
        (EST, "est"),
        (REL, "rel"),
        (RPL, "rpl"),
        (INV, "inv"),
        (TRK, "trk"),
        (SNAT, "snat"),
        (DNAT, "dnat"),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Port,
    Dec,
    Hex,
    Mac,
    Ipv4,
    Ipv6,
    CtState,
}

#[derive(Debug, Clone, Copy)]
struct Info {
    name: &'static str,
    nxm_name: &'static str,
    /// (class, field, len) of the NXM header, if the field has one.
    nxm: Option<(u16, u8, u8)>,
    /// (class, field, experimenter, len) of the standard OXM header, if any.
    oxm: Option<(u16, u8, u32, u8)>,
    kind: Kind,
}

const fn nx(
    name: &'static str,
    nxm_name: &'static str,
    class: u16,
    field: u8,
    len: u8,
    kind: Kind,
) -> Info {
    Info {
        name,
        nxm_name,
        nxm: Some((class, field, len)),
        oxm: None,
        kind,
    }
}

const fn both(
    name: &'static str,
    nxm_name: &'static str,
    nxm: (u16, u8, u8),
    oxm_field: u8,
    len: u8,
    kind: Kind,
) -> Info {
    Info {
        name,
        nxm_name,
        nxm: Some(nxm),
        oxm: Some((OFPXMC_OPENFLOW_BASIC, oxm_field, 0, len)),
        kind,
    }
}

const fn oxm_only(
    name: &'static str,
    oxm_name: &'static str,
    oxm_field: u8,
    len: u8,
    kind: Kind,
) -> Info {
    Info {
        name,
        nxm_name: oxm_name,
        nxm: None,
        oxm: Some((OFPXMC_OPENFLOW_BASIC, oxm_field, 0, len)),
        kind,
    }
}

const REG_NAMES: [&str; 16] = [
    "reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7", "reg8", "reg9", "reg10",
    "reg11", "reg12", "reg13", "reg14", "reg15",
];
const REG_NXM_NAMES: [&str; 16] = [
    "NXM_NX_REG0",
    "NXM_NX_REG1",
    "NXM_NX_REG2",
    "NXM_NX_REG3",
    "NXM_NX_REG4",
    "NXM_NX_REG5",
    "NXM_NX_REG6",
    "NXM_NX_REG7",
    "NXM_NX_REG8",
    "NXM_NX_REG9",
    "NXM_NX_REG10",
    "NXM_NX_REG11",
    "NXM_NX_REG12",
    "NXM_NX_REG13",
    "NXM_NX_REG14",
    "NXM_NX_REG15",
];
const TUN_METADATA_NAMES: [&str; 64] = [
    "tun_metadata0",
    "tun_metadata1",
    "tun_metadata2",
    "tun_metadata3",
    "tun_metadata4",
    "tun_metadata5",
    "tun_metadata6",
    "tun_metadata7",
    "tun_metadata8",
    "tun_metadata9",
    "tun_metadata10",
    "tun_metadata11",
    "tun_metadata12",
    "tun_metadata13",
    "tun_metadata14",
    "tun_metadata15",
    "tun_metadata16",
    "tun_metadata17",
    "tun_metadata18",
    "tun_metadata19",
    "tun_metadata20",
    "tun_metadata21",
    "tun_metadata22",
    "tun_metadata23",
    "tun_metadata24",
    "tun_metadata25",
    "tun_metadata26",
    "tun_metadata27",
    "tun_metadata28",
    "tun_metadata29",
    "tun_metadata30",
    "tun_metadata31",
    "tun_metadata32",
    "tun_metadata33",
    "tun_metadata34",
    "tun_metadata35",
    "tun_metadata36",
    "tun_metadata37",
    "tun_metadata38",
    "tun_metadata39",
    "tun_metadata40",
    "tun_metadata41",
    "tun_metadata42",
    "tun_metadata43",
    "tun_metadata44",
    "tun_metadata45",
    "tun_metadata46",
    "tun_metadata47",
    "tun_metadata48",
    "tun_metadata49",
    "tun_metadata50",
    "tun_metadata51",
    "tun_metadata52",
    "tun_metadata53",
    "tun_metadata54",
    "tun_metadata55",
    "tun_metadata56",
    "tun_metadata57",
    "tun_metadata58",
    "tun_metadata59",
    "tun_metadata60",
    "tun_metadata61",
    "tun_metadata62",
    "tun_metadata63",
];
const TUN_METADATA_NXM_NAMES: [&str; 64] = [
    "NXM_NX_TUN_METADATA0",
    "NXM_NX_TUN_METADATA1",
    "NXM_NX_TUN_METADATA2",
    "NXM_NX_TUN_METADATA3",
    "NXM_NX_TUN_METADATA4",
    "NXM_NX_TUN_METADATA5",
    "NXM_NX_TUN_METADATA6",
    "NXM_NX_TUN_METADATA7",
    "NXM_NX_TUN_METADATA8",
    "NXM_NX_TUN_METADATA9",
    "NXM_NX_TUN_METADATA10",
    "NXM_NX_TUN_METADATA11",
    "NXM_NX_TUN_METADATA12",
    "NXM_NX_TUN_METADATA13",
    "NXM_NX_TUN_METADATA14",
    "NXM_NX_TUN_METADATA15",
    "NXM_NX_TUN_METADATA16",
    "NXM_NX_TUN_METADATA17",
    "NXM_NX_TUN_METADATA18",
    "NXM_NX_TUN_METADATA19",
    "NXM_NX_TUN_METADATA20",
    "NXM_NX_TUN_METADATA21",
    "NXM_NX_TUN_METADATA22",
    "NXM_NX_TUN_METADATA23",
    "NXM_NX_TUN_METADATA24",
    "NXM_NX_TUN_METADATA25",
    "NXM_NX_TUN_METADATA26",
    "NXM_NX_TUN_METADATA27",
    "NXM_NX_TUN_METADATA28",
    "NXM_NX_TUN_METADATA29",
    "NXM_NX_TUN_METADATA30",
    "NXM_NX_TUN_METADATA31",
    "NXM_NX_TUN_METADATA32",
    "NXM_NX_TUN_METADATA33",
    "NXM_NX_TUN_METADATA34",
    "NXM_NX_TUN_METADATA35",
    "NXM_NX_TUN_METADATA36",
    "NXM_NX_TUN_METADATA37",
    "NXM_NX_TUN_METADATA38",
    "NXM_NX_TUN_METADATA39",
    "NXM_NX_TUN_METADATA40",
    "NXM_NX_TUN_METADATA41",
    "NXM_NX_TUN_METADATA42",
    "NXM_NX_TUN_METADATA43",
    "NXM_NX_TUN_METADATA44",
    "NXM_NX_TUN_METADATA45",
    "NXM_NX_TUN_METADATA46",
    "NXM_NX_TUN_METADATA47",
    "NXM_NX_TUN_METADATA48",
    "NXM_NX_TUN_METADATA49",
    "NXM_NX_TUN_METADATA50",
    "NXM_NX_TUN_METADATA51",
    "NXM_NX_TUN_METADATA52",
    "NXM_NX_TUN_METADATA53",
    "NXM_NX_TUN_METADATA54",
    "NXM_NX_TUN_METADATA55",
    "NXM_NX_TUN_METADATA56",
    "NXM_NX_TUN_METADATA57",
    "NXM_NX_TUN_METADATA58",
    "NXM_NX_TUN_METADATA59",
    "NXM_NX_TUN_METADATA60",
    "NXM_NX_TUN_METADATA61",
    "NXM_NX_TUN_METADATA62",
    "NXM_NX_TUN_METADATA63",
];
const XREG_NAMES: [&str; 8] = [
    "xreg0", "xreg1", "xreg2", "xreg3", "xreg4", "xreg5", "xreg6", "xreg7",
];
const XREG_OXM_NAMES: [&str; 8] = [
    "OXM_OF_PKT_REG0",
    "OXM_OF_PKT_REG1",
    "OXM_OF_PKT_REG2",
    "OXM_OF_PKT_REG3",
    "OXM_OF_PKT_REG4",
    "OXM_OF_PKT_REG5",
    "OXM_OF_PKT_REG6",
    "OXM_OF_PKT_REG7",
];
/// OXM class of OpenFlow 1.5 packet registers (OVS's `xreg`s).
pub const OFPXMC_PACKET_REGS: u16 = 0x8001;
const XXREG_NAMES: [&str; 4] = ["xxreg0", "xxreg1", "xxreg2", "xxreg3"];
const XXREG_NXM_NAMES: [&str; 4] = [
    "NXM_NX_XXREG0",
    "NXM_NX_XXREG1",
    "NXM_NX_XXREG2",
    "NXM_NX_XXREG3",
];

impl Field {
    fn info(self) -> Info {
        use Kind::*;
        match self {
            Field::InPort => both("in_port", "NXM_OF_IN_PORT", (NXM_OF, 0, 2), 0, 4, Port),
            Field::EthDst => both("dl_dst", "NXM_OF_ETH_DST", (NXM_OF, 1, 6), 3, 6, Mac),
            Field::EthSrc => both("dl_src", "NXM_OF_ETH_SRC", (NXM_OF, 2, 6), 4, 6, Mac),
            Field::EthType => both("dl_type", "NXM_OF_ETH_TYPE", (NXM_OF, 3, 2), 5, 2, Hex),
            Field::VlanVid => oxm_only("vlan_vid", "OXM_OF_VLAN_VID", 6, 2, Dec),
            Field::VlanPcp => oxm_only("dl_vlan_pcp", "OXM_OF_VLAN_PCP", 7, 1, Dec),
            Field::IpProto => both("nw_proto", "NXM_OF_IP_PROTO", (NXM_OF, 6, 1), 10, 1, Dec),
            Field::Ipv4Src => both("nw_src", "NXM_OF_IP_SRC", (NXM_OF, 7, 4), 11, 4, Ipv4),
            Field::Ipv4Dst => both("nw_dst", "NXM_OF_IP_DST", (NXM_OF, 8, 4), 12, 4, Ipv4),
            Field::TcpSrc => both("tcp_src", "NXM_OF_TCP_SRC", (NXM_OF, 9, 2), 13, 2, Dec),
            Field::TcpDst => both("tcp_dst", "NXM_OF_TCP_DST", (NXM_OF, 10, 2), 14, 2, Dec),
            Field::UdpSrc => both("udp_src", "NXM_OF_UDP_SRC", (NXM_OF, 11, 2), 15, 2, Dec),
            Field::UdpDst => both("udp_dst", "NXM_OF_UDP_DST", (NXM_OF, 12, 2), 16, 2, Dec),
            Field::SctpSrc => oxm_only("sctp_src", "OXM_OF_SCTP_SRC", 17, 2, Dec),
            Field::SctpDst => oxm_only("sctp_dst", "OXM_OF_SCTP_DST", 18, 2, Dec),
            Field::IcmpType => both("icmp_type", "NXM_OF_ICMP_TYPE", (NXM_OF, 13, 1), 19, 1, Dec),
            Field::IcmpCode => both("icmp_code", "NXM_OF_ICMP_CODE", (NXM_OF, 14, 1), 20, 1, Dec),
            Field::ArpOp => both("arp_op", "NXM_OF_ARP_OP", (NXM_OF, 15, 2), 21, 2, Dec),
            Field::ArpSpa => both("arp_spa", "NXM_OF_ARP_SPA", (NXM_OF, 16, 4), 22, 4, Ipv4),
            Field::ArpTpa => both("arp_tpa", "NXM_OF_ARP_TPA", (NXM_OF, 17, 4), 23, 4, Ipv4),
            Field::ArpSha => both("arp_sha", "NXM_NX_ARP_SHA", (NXM_NX, 17, 6), 24, 6, Mac),
            Field::ArpTha => both("arp_tha", "NXM_NX_ARP_THA", (NXM_NX, 18, 6), 25, 6, Mac),
            Field::Ipv6Src => both(
                "ipv6_src",
                "NXM_NX_IPV6_SRC",
                (NXM_NX, 19, 16),
                26,
                16,
                Ipv6,
            ),
            Field::Ipv6Dst => both(
                "ipv6_dst",
                "NXM_NX_IPV6_DST",
                (NXM_NX, 20, 16),
                27,
                16,
                Ipv6,
            ),
            Field::Icmpv6Type => both(
                "icmpv6_type",
                "NXM_NX_ICMPV6_TYPE",
                (NXM_NX, 21, 1),
                29,
                1,
                Dec,
            ),
            Field::Icmpv6Code => both(
                "icmpv6_code",
                "NXM_NX_ICMPV6_CODE",
                (NXM_NX, 22, 1),
                30,
                1,
                Dec,
            ),
            Field::IpDscp => oxm_only("ip_dscp", "OXM_OF_IP_DSCP", 8, 1, Dec),
            Field::IpEcn => both("nw_ecn", "NXM_NX_IP_ECN", (NXM_NX, 28, 1), 9, 1, Dec),
            Field::IpTtl => nx("nw_ttl", "NXM_NX_IP_TTL", NXM_NX, 29, 1, Dec),
            Field::Ipv6Label => both(
                "ipv6_label",
                "NXM_NX_IPV6_LABEL",
                (NXM_NX, 27, 4),
                28,
                4,
                Hex,
            ),
            Field::NdTarget => both(
                "nd_target",
                "NXM_NX_ND_TARGET",
                (NXM_NX, 23, 16),
                31,
                16,
                Ipv6,
            ),
            Field::NdSll => both("nd_sll", "NXM_NX_ND_SLL", (NXM_NX, 24, 6), 32, 6, Mac),
            Field::NdTll => both("nd_tll", "NXM_NX_ND_TLL", (NXM_NX, 25, 6), 33, 6, Mac),
            Field::TunId => both("tun_id", "NXM_NX_TUN_ID", (NXM_NX, 16, 8), 38, 8, Hex),
            Field::TcpFlags => both("tcp_flags", "NXM_NX_TCP_FLAGS", (NXM_NX, 34, 2), 42, 2, Hex),
            Field::Metadata => oxm_only("metadata", "OXM_OF_METADATA", 2, 8, Hex),
            Field::Reg(n) => {
                let i = usize::from(n.min(15));
                nx(REG_NAMES[i], REG_NXM_NAMES[i], NXM_NX, n.min(15), 4, Hex)
            }
            Field::Xxreg(n) => {
                let i = usize::from(n.min(3));
                nx(
                    XXREG_NAMES[i],
                    XXREG_NXM_NAMES[i],
                    NXM_NX,
                    111 + n.min(3),
                    16,
                    Hex,
                )
            }
            Field::Xreg(n) => {
                let i = usize::from(n.min(7));
                Info {
                    name: XREG_NAMES[i],
                    nxm_name: XREG_OXM_NAMES[i],
                    nxm: None,
                    oxm: Some((OFPXMC_PACKET_REGS, n.min(7), 0, 8)),
                    kind: Hex,
                }
            }
            Field::TunSrc => nx("tun_src", "NXM_NX_TUN_IPV4_SRC", NXM_NX, 31, 4, Ipv4),
            Field::TunDst => nx("tun_dst", "NXM_NX_TUN_IPV4_DST", NXM_NX, 32, 4, Ipv4),
            Field::CtState => nx("ct_state", "NXM_NX_CT_STATE", NXM_NX, 105, 4, CtState),
            Field::CtZone => nx("ct_zone", "NXM_NX_CT_ZONE", NXM_NX, 106, 2, Dec),
            Field::CtMark => nx("ct_mark", "NXM_NX_CT_MARK", NXM_NX, 107, 4, Hex),
            Field::CtLabel => nx("ct_label", "NXM_NX_CT_LABEL", NXM_NX, 108, 16, Hex),
            Field::CtNwProto => nx("ct_nw_proto", "NXM_NX_CT_NW_PROTO", NXM_NX, 119, 1, Dec),
            Field::CtNwSrc => nx("ct_nw_src", "NXM_NX_CT_NW_SRC", NXM_NX, 120, 4, Ipv4),
            Field::CtNwDst => nx("ct_nw_dst", "NXM_NX_CT_NW_DST", NXM_NX, 121, 4, Ipv4),
            Field::CtTpSrc => nx("ct_tp_src", "NXM_NX_CT_TP_SRC", NXM_NX, 124, 2, Dec),
            Field::CtTpDst => nx("ct_tp_dst", "NXM_NX_CT_TP_DST", NXM_NX, 125, 2, Dec),
            Field::PktMark => nx("pkt_mark", "NXM_NX_PKT_MARK", NXM_NX, 33, 4, Hex),
            Field::ConjId => nx("conj_id", "NXM_NX_CONJ_ID", NXM_NX, 37, 4, Dec),
            Field::DpHash => nx("dp_hash", "NXM_NX_DP_HASH", NXM_NX, 35, 4, Hex),
            Field::TunMetadata { index, len } => {
                let i = usize::from(index.min(63));
                nx(
                    TUN_METADATA_NAMES[i],
                    TUN_METADATA_NXM_NAMES[i],
                    NXM_NX,
                    40 + index.min(63),
                    len.min(16),
                    Hex,
                )
            }
            Field::Other { .. } => Info {
                name: "unknown",
                nxm_name: "unknown",
                nxm: None,
                oxm: None,
                kind: Hex,
            },
        }
    }

    /// Every field this module models (excluding [`Field::Other`]).
    pub fn all() -> Vec<Field> {
        let mut v = vec![
            Field::InPort,
            Field::EthDst,
            Field::EthSrc,
            Field::EthType,
            Field::VlanVid,
            Field::VlanPcp,
            Field::IpProto,
            Field::Ipv4Src,
            Field::Ipv4Dst,
            Field::TcpSrc,
            Field::TcpDst,
            Field::UdpSrc,
            Field::UdpDst,
            Field::SctpSrc,
            Field::SctpDst,
            Field::IcmpType,
            Field::IcmpCode,
            Field::ArpOp,
            Field::ArpSpa,
            Field::ArpTpa,
            Field::ArpSha,
            Field::ArpTha,
            Field::Ipv6Src,
            Field::Ipv6Dst,
            Field::Icmpv6Type,
            Field::Icmpv6Code,
            Field::IpDscp,
            Field::IpEcn,
            Field::IpTtl,
            Field::Ipv6Label,
            Field::NdTarget,
            Field::NdSll,
            Field::NdTll,
            Field::TunId,
            Field::TcpFlags,
            Field::Metadata,
            Field::TunSrc,
            Field::TunDst,
            Field::CtState,
            Field::CtZone,
            Field::CtMark,
            Field::CtLabel,
            Field::CtNwProto,
            Field::CtNwSrc,
            Field::CtNwDst,
            Field::CtTpSrc,
            Field::CtTpDst,
            Field::PktMark,
            Field::ConjId,
            Field::DpHash,
        ];
        v.extend((0..16).map(Field::Reg));
        v.extend((0..4).map(Field::Xxreg));
        v.extend((0..8).map(Field::Xreg));
        v
    }

    /// The ovs-ofctl match name (`nw_src`, `reg3`, `ct_state`, ...).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The NXM (or OXM) name used in subfield syntax (`NXM_NX_REG3`).
    pub fn nxm_name(self) -> &'static str {
        self.info().nxm_name
    }

    /// Value width in bytes as used in OpenFlow 1.5 matches and set-field.
    pub fn len(self) -> usize {
        match self {
            Field::Other { len, .. } => usize::from(len),
            _ => {
                let i = self.info();
                usize::from(i.oxm.map(|o| o.3).or(i.nxm.map(|n| n.2)).unwrap_or(0))
            }
        }
    }

    /// Width in bits as seen in subfield (NXM) syntax, e.g. 16 for `NXM_OF_IN_PORT`.
    pub fn nxm_bits(self) -> u16 {
        let i = self.info();
        match i.nxm {
            Some((_, _, len)) => u16::from(len) * 8,
            None => u16::try_from(self.len() * 8).unwrap_or(0),
        }
    }

    /// Always false: fields have a positive width (clippy's `len` convention).
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Writes the OpenFlow 1.5 header (the one OVS prefers) for this field.
    pub(crate) fn put_oxm_header(self, out: &mut BytesMut, has_mask: bool) {
        let len = self.len();
        let wire_len = if has_mask { len * 2 } else { len };
        let (class, field, exp) = match self {
            Field::Other {
                class,
                field,
                experimenter,
                ..
            } => (class, field, experimenter),
            _ => {
                let i = self.info();
                match (i.oxm, i.nxm) {
                    (Some((c, f, e, _)), _) => (c, f, e),
                    (None, Some((c, f, _))) => (c, f, 0),
                    (None, None) => (0, 0, 0),
                }
            }
        };
        let exp_len = if class == OFPXMC_EXPERIMENTER { 4 } else { 0 };
        let header = (u32::from(class) << 16)
            | (u32::from(field) << 9)
            | (u32::from(has_mask) << 8)
            | (u32::try_from(wire_len + exp_len).unwrap_or(0) & 0xff);
        out.put_u32(header);
        if class == OFPXMC_EXPERIMENTER {
            out.put_u32(exp);
        }
    }

    /// Writes the NXM header (OVS's choice inside learn, ct zone, reg_move
    /// and other Nicira actions): NXM where the field has one, else OXM.
    pub(crate) fn put_nxm_header(self, out: &mut BytesMut) {
        match self.info().nxm {
            Some((class, field, len)) => {
                out.put_u32((u32::from(class) << 16) | (u32::from(field) << 9) | u32::from(len))
            }
            None => self.put_oxm_header(out, false),
        }
    }

    /// Reads a header (4 or 8 bytes); returns the field, whether a mask
    /// follows, and the value length on the wire.
    pub(crate) fn read_header(r: &mut Reader<'_>) -> DResult<(Field, bool, usize)> {
        let header = r.u32()?;
        let class = u16::try_from(header >> 16).unwrap_or(0);
        let field = u8::try_from((header >> 9) & 0x7f).unwrap_or(0);
        let has_mask = header & 0x100 != 0;
        let mut len = usize::try_from(header & 0xff).unwrap_or(0);
        let mut exp = 0;
        if class == OFPXMC_EXPERIMENTER {
            exp = r.u32()?;
            len = len.checked_sub(4).ok_or(DecodeError::BadLength {
                what: "experimenter OXM header",
                len,
            })?;
        }
        let value_len = if has_mask { len / 2 } else { len };
        if has_mask && len % 2 != 0 {
            return Err(DecodeError::BadLength {
                what: "masked OXM",
                len,
            });
        }
        let tun_metadata =
            (class == NXM_NX && (40..=103).contains(&field)).then(|| Field::TunMetadata {
                index: field - 40,
                len: u8::try_from(value_len).unwrap_or(0),
            });
        let f = tun_metadata
            .or_else(|| lookup(class, field, exp))
            .unwrap_or(Field::Other {
                class,
                field,
                experimenter: exp,
                len: u8::try_from(value_len).unwrap_or(0),
            });
        if value_len > 16 {
            return Err(DecodeError::Unsupported {
                what: "match field",
                detail: format!("class {class:#x} field {field} with {value_len}-byte value"),
            });
        }
        Ok((f, has_mask, value_len))
    }
}

fn lookup(class: u16, field: u8, exp: u32) -> Option<Field> {
    static MAP: OnceLock<HashMap<(u16, u8, u32), Field>> = OnceLock::new();
    let map = MAP.get_or_init(|| {
        let mut m = HashMap::new();
        for f in Field::all() {
            let i = f.info();
            if let Some((c, n, _)) = i.nxm {
                m.insert((c, n, 0), f);
            }
            if let Some((c, n, e, _)) = i.oxm {
                m.insert((c, n, e), f);
            }
        }
        // Experimenter OXM forms OVS may emit.
        m.insert((OFPXMC_EXPERIMENTER, 0, NX_VENDOR_ID), Field::DpHash);
        m.insert((OFPXMC_EXPERIMENTER, 42, ONF_VENDOR_ID), Field::TcpFlags);
        m
    });
    map.get(&(class, field, exp)).copied()
}

/// Converts an OpenFlow 1.0 16-bit port number into the 32-bit space.
pub(crate) fn port_from_16(p: u16) -> u32 {
    if p >= 0xff00 {
        0xffff_0000 | u32::from(p)
    } else {
        u32::from(p)
    }
}

/// Converts a 32-bit port number into the OpenFlow 1.0 16-bit space.
pub(crate) fn port_to_16(p: u32) -> u16 {
    if p >= 0xffff_ff00 {
        u16::try_from(p & 0xffff).unwrap_or(u16::MAX)
    } else {
        u16::try_from(p).unwrap_or(u16::MAX)
    }
}

/// One field of a match (or the target of a set-field), with value and optional mask.
///
/// Values are right-aligned in a `u128` (an IPv4 address is its `u32`, a MAC
/// its 48 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatchField {
    /// Which field.
    pub field: Field,
    /// The value.
    pub value: u128,
    /// The mask (`None` = exact).
    pub mask: Option<u128>,
}

fn mac(m: [u8; 6]) -> u128 {
    m.iter().fold(0u128, |a, b| (a << 8) | u128::from(*b))
}

fn prefix_mask(bits: u32, prefix: u8) -> Option<u128> {
    let p = u32::from(prefix).min(bits);
    if p == bits {
        None
    } else if p == 0 {
        Some(0)
    } else {
        let all = if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        Some(all & !((1u128 << (bits - p)) - 1))
    }
}

impl MatchField {
    /// Exact match of `field` against `value`.
    pub fn exact(field: Field, value: u128) -> Self {
        Self {
            field,
            value,
            mask: None,
        }
    }
    /// Masked match (`value/mask`); an all-ones mask gives an exact match,
    /// as OVS would store it.
    pub fn masked(field: Field, value: u128, mask: u128) -> Self {
        let bits = field.len() * 8;
        let all = if bits >= 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        Self {
            field,
            value: value & mask,
            mask: (mask & all != all).then_some(mask),
        }
    }
    /// `in_port=N`.
    pub fn in_port(port: u32) -> Self {
        Self::exact(Field::InPort, u128::from(port))
    }
    /// `dl_type=0x...`.
    pub fn eth_type(t: u16) -> Self {
        Self::exact(Field::EthType, u128::from(t))
    }
    /// `dl_src=..`.
    pub fn eth_src(m: [u8; 6]) -> Self {
        Self::exact(Field::EthSrc, mac(m))
    }
    /// `dl_dst=..`.
    pub fn eth_dst(m: [u8; 6]) -> Self {
        Self::exact(Field::EthDst, mac(m))
    }
    /// Tagged with VLAN `vid` (`dl_vlan=vid`).
    pub fn vlan_vid(vid: u16) -> Self {
        Self::exact(Field::VlanVid, u128::from(0x1000 | (vid & 0xfff)))
    }
    /// Untagged packets only.
    pub fn vlan_none() -> Self {
        Self::exact(Field::VlanVid, 0)
    }
    /// `dl_vlan_pcp=p`.
    pub fn vlan_pcp(p: u8) -> Self {
        Self::exact(Field::VlanPcp, u128::from(p))
    }
    /// `nw_proto=p`.
    pub fn ip_proto(p: u8) -> Self {
        Self::exact(Field::IpProto, u128::from(p))
    }
    /// `nw_src=addr/prefix`.
    pub fn ipv4_src(a: Ipv4Addr, prefix: u8) -> Self {
        Self::ip4(Field::Ipv4Src, a, prefix)
    }
    /// `nw_dst=addr/prefix`.
    pub fn ipv4_dst(a: Ipv4Addr, prefix: u8) -> Self {
        Self::ip4(Field::Ipv4Dst, a, prefix)
    }
    /// Any IPv4-valued field with a prefix mask.
    pub fn ip4(field: Field, a: Ipv4Addr, prefix: u8) -> Self {
        let v = u128::from(u32::from(a));
        match prefix_mask(32, prefix) {
            None => Self::exact(field, v),
            Some(m) => Self::masked(field, v, m),
        }
    }
    /// `ipv6_src=addr/prefix`.
    pub fn ipv6_src(a: Ipv6Addr, prefix: u8) -> Self {
        Self::ip6(Field::Ipv6Src, a, prefix)
    }
    /// `ipv6_dst=addr/prefix`.
    pub fn ipv6_dst(a: Ipv6Addr, prefix: u8) -> Self {
        Self::ip6(Field::Ipv6Dst, a, prefix)
    }
    /// Any IPv6-valued field with a prefix mask.
    pub fn ip6(field: Field, a: Ipv6Addr, prefix: u8) -> Self {
        let v = u128::from(a);
        match prefix_mask(128, prefix) {
            None => Self::exact(field, v),
            Some(m) => Self::masked(field, v, m),
        }
    }
    /// `arp_op=op`.
    pub fn arp_op(op: u16) -> Self {
        Self::exact(Field::ArpOp, u128::from(op))
    }
    /// `arp_spa=addr`.
    pub fn arp_spa(a: Ipv4Addr) -> Self {
        Self::ip4(Field::ArpSpa, a, 32)
    }
    /// `arp_tpa=addr`.
    pub fn arp_tpa(a: Ipv4Addr) -> Self {
        Self::ip4(Field::ArpTpa, a, 32)
    }
    /// `arp_sha=mac`.
    pub fn arp_sha(m: [u8; 6]) -> Self {
        Self::exact(Field::ArpSha, mac(m))
    }
    /// `arp_tha=mac`.
    pub fn arp_tha(m: [u8; 6]) -> Self {
        Self::exact(Field::ArpTha, mac(m))
    }
    /// TCP destination port.
    pub fn tcp_dst(p: u16) -> Self {
        Self::exact(Field::TcpDst, u128::from(p))
    }
    /// TCP source port.
    pub fn tcp_src(p: u16) -> Self {
        Self::exact(Field::TcpSrc, u128::from(p))
    }
    /// UDP destination port.
    pub fn udp_dst(p: u16) -> Self {
        Self::exact(Field::UdpDst, u128::from(p))
    }
    /// UDP source port.
    pub fn udp_src(p: u16) -> Self {
        Self::exact(Field::UdpSrc, u128::from(p))
    }
    /// SCTP destination port.
    pub fn sctp_dst(p: u16) -> Self {
        Self::exact(Field::SctpDst, u128::from(p))
    }
    /// `tcp_flags=value/mask`.
    pub fn tcp_flags(value: u16, mask: u16) -> Self {
        Self::masked(Field::TcpFlags, u128::from(value), u128::from(mask))
    }
    /// `regN=value`.
    pub fn reg(n: u8, value: u32) -> Self {
        Self::exact(Field::Reg(n), u128::from(value))
    }
    /// `regN=value/mask`.
    pub fn reg_masked(n: u8, value: u32, mask: u32) -> Self {
        Self::masked(Field::Reg(n), u128::from(value), u128::from(mask))
    }
    /// `xxregN=value`.
    pub fn xxreg(n: u8, value: u128) -> Self {
        Self::exact(Field::Xxreg(n), value)
    }
    /// `metadata=value`.
    pub fn metadata(value: u64) -> Self {
        Self::exact(Field::Metadata, u128::from(value))
    }
    /// `tun_id=value`.
    pub fn tun_id(value: u64) -> Self {
        Self::exact(Field::TunId, u128::from(value))
    }
    /// `ct_state=` with the bits in `mask` required to equal those in `state`
    /// (see [`ct_state`]); e.g. `ct_state(TRK|NEW, TRK|NEW)` is `+new+trk`.
    pub fn ct_state(state: u32, mask: u32) -> Self {
        Self::masked(Field::CtState, u128::from(state), u128::from(mask))
    }
    /// `ct_zone=z`.
    pub fn ct_zone(z: u16) -> Self {
        Self::exact(Field::CtZone, u128::from(z))
    }
    /// `ct_mark=value/mask`.
    pub fn ct_mark(value: u32, mask: u32) -> Self {
        Self::maybe_masked(Field::CtMark, u128::from(value), u128::from(mask), 32)
    }
    /// `ct_label=value/mask`.
    pub fn ct_label(value: u128, mask: u128) -> Self {
        Self::maybe_masked(Field::CtLabel, value, mask, 128)
    }
    /// `ct_nw_dst=addr`.
    pub fn ct_nw_dst(a: Ipv4Addr) -> Self {
        Self::ip4(Field::CtNwDst, a, 32)
    }
    /// `ct_tp_dst=port`.
    pub fn ct_tp_dst(p: u16) -> Self {
        Self::exact(Field::CtTpDst, u128::from(p))
    }
    /// `pkt_mark=value/mask`.
    pub fn pkt_mark(value: u32, mask: u32) -> Self {
        Self::maybe_masked(Field::PktMark, u128::from(value), u128::from(mask), 32)
    }
    /// `tun_metadata<index>=value` for an option of `len` bytes (<= 16).
    pub fn tun_metadata(index: u8, len: u8, value: u128) -> Self {
        Self::exact(Field::TunMetadata { index, len }, value)
    }
    /// `conj_id=id`.
    pub fn conj_id(id: u32) -> Self {
        Self::exact(Field::ConjId, u128::from(id))
    }

    fn maybe_masked(field: Field, value: u128, mask: u128, bits: u32) -> Self {
        let all = if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        if mask & all == all {
            Self::exact(field, value)
        } else {
            Self::masked(field, value, mask)
        }
    }

    /// Encodes as an OXM TLV (header, value, mask).
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        self.field.put_oxm_header(out, self.mask.is_some());
        put_value(out, self.value, self.field.len());
        if let Some(m) = self.mask {
            put_value(out, m, self.field.len());
        }
    }

    /// Decodes one OXM/NXM TLV.
    pub(crate) fn decode(r: &mut Reader<'_>) -> DResult<Self> {
        let (mut field, has_mask, len) = Field::read_header(r)?;
        let mut value = get_value(r.bytes(len)?);
        let mut mask = if has_mask {
            Some(get_value(r.bytes(len)?))
        } else {
            None
        };
        if field == Field::InPort && len == 2 {
            value = u128::from(port_from_16(u16::try_from(value).unwrap_or(0)));
            mask = mask.map(|m| if m == 0xffff { u128::from(u32::MAX) } else { m });
        }
        if let Field::Other { len: l, .. } = &mut field {
            *l = u8::try_from(len).unwrap_or(0);
        }
        Ok(Self { field, value, mask })
    }
}

pub(crate) fn put_value(out: &mut BytesMut, v: u128, len: usize) {
    let b = v.to_be_bytes();
    out.put_slice(&b[16 - len.min(16)..]);
}

pub(crate) fn get_value(b: &[u8]) -> u128 {
    b.iter()
        .take(16)
        .fold(0u128, |a, x| (a << 8) | u128::from(*x))
}

/// Formats a port number the way ovs-ofctl does.
pub fn port_name(p: u32) -> String {
    match p {
        0xffff_fff8 => "IN_PORT".into(),
        0xffff_fff9 => "TABLE".into(),
        0xffff_fffa => "NORMAL".into(),
        0xffff_fffb => "FLOOD".into(),
        0xffff_fffc => "ALL".into(),
        0xffff_fffd => "CONTROLLER".into(),
        0xffff_fffe => "LOCAL".into(),
        0xffff_ffff => "ANY".into(),
        n => n.to_string(),
    }
}

fn fmt_mac(v: u128) -> String {
    let b = v.to_be_bytes();
    let m = &b[10..];
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn v4(v: u128) -> Ipv4Addr {
    Ipv4Addr::from(u32::try_from(v & 0xffff_ffff).unwrap_or(0))
}

fn cidr(v: u128, bits: u32) -> Option<u32> {
    let all = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let inv = !v & all;
    // A prefix mask is ones followed by zeros: its inverse is 2^k - 1.
    if inv & inv.wrapping_add(1) == 0 {
        Some(bits - (128 - inv.leading_zeros()))
    } else {
        None
    }
}

/// Formats a field's value (ovs-ofctl style).
pub(crate) fn fmt_value(field: Field, v: u128) -> String {
    match field.info().kind {
        Kind::Port => port_name(u32::try_from(v).unwrap_or(u32::MAX)),
        Kind::Dec => v.to_string(),
        Kind::Hex => format!("{v:#x}"),
        Kind::Mac => fmt_mac(v),
        Kind::Ipv4 => v4(v).to_string(),
        Kind::Ipv6 => Ipv6Addr::from(v).to_string(),
        Kind::CtState => format!("{v:#x}"),
    }
}

impl fmt::Display for MatchField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.field.info().kind;
        let name = self.field.name();
        if let Field::Other {
            class,
            field,
            experimenter,
            ..
        } = self.field
        {
            write!(
                f,
                "field({class:#x}:{field}:{experimenter:#x})={:#x}",
                self.value
            )?;
            if let Some(m) = self.mask {
                write!(f, "/{m:#x}")?;
            }
            return Ok(());
        }
        match (kind, self.mask) {
            (Kind::CtState, mask) => {
                let mask = mask.unwrap_or(0xff);
                write!(f, "{name}=")?;
                let mut any = false;
                for (bit, n) in ct_state::NAMES {
                    if mask & u128::from(bit) != 0 {
                        let sign = if self.value & u128::from(bit) != 0 {
                            '+'
                        } else {
                            '-'
                        };
                        write!(f, "{sign}{n}")?;
                        any = true;
                    }
                }
                if !any {
                    write!(f, "{:#x}/{:#x}", self.value, mask)?;
                }
                Ok(())
            }
            (Kind::Ipv4, Some(m)) => match cidr(m, 32) {
                Some(p) => write!(f, "{name}={}/{p}", v4(self.value)),
                None => write!(f, "{name}={}/{}", v4(self.value), v4(m)),
            },
            (Kind::Ipv6, Some(m)) => match cidr(m, 128) {
                Some(p) => write!(f, "{name}={}/{p}", Ipv6Addr::from(self.value)),
                None => write!(
                    f,
                    "{name}={}/{}",
                    Ipv6Addr::from(self.value),
                    Ipv6Addr::from(m)
                ),
            },
            (Kind::Mac, Some(m)) => write!(f, "{name}={}/{}", fmt_mac(self.value), fmt_mac(m)),
            (_, Some(m)) if self.field == Field::VlanVid => {
                write!(f, "vlan_tci={:#06x}/{:#06x}", self.value, m)
            }
            (_, Some(m)) => write!(f, "{name}={:#x}/{:#x}", self.value, m),
            (_, None) if self.field == Field::VlanVid => {
                if self.value & 0x1000 != 0 {
                    write!(f, "dl_vlan={}", self.value & 0xfff)
                } else {
                    write!(f, "vlan_tci=0x0000/0x1fff")
                }
            }
            (_, None) => write!(f, "{name}={}", fmt_value(self.field, self.value)),
        }
    }
}

/// Encodes a whole `ofp_match` (type OXM) including its padding, in its
/// OpenFlow 1.5 form.
pub(crate) fn encode_match(fields: &[MatchField], out: &mut BytesMut) {
    encode_match_for(fields, true, out);
}

/// Encodes a whole `ofp_match`; registers as 64-bit `xreg`s when `xregs`
/// (OpenFlow 1.5, as OVS does), else as 32-bit `NXM_NX_REGn` (OpenFlow 1.3,
/// which has no packet-register OXM class).
pub(crate) fn encode_match_for(fields: &[MatchField], xregs: bool, out: &mut BytesMut) {
    let start = out.len();
    out.put_u16(1); // OFPMT_OXM
    out.put_u16(0);
    let mut done = [false; 16];
    for f in fields {
        match f.field {
            // OVS writes 32-bit registers as 64-bit xregs in OpenFlow 1.5;
            // do the same (a register pair becomes one xreg).
            Field::Reg(n) if xregs && n < 16 => {
                if done[usize::from(n)] {
                    continue;
                }
                let x = n / 2;
                let (mut v, mut m) = (0u128, 0u128);
                for (k, shift) in [(x * 2, 32), (x * 2 + 1, 0)] {
                    if let Some(r) = fields.iter().find(|g| g.field == Field::Reg(k)) {
                        done[usize::from(k)] = true;
                        v |= (r.value & 0xffff_ffff) << shift;
                        m |= (r.mask.unwrap_or(0xffff_ffff) & 0xffff_ffff) << shift;
                    }
                }
                let xf = if m == u128::from(u64::MAX) {
                    MatchField::exact(Field::Xreg(x), v)
                } else {
                    MatchField::masked(Field::Xreg(x), v, m)
                };
                xf.encode(out);
            }
            _ => f.encode(out),
        }
    }
    super::wire::patch_len(out, start + 2, start);
    super::wire::pad8(out, start);
}

/// Decodes an `ofp_match` (type OXM), consuming its padding.
pub(crate) fn decode_match(r: &mut Reader<'_>) -> DResult<Vec<MatchField>> {
    let ty = r.u16()?;
    let len = usize::from(r.u16()?);
    if ty != 1 {
        return Err(DecodeError::Unsupported {
            what: "match type",
            detail: ty.to_string(),
        });
    }
    if len < 4 {
        return Err(DecodeError::BadLength { what: "match", len });
    }
    let mut body = r.sub(len - 4, "match")?;
    let padded = super::wire::round8(len);
    r.skip(padded - len)?;
    decode_oxms(&mut body)
}

/// Decodes OXM/NXM TLVs until the end of `body` (no `ofp_match` header),
/// splitting OVS's 64-bit `xreg`s back into 32-bit registers.
pub(crate) fn decode_oxms(body: &mut Reader<'_>) -> DResult<Vec<MatchField>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let m = MatchField::decode(body)?;
        match m.field {
            Field::Xreg(x) => {
                // Split back into the two 32-bit registers it covers.
                let mask = m.mask.unwrap_or(u128::from(u64::MAX));
                for (k, shift) in [(x * 2, 32), (x * 2 + 1, 0)] {
                    let rm = (mask >> shift) & 0xffff_ffff;
                    let rv = (m.value >> shift) & 0xffff_ffff;
                    if rm == 0xffff_ffff {
                        out.push(MatchField::exact(Field::Reg(k), rv));
                    } else if rm != 0 {
                        out.push(MatchField::masked(Field::Reg(k), rv, rm));
                    }
                }
            }
            _ => out.push(m),
        }
    }
    Ok(out)
}

/// Formats a match list ovs-ofctl style, folding `dl_type`/`nw_proto` into
/// `ip`, `tcp`, `udp`, `arp`, ... where possible.
pub fn fmt_match(fields: &[MatchField]) -> String {
    let get = |fl: Field| {
        fields
            .iter()
            .find(|m| m.field == fl && m.mask.is_none())
            .map(|m| m.value)
    };
    let et = get(Field::EthType);
    let proto = get(Field::IpProto);
    let (short, used_proto) = match (et, proto) {
        (Some(0x0800), Some(1)) => (Some("icmp"), true),
        (Some(0x0800), Some(6)) => (Some("tcp"), true),
        (Some(0x0800), Some(17)) => (Some("udp"), true),
        (Some(0x0800), Some(132)) => (Some("sctp"), true),
        (Some(0x86dd), Some(58)) => (Some("icmp6"), true),
        (Some(0x86dd), Some(6)) => (Some("tcp6"), true),
        (Some(0x86dd), Some(17)) => (Some("udp6"), true),
        (Some(0x0800), _) => (Some("ip"), false),
        (Some(0x86dd), _) => (Some("ipv6"), false),
        (Some(0x0806), _) => (Some("arp"), false),
        _ => (None, false),
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(s) = short {
        parts.push(s.to_string());
    }
    for m in fields {
        if short.is_some() && m.field == Field::EthType && m.mask.is_none() {
            continue;
        }
        if used_proto && m.field == Field::IpProto && m.mask.is_none() {
            continue;
        }
        parts.push(m.to_string());
    }
    parts.join(",")
}

/// A bit range of a field, as in `NXM_NX_REG0[0..15]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubField {
    /// The field.
    pub field: Field,
    /// First bit (from the least significant end).
    pub ofs: u16,
    /// Number of bits.
    pub n_bits: u16,
}

impl SubField {
    /// The whole field (`FIELD[]`), in its NXM width.
    pub fn whole(field: Field) -> Self {
        Self {
            field,
            ofs: 0,
            n_bits: field.nxm_bits(),
        }
    }
    /// Bits `start..=end` of the field (`FIELD[start..end]`).
    pub fn bits(field: Field, start: u16, end: u16) -> Self {
        Self {
            field,
            ofs: start,
            n_bits: end.saturating_sub(start) + 1,
        }
    }
    /// `(ofs << 6) | (n_bits - 1)` as in NXM actions.
    pub(crate) fn ofs_nbits(&self) -> u16 {
        (self.ofs << 6) | (self.n_bits.saturating_sub(1) & 0x3f)
    }
}

impl fmt::Display for SubField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.field.nxm_name();
        if self.ofs == 0 && self.n_bits == self.field.nxm_bits() {
            write!(f, "{name}[]")
        } else if self.n_bits == 1 {
            write!(f, "{name}[{}]", self.ofs)
        } else {
            let end = u32::from(self.ofs) + u32::from(self.n_bits);
            write!(f, "{name}[{}..{}]", self.ofs, end.saturating_sub(1))
        }
    }
}
