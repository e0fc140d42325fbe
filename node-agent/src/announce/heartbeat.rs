//! Agent-to-agent heartbeats over the underlay: one UDP datagram every
//! [`super::liveness::Timing::interval`] to every other Node's InternalIP, port
//! [`HEARTBEAT_PORT`].
//!
//! Datagram: `SYHB`, version 1, the sender's node-name length (1 byte), the name, a sequence
//! number (u64, big-endian). A datagram is accepted only from the InternalIP of the Node it
//! names (a stray or misdirected packet cannot keep another node alive); heartbeats are not
//! authenticated, like the overlay's tunnel packets: the underlay is trusted.

use std::net::{Ipv4Addr, SocketAddr};

/// UDP port of the heartbeats (every node, on the address of its InternalIP).
pub const HEARTBEAT_PORT: u16 = 9473;

const MAGIC: &[u8; 4] = b"SYHB";
const VERSION: u8 = 1;

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's node name.
    pub node: String,
    /// Increases by one per datagram sent.
    pub seq: u64,
}

impl Heartbeat {
    /// The datagram (`None` for a node name longer than 255 bytes).
    pub fn encode(&self) -> Option<Vec<u8>> {
        let name = self.node.as_bytes();
        let len = u8::try_from(name.len()).ok()?;
        let mut out = Vec::with_capacity(4 + 2 + name.len() + 8);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(len);
        out.extend_from_slice(name);
        out.extend_from_slice(&self.seq.to_be_bytes());
        Some(out)
    }

    /// Parses a datagram; `None` for anything else.
    pub fn decode(data: &[u8]) -> Option<Heartbeat> {
        let rest = data.strip_prefix(MAGIC)?;
        let (&version, rest) = rest.split_first()?;
        let (&len, rest) = rest.split_first()?;
        if version != VERSION || rest.len() != usize::from(len) + 8 {
            return None;
        }
        let (name, seq) = rest.split_at(usize::from(len));
        Some(Heartbeat {
            node: std::str::from_utf8(name).ok()?.to_string(),
            seq: u64::from_be_bytes(seq.try_into().ok()?),
        })
    }
}

/// The heartbeat in `data` from `from`, if `from` is the address `address_of` gives for the
/// node it names.
pub fn accept(
    data: &[u8],
    from: SocketAddr,
    address_of: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Option<Heartbeat> {
    let hb = Heartbeat::decode(data)?;
    let SocketAddr::V4(from) = from else {
        return None;
    };
    (address_of(&hb.node) == Some(*from.ip())).then_some(hb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_is_byte_exact_and_round_trips() {
        let hb = Heartbeat {
            node: "node1".into(),
            seq: 258,
        };
        let bytes = hb.encode().unwrap();
        assert_eq!(
            bytes,
            [
                b"SYHB".as_slice(),
                &[1, 5],
                b"node1",
                &[0, 0, 0, 0, 0, 0, 1, 2]
            ]
            .concat()
        );
        assert_eq!(Heartbeat::decode(&bytes), Some(hb));
    }

    #[test]
    fn other_datagrams_are_refused() {
        let good = Heartbeat {
            node: "n".into(),
            seq: 1,
        }
        .encode()
        .unwrap();
        assert!(Heartbeat::decode(&good[..good.len() - 1]).is_none());
        let mut v2 = good.clone();
        v2[4] = 2;
        assert!(Heartbeat::decode(&v2).is_none());
        assert!(Heartbeat::decode(b"GET / HTTP/1.1\r\n").is_none());
        assert!(
            Heartbeat {
                node: "x".repeat(256),
                seq: 0
            }
            .encode()
            .is_none()
        );
    }

    #[test]
    fn only_from_the_named_nodes_address() {
        let data = Heartbeat {
            node: "node2".into(),
            seq: 7,
        }
        .encode()
        .unwrap();
        let addr = |n: &str| (n == "node2").then(|| Ipv4Addr::new(10, 0, 0, 2));
        let from = |ip: [u8; 4]| SocketAddr::from((ip, HEARTBEAT_PORT));
        assert!(accept(&data, from([10, 0, 0, 2]), addr).is_some());
        assert!(accept(&data, from([10, 0, 0, 3]), addr).is_none());
        let unknown = Heartbeat {
            node: "node9".into(),
            seq: 7,
        }
        .encode()
        .unwrap();
        assert!(accept(&unknown, from([10, 0, 0, 2]), addr).is_none());
    }
}
