//! Address and port arithmetic for policy flows: an `ipBlock` minus its
//! `except` as disjoint positive prefixes, and a port range as masked
//! port matches.

use ipnet::Ipv4Net;

/// `block` minus every prefix of `except`, as disjoint prefixes (sorted).
///
/// Only positive matches come out: a rule never needs a negative match (a
/// higher-priority "drop the except" flow would also drop traffic another
/// rule allows).
pub fn subtract(block: Ipv4Net, except: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut out = vec![block.trunc()];
    for ex in except.iter().map(Ipv4Net::trunc) {
        let mut next = Vec::with_capacity(out.len() + 32);
        for net in out {
            next.extend(remove(net, ex));
        }
        out = next;
    }
    out.sort();
    out
}

/// `net` minus `ex`: nothing when `ex` covers `net`, `net` when they do not
/// overlap, else the siblings along the path from `net` down to `ex`.
fn remove(net: Ipv4Net, ex: Ipv4Net) -> Vec<Ipv4Net> {
    if ex.contains(&net) {
        return Vec::new();
    }
    if !net.contains(&ex) {
        return vec![net];
    }
    let mut out = Vec::new();
    let mut cur = net;
    while cur.prefix_len() < ex.prefix_len() {
        let Ok(halves) = cur.subnets(cur.prefix_len() + 1) else {
            break;
        };
        let halves: Vec<Ipv4Net> = halves.collect();
        let (inside, outside) = if halves[0].contains(&ex) {
            (halves[0], halves[1])
        } else {
            (halves[1], halves[0])
        };
        out.push(outside);
        cur = inside;
    }
    out
}

/// The inclusive port range `first..=last` as `(value, mask)` pairs whose
/// masked matches cover exactly that range (at most 2 x 16 of them).
pub fn port_masks(first: u16, last: u16) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    if first > last {
        return out;
    }
    let (mut lo, hi) = (u32::from(first), u32::from(last));
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let mask = (!(size - 1)) & 0xffff;
        out.push((lo as u16, mask as u16));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<Ipv4Net> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn except_becomes_disjoint_prefixes() {
        let out = subtract("10.0.0.0/24".parse().unwrap(), &nets(&["10.0.0.5/32"]));
        assert_eq!(
            out,
            nets(&[
                "10.0.0.0/30",
                "10.0.0.4/32",
                "10.0.0.6/31",
                "10.0.0.8/29",
                "10.0.0.16/28",
                "10.0.0.32/27",
                "10.0.0.64/26",
                "10.0.0.128/25",
            ])
        );
        // Disjoint, and together exactly the block without the except.
        let covered: u64 = out.iter().map(|n| 1u64 << (32 - n.prefix_len())).sum();
        assert_eq!(covered, 255);
        for (i, a) in out.iter().enumerate() {
            for b in &out[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a));
            }
        }
    }

    #[test]
    fn except_edge_cases() {
        let block: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        assert_eq!(subtract(block, &[]), vec![block]);
        assert!(subtract(block, &nets(&["10.0.0.0/8"])).is_empty());
        assert_eq!(subtract(block, &nets(&["192.168.0.0/16"])), vec![block]);
        assert_eq!(
            subtract(block, &nets(&["10.0.128.0/17", "10.0.0.0/17"])),
            vec![]
        );
        assert_eq!(
            subtract(block, &nets(&["10.0.0.0/17"])),
            nets(&["10.0.128.0/17"])
        );
    }

    fn covered(masks: &[(u16, u16)]) -> Vec<u16> {
        (0..=u16::MAX)
            .filter(|p| masks.iter().any(|(v, m)| p & m == *v))
            .collect()
    }

    #[test]
    fn port_ranges_become_masked_matches() {
        assert_eq!(port_masks(80, 80), vec![(80, 0xffff)]);
        assert_eq!(port_masks(80, 81), vec![(80, 0xfffe)]);
        assert_eq!(port_masks(0, u16::MAX), vec![(0, 0)]);
        for (a, b) in [
            (80u16, 81u16),
            (1, 1000),
            (1024, 65535),
            (32000, 32768),
            (7, 9),
        ] {
            let m = port_masks(a, b);
            assert_eq!(covered(&m), (a..=b).collect::<Vec<_>>(), "{a}-{b}");
            assert!(m.len() <= 32);
        }
        assert!(port_masks(9, 7).is_empty());
    }
}
