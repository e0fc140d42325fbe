//! Typed registers, `ct_mark` bits, conntrack zones and the tunnel key.
//!
//! A [`RegField`] is a bit range of one register together with the type of
//! value it holds, so a flow cannot load a VLAN into the port-kind bits:
//! `reg::PORT_KIND.load(PortKind::Gateway)` compiles,
//! `reg::PORT_KIND.load(100u16)` does not. A [`RegMark`] is a field with a
//! value, to load or to match.
//!
//! | register | bits | field | holds |
//! |---|---|---|---|
//! | reg0 | 0..=3 | [`reg::PORT_KIND`] | [`PortKind`] of the input port |
//! | reg0 | 4 | [`reg::GATEWAY_UNSNAT`] | the packet went through [`zone::GATEWAY_SNAT`] once |
//! | reg1 | all | [`reg::OUTPUT_PORT`] | output port chosen by L2 forwarding |
//! | reg2 | all | [`reg::SCRATCH`] | scratch within one flow's actions |
//! | reg3 | all | [`reg::ENDPOINT_IP`] | endpoint chosen for a Service connection |
//! | reg4 | 0..=17 | [`reg::ENDPOINT_PORT_AND_STATE`] | endpoint port (0..=15) and [`ServiceState`] (16..=17) |
//! | reg4 | 16..=17 | [`reg::SERVICE_STATE`] | [`ServiceState`] |
//! | reg4 | 18 | [`reg::HAIRPIN`] | hairpin packet: OUTPUT sends it back out of `in_port` |
//! | reg5 | all | [`reg::SEGMENT_VLAN`] | VLAN of the source's segment |

use std::marker::PhantomData;
use std::net::Ipv4Addr;

use switchyard_ovs::openflow::{Action, CtZone, Field, MatchField, SubField};

/// A value a [`RegField`] can hold.
pub trait RegValue: Copy {
    /// The value's bits, unshifted (bit 0 of the value is the field's first bit).
    fn bits(self) -> u32;
}

impl RegValue for u32 {
    fn bits(self) -> u32 {
        self
    }
}

impl RegValue for u16 {
    fn bits(self) -> u32 {
        u32::from(self)
    }
}

impl RegValue for bool {
    fn bits(self) -> u32 {
        u32::from(self)
    }
}

impl RegValue for Ipv4Addr {
    fn bits(self) -> u32 {
        u32::from(self)
    }
}

/// Bits `lo..=hi` of register `reg`, holding values of type `T`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RegField<T> {
    reg: u8,
    lo: u8,
    hi: u8,
    value: PhantomData<fn() -> T>,
}

// Not derived: a derive would require `T: Clone`.
impl<T> Clone for RegField<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RegField<T> {}

impl<T> RegField<T> {
    const fn new(reg: u8, lo: u8, hi: u8) -> Self {
        assert!(lo <= hi && hi < 32);
        Self {
            reg,
            lo,
            hi,
            value: PhantomData,
        }
    }

    /// The register number (`NXM_NX_REGn`).
    pub const fn reg(self) -> u8 {
        self.reg
    }

    /// The field's bits within the register.
    pub const fn mask(self) -> u32 {
        let width = self.hi - self.lo + 1;
        let ones = if width == 32 {
            u32::MAX
        } else {
            (1u32 << width) - 1
        };
        ones << self.lo
    }

    /// The field spans the whole register.
    pub const fn is_whole(self) -> bool {
        self.lo == 0 && self.hi == 31
    }

    /// The field as an NXM subfield (`NXM_NX_REGn[]` or `[lo..hi]`), for
    /// `move` and `learn`.
    pub fn subfield(self) -> SubField {
        if self.is_whole() {
            SubField::whole(Field::Reg(self.reg))
        } else {
            SubField::bits(Field::Reg(self.reg), self.lo.into(), self.hi.into())
        }
    }
}

impl<T: RegValue> RegField<T> {
    /// The field holding `value`.
    ///
    /// # Panics
    ///
    /// In debug builds, when `value` does not fit the field.
    pub fn mark(self, value: T) -> RegMark {
        let bits = value.bits();
        debug_assert!(
            (bits << self.lo) & !self.mask() == 0 && (bits << self.lo) >> self.lo == bits,
            "{bits:#x} does not fit reg{}[{}..{}]",
            self.reg,
            self.lo,
            self.hi
        );
        RegMark {
            reg: self.reg,
            lo: self.lo,
            hi: self.hi,
            value: bits,
        }
    }

    /// Loads `value` into the field.
    pub fn load(self, value: T) -> Action {
        self.mark(value).load()
    }

    /// Matches the field holding `value`.
    pub fn matching(self, value: T) -> MatchField {
        self.mark(value).matching()
    }
}

/// A register field with a value (Antrea's `RegMark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegMark {
    reg: u8,
    lo: u8,
    hi: u8,
    value: u32,
}

impl RegMark {
    const fn new(field: RegField<bool>, set: bool) -> Self {
        Self {
            reg: field.reg,
            lo: field.lo,
            hi: field.hi,
            value: set as u32,
        }
    }

    fn field(self) -> RegField<u32> {
        RegField::new(self.reg, self.lo, self.hi)
    }

    /// The value, unshifted.
    pub const fn value(self) -> u32 {
        self.value
    }

    /// Loads the value into the field (`set_field:V->regN` for a whole
    /// register, `set_field:V/MASK->regN` for a part).
    pub fn load(self) -> Action {
        Action::load(self.field().subfield(), u128::from(self.value))
    }

    /// Matches the field holding the value (`regN=V` or `regN=V/MASK`).
    pub fn matching(self) -> MatchField {
        let field = self.field();
        if field.is_whole() {
            MatchField::reg(self.reg, self.value)
        } else {
            MatchField::reg_masked(self.reg, self.value << self.lo, field.mask())
        }
    }
}

/// Kind of the port a packet came in on, in [`reg::PORT_KIND`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PortKind {
    /// The overlay tunnel port.
    Tunnel = 1,
    /// The node's gateway (internal) port.
    Gateway = 2,
    /// A pod's access port.
    Pod = 3,
    /// The VLAN trunk uplink.
    Uplink = 4,
}

impl RegValue for PortKind {
    fn bits(self) -> u32 {
        self as u32
    }
}

/// Service selection state, in [`reg::SERVICE_STATE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ServiceState {
    /// Not a service packet (or not yet classified).
    None = 0,
    /// A frontend matched; an endpoint still has to be chosen.
    NeedsEndpoint = 1,
    /// reg3/reg4 hold the chosen endpoint.
    EndpointSelected = 2,
}

impl RegValue for ServiceState {
    fn bits(self) -> u32 {
        self as u32
    }
}

/// An endpoint port and the service state, together in
/// [`reg::ENDPOINT_PORT_AND_STATE`] (session affinity loads and learns both
/// at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointPortAndState {
    /// The endpoint's port.
    pub port: u16,
    /// The service state.
    pub state: ServiceState,
}

impl RegValue for EndpointPortAndState {
    fn bits(self) -> u32 {
        u32::from(self.port) | ((self.state as u32) << 16)
    }
}

/// The register fields.
pub mod reg {
    use std::net::Ipv4Addr;

    use super::{EndpointPortAndState, PortKind, RegField, RegMark, ServiceState};

    /// reg0[0..=3]: the kind of the input port.
    pub const PORT_KIND: RegField<PortKind> = RegField::new(0, 0, 3);
    /// `reg0[4]`: set once a packet to the gateway address went through
    /// [`super::zone::GATEWAY_SNAT`] (un-SNAT of replies).
    pub const GATEWAY_UNSNAT: RegField<bool> = RegField::new(0, 4, 4);
    /// [`GATEWAY_UNSNAT`] set.
    pub const GATEWAY_UNSNAT_DONE: RegMark = RegMark::new(GATEWAY_UNSNAT, true);
    /// [`GATEWAY_UNSNAT`] clear.
    pub const GATEWAY_UNSNAT_PENDING: RegMark = RegMark::new(GATEWAY_UNSNAT, false);
    /// reg1: output port chosen by L2 forwarding.
    pub const OUTPUT_PORT: RegField<u32> = RegField::new(1, 0, 31);
    /// reg2: scratch space within the actions of one flow (the ARP
    /// responder swaps `arp_spa`/`arp_tpa` through it); never read in a
    /// later table, so any flow may overwrite it.
    pub const SCRATCH: RegField<u32> = RegField::new(2, 0, 31);
    /// reg3: IPv4 address of the endpoint selected by a service group.
    pub const ENDPOINT_IP: RegField<Ipv4Addr> = RegField::new(3, 0, 31);
    /// reg4[0..=17]: endpoint port and service state.
    pub const ENDPOINT_PORT_AND_STATE: RegField<EndpointPortAndState> = RegField::new(4, 0, 17);
    /// reg4[16..=17]: the service state.
    pub const SERVICE_STATE: RegField<ServiceState> = RegField::new(4, 16, 17);
    /// `reg4[18]`: set by the proxy on hairpin packets (both directions):
    /// OUTPUT sends them back out of `in_port`.
    pub const HAIRPIN: RegField<bool> = RegField::new(4, 18, 18);
    /// [`HAIRPIN`] set.
    pub const HAIRPIN_SET: RegMark = RegMark::new(HAIRPIN, true);
    /// reg5: VLAN of the segment of the source (0..=4095).
    pub const SEGMENT_VLAN: RegField<u16> = RegField::new(5, 0, 31);
    /// reg5[0..=11]: the 12 VLAN bits of [`SEGMENT_VLAN`], where a packet
    /// from the tunnel gets the key's VLAN bits
    /// ([`super::tunnel_key::vlan`]).
    pub const SEGMENT_VLAN_ID: RegField<u16> = RegField::new(5, 0, 11);
    /// reg6: the group id of the Service port (or of its local-endpoints
    /// group) a session-affinity frontend chose; learned affinity flows and
    /// ENDPOINT_DNAT match it, so every frontend of a port (ClusterIP, node
    /// port, external and LoadBalancer IPs) shares one affinity per client.
    pub const SERVICE_PORT: RegField<u32> = RegField::new(6, 0, 31);
}

/// `ct_mark` bits of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtMark(u32);

impl CtMark {
    /// The mark's bits.
    pub const fn value(self) -> u32 {
        self.0
    }

    /// Both marks' bits.
    pub const fn with(self, other: CtMark) -> CtMark {
        CtMark(self.0 | other.0)
    }

    /// Matches connections with these bits set (`ct_mark=V/V`).
    pub fn matching(self) -> MatchField {
        MatchField::ct_mark(self.0, self.0)
    }

    /// Matches connections with these bits clear (`ct_mark=0/V`).
    pub fn matching_clear(self) -> MatchField {
        MatchField::ct_mark(0, self.0)
    }

    /// Sets `ct_mark` to exactly these bits (inside `ct(commit, exec(...))`).
    pub fn set(self) -> Action {
        Action::set_field(Field::CtMark, u128::from(self.0))
    }
}

/// The `ct_mark` bits.
pub mod ct_mark {
    use super::CtMark;

    /// The connection was DNATed to a service endpoint by the proxy.
    pub const SERVICE: CtMark = CtMark(0x1);
    /// The connection is a hairpin (a pod reaching itself through a service).
    pub const HAIRPIN: CtMark = CtMark(0x2);
    /// The connection came in through the tunnel from another node's
    /// gateway (that node's own traffic, or a Service connection it
    /// tunnelled to a local `vlan` segment pod): the agent routes a `vlan`
    /// segment pod's replies back instead of switching them to the fabric.
    pub const FROM_REMOTE_GATEWAY: CtMark = CtMark(0x4);
}

/// A conntrack zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Zone(u16);

impl Zone {
    /// The zone number.
    pub const fn id(self) -> u16 {
        self.0
    }

    /// The zone for a `ct` action.
    pub fn ct(self) -> CtZone {
        CtZone::Immediate(self.0)
    }

    /// Matches packets tracked in this zone (`ct_zone=Z`).
    pub fn matching(self) -> MatchField {
        MatchField::ct_zone(self.0)
    }
}

/// The conntrack zones.
pub mod zone {
    use super::Zone;

    /// Zone of all pod traffic (service DNAT and plain pod-to-pod alike).
    pub const POD: Zone = Zone(0xfff0);
    /// Zone of egress SNAT to the node address.
    pub const SNAT: Zone = Zone(0xfff1);
    /// Zone of the proxy's hairpin SNAT to [`crate::HAIRPIN_SNAT_IP`].
    pub const HAIRPIN: Zone = Zone(0xfff2);
    /// Zone where the agent SNATs `vlan`-segment pods' Service connections
    /// to the node's gateway address (so replies come back through OVS).
    pub const GATEWAY_SNAT: Zone = Zone(0xfff3);
    /// Zone where the proxy SNATs Service connections from the gateway port
    /// to endpoints outside the pod networks to [`crate::OUTSIDE_SNAT_IP`]
    /// (they go back out of the gateway port; replies are un-SNATed here).
    pub const OUTSIDE_SNAT: Zone = Zone(0xfff4);
}

/// The overlay tunnel key (Geneve VNI / VXLAN VNI, `tun_id`): bits 0..=11
/// carry the source pod's segment VLAN (reg5 on the sending node), checked
/// on the receiving node like reg5; [`FROM_GATEWAY`](tunnel_key::FROM_GATEWAY)
/// marks packets the sending node's gateway (the node itself) sent.
pub mod tunnel_key {
    use switchyard_ovs::openflow::{Action, Field, MatchField, SubField};

    /// The key of packets the sending node's gateway sent.
    pub const FROM_GATEWAY: u64 = 0x1000;

    /// `tun_id[0..11]`: the source's segment VLAN.
    pub fn vlan() -> SubField {
        SubField::bits(Field::TunId, 0, 11)
    }

    /// `tun_id[0..31]`: the key as a Geneve/VXLAN VNI carries it.
    pub fn key() -> SubField {
        SubField::bits(Field::TunId, 0, 31)
    }

    /// Matches keys with [`FROM_GATEWAY`] set.
    pub fn matching_from_gateway() -> MatchField {
        MatchField::masked(
            Field::TunId,
            u128::from(FROM_GATEWAY),
            u128::from(FROM_GATEWAY),
        )
    }

    /// Sets the key to [`FROM_GATEWAY`].
    pub fn set_from_gateway() -> Action {
        Action::set_field(Field::TunId, u128::from(FROM_GATEWAY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_print_as_before() {
        assert_eq!(
            reg::PORT_KIND.load(PortKind::Gateway).to_string(),
            "set_field:0x2/0xf->reg0"
        );
        assert_eq!(
            reg::PORT_KIND.matching(PortKind::Pod).to_string(),
            "reg0=0x3/0xf"
        );
        assert_eq!(reg::SEGMENT_VLAN.matching(100).to_string(), "reg5=0x64");
        assert_eq!(
            reg::SEGMENT_VLAN.load(100).to_string(),
            "set_field:0x64->reg5"
        );
        assert_eq!(
            reg::GATEWAY_UNSNAT_DONE.load().to_string(),
            "set_field:0x10/0x10->reg0"
        );
        assert_eq!(
            reg::GATEWAY_UNSNAT_PENDING.matching().to_string(),
            "reg0=0x0/0x10"
        );
        assert_eq!(
            reg::HAIRPIN_SET.matching().to_string(),
            "reg4=0x40000/0x40000"
        );
        assert_eq!(
            reg::ENDPOINT_PORT_AND_STATE
                .matching(EndpointPortAndState {
                    port: 8080,
                    state: ServiceState::EndpointSelected
                })
                .to_string(),
            "reg4=0x21f90/0x3ffff"
        );
        assert_eq!(
            reg::SERVICE_STATE.subfield().to_string(),
            "NXM_NX_REG4[16..17]"
        );
        assert_eq!(reg::SCRATCH.subfield().to_string(), "NXM_NX_REG2[]");
    }

    #[test]
    fn fields_of_one_register_do_not_overlap_unless_declared_parts() {
        assert_eq!(reg::PORT_KIND.mask() & reg::GATEWAY_UNSNAT.mask(), 0);
        assert_eq!(reg::ENDPOINT_PORT_AND_STATE.mask() & reg::HAIRPIN.mask(), 0);
        assert_eq!(
            reg::SERVICE_STATE.mask() & !reg::ENDPOINT_PORT_AND_STATE.mask(),
            0
        );
        assert_eq!(reg::SEGMENT_VLAN_ID.mask(), 0xfff);
    }

    #[test]
    fn ct_marks_print_as_before() {
        assert_eq!(ct_mark::SERVICE.matching().to_string(), "ct_mark=0x1/0x1");
        assert_eq!(
            ct_mark::SERVICE.matching_clear().to_string(),
            "ct_mark=0x0/0x1"
        );
        assert_eq!(
            ct_mark::FROM_REMOTE_GATEWAY.set().to_string(),
            "set_field:0x4->ct_mark"
        );
        assert_eq!(ct_mark::SERVICE.with(ct_mark::HAIRPIN).value(), 0x3);
    }
}
