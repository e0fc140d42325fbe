//! Flows as an operator reads them: table number and NAME (from
//! `switchyard_pipeline`'s declaration), owner and object from the cookie,
//! counters, match and actions in `ovs-ofctl` syntax.

use std::collections::BTreeMap;

use serde::Serialize;
use switchyard_ovs::openflow::{FlowStats, fmt_actions, fmt_match};
use switchyard_pipeline::{Cookie, Owner, table};

use crate::output::Table;

/// A table's name: the pipeline's, or `table<N>` for one it does not declare.
pub fn table_name(id: u8) -> String {
    table::by_id(id)
        .map(|t| t.name().to_string())
        .unwrap_or_else(|| format!("table{id}"))
}

/// Who owns a cookie: `agent`, `proxy`, or `other` (not a Switchyard cookie).
pub fn owner_name(cookie: u64) -> &'static str {
    match Cookie::from_value(cookie).map(|c| c.owner) {
        Some(Owner::Agent) => "agent",
        Some(Owner::Proxy) => "proxy",
        None => "other",
    }
}

/// One flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowView {
    /// Table number.
    pub table: u8,
    /// Table name.
    pub table_name: String,
    /// Priority.
    pub priority: u16,
    /// `agent`, `proxy` or `other`.
    pub owner: String,
    /// The cookie, hex.
    pub cookie: String,
    /// The cookie's object id (pod ofport, group id, ...), for Switchyard cookies.
    pub object: Option<u32>,
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
    /// Idle timeout (learned affinity flows), 0 = none.
    pub idle_timeout: u16,
    /// The match, ovs-ofctl syntax.
    #[serde(rename = "match")]
    pub matches: String,
    /// The actions, ovs-ofctl syntax.
    pub actions: String,
}

impl FlowView {
    /// From a flow-stats entry.
    pub fn new(stats: &FlowStats) -> Self {
        let f = &stats.flow;
        Self {
            table: f.table,
            table_name: table_name(f.table),
            priority: f.priority,
            owner: owner_name(f.cookie).to_string(),
            cookie: format!("{:#x}", f.cookie),
            object: Cookie::from_value(f.cookie).map(|c| c.object),
            packets: stats.packet_count,
            bytes: stats.byte_count,
            idle_timeout: f.idle_timeout,
            matches: fmt_match(&f.matches),
            actions: fmt_actions(&f.actions),
        }
    }

    /// Whether the match has `key=value` (exactly that token).
    pub fn matches_field(&self, key: &str, value: &str) -> bool {
        match_value(&self.matches, key) == Some(value)
    }

    /// Whether the match has `key=N` exactly (decimal or `0x` hex, no mask).
    pub fn matches_number(&self, key: &str, n: u64) -> bool {
        match_value(&self.matches, key).and_then(parse_number) == Some(n)
    }

    /// Whether the match has destination port `port` (`tp_dst`, or the
    /// protocol's own name, `tcp_dst`/`udp_dst`).
    pub fn matches_dst_port(&self, protocol: &str, port: u16) -> bool {
        ["tp_dst".to_string(), format!("{protocol}_dst")]
            .iter()
            .any(|k| self.matches_number(k, u64::from(port)))
    }
}

/// The value of `key` in an ovs-ofctl match string (`None` if absent; a
/// bare keyword like `tcp` has the value `""`).
pub fn match_value<'a>(matches: &'a str, key: &str) -> Option<&'a str> {
    matches
        .split(',')
        .find_map(|tok| match tok.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if tok == key => Some(""),
            _ => None,
        })
}

/// `17` or `0x11` (no mask).
pub fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Flows sorted by table, priority (high first), match.
pub fn sorted(mut flows: Vec<FlowView>) -> Vec<FlowView> {
    flows.sort_by(|a, b| {
        (a.table, std::cmp::Reverse(a.priority), &a.matches).cmp(&(
            b.table,
            std::cmp::Reverse(b.priority),
            &b.matches,
        ))
    });
    flows
}

/// Flows grouped by table with a heading per table (`table 10 SPOOF_GUARD`).
pub fn render_by_table(flows: &[FlowView]) -> String {
    let mut by_table: BTreeMap<u8, Vec<&FlowView>> = BTreeMap::new();
    for f in flows {
        by_table.entry(f.table).or_default().push(f);
    }
    let mut out = String::new();
    for (id, flows) in by_table {
        let packets: u64 = flows.iter().map(|f| f.packets).sum();
        out.push_str(&format!(
            "table {id} {} ({} flow{}, {packets} packets)\n",
            table_name(id),
            flows.len(),
            if flows.len() == 1 { "" } else { "s" }
        ));
        let mut t = Table::new(&["priority", "packets", "owner", "match", "actions"]);
        for f in flows {
            t.row([
                f.priority.to_string(),
                f.packets.to_string(),
                f.owner.clone(),
                if f.matches.is_empty() {
                    "*".to_string()
                } else {
                    f.matches.clone()
                },
                f.actions.clone(),
            ]);
        }
        out.push_str(&t.render_indented(2));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(table: u8, cookie: u64, matches: &str) -> FlowView {
        FlowView {
            table,
            table_name: table_name(table),
            priority: 200,
            owner: owner_name(cookie).into(),
            cookie: format!("{cookie:#x}"),
            object: Cookie::from_value(cookie).map(|c| c.object),
            packets: 3,
            bytes: 180,
            idle_timeout: 0,
            matches: matches.into(),
            actions: "goto_table:20".into(),
        }
    }

    #[test]
    fn tables_are_named_from_the_pipeline_declaration() {
        assert_eq!(table_name(0), "CLASSIFIER");
        assert_eq!(table_name(31), "SERVICE_LB");
        assert_eq!(table_name(70), "OUTPUT");
        assert_eq!(table_name(99), "table99");
    }

    #[test]
    fn owners_come_from_the_cookie() {
        assert_eq!(
            owner_name(Cookie::new(Owner::Agent, 1, 17).value()),
            "agent"
        );
        assert_eq!(owner_name(Cookie::new(Owner::Proxy, 1, 5).value()), "proxy");
        assert_eq!(owner_name(0), "other");
        let v = view(10, Cookie::new(Owner::Agent, 2, 17).value(), "in_port=17");
        assert_eq!(v.object, Some(17));
    }

    #[test]
    fn match_fields_are_exact_tokens() {
        let m = "tcp,in_port=17,nw_dst=10.96.0.10,tp_dst=80";
        assert_eq!(match_value(m, "tcp"), Some(""));
        assert_eq!(match_value(m, "nw_dst"), Some("10.96.0.10"));
        assert_eq!(match_value(m, "nw_src"), None);
        let v = view(31, 0, m);
        assert!(v.matches_field("in_port", "17"));
        assert!(!v.matches_field("in_port", "1"));
        assert!(v.matches_dst_port("tcp", 80));
        let v = view(70, 0, "reg1=0x11");
        assert!(v.matches_number("reg1", 17));
        assert!(!view(70, 0, "reg1=0x11/0xff").matches_number("reg1", 17));
        assert!(view(31, 0, "udp,nw_dst=10.96.0.10,udp_dst=53").matches_dst_port("udp", 53));
    }

    #[test]
    fn flows_print_under_their_table_names() {
        let flows = sorted(vec![
            view(10, Cookie::new(Owner::Agent, 1, 17).value(), "in_port=17"),
            view(0, Cookie::new(Owner::Agent, 1, 17).value(), ""),
        ]);
        let text = render_by_table(&flows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "table 0 CLASSIFIER (1 flow, 3 packets)");
        assert!(
            lines[2].contains('*') && lines[2].contains("agent"),
            "{text}"
        );
        assert_eq!(lines[3], "table 10 SPOOF_GUARD (1 flow, 3 packets)");
    }
}
