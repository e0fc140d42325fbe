//! SNAT rules on the upstream router, tagged as Switchyard's: the NSX-T Policy API's tier-1
//! NAT rules in the `USER` section, spoken by both Policy API drivers.
//!
//! - `GET /policy/api/v1/infra/tier-1s/<t1>/nat/USER/nat-rules` (paged by `cursor`)
//! - `GET|PUT|DELETE /policy/api/v1/infra/tier-1s/<t1>/nat/USER/nat-rules/<id>`
//!
//! A rule is a `PolicyNatRule` with `action: SNAT`, `source_network` (the sources, comma
//! separated as NSX writes them), `translated_network` (one address), `enabled`, and the
//! tags [`TAG_CLUSTER`], [`TAG_OWNER`] and, for a namespace's rule, [`TAG_NAMESPACE_UID`].
//! The same rules as for static routes hold: only this cluster's tagged rules are listed;
//! writes read first, carry the `_revision` read, and never modify or delete an object
//! without this cluster's tag ([`RouterError::NotOwned`]).

use std::net::IpAddr;

use futures::FutureExt;
use futures::future::BoxFuture;
use http::Method;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::{BASE, PolicyDriver, Tag};
use crate::{RouterError, TAG_CLUSTER, TAG_OWNER, valid_id};

/// Tag scope: the UID of the namespace a rule belongs to.
pub const TAG_NAMESPACE_UID: &str = "switchyard.io/namespace-uid";
/// The NAT section Switchyard's rules live in.
pub const NAT_SECTION: &str = "USER";

/// An SNAT rule as Switchyard writes it: traffic from `source_networks` leaves with
/// `translated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRule {
    /// Object id on the router (path segment: `[A-Za-z0-9_.-]`, at most 255 characters).
    pub id: String,
    /// Sources, sorted and deduplicated by [`Self::snat`].
    pub source_networks: Vec<IpNet>,
    /// The address the sources are translated to.
    pub translated: IpAddr,
    /// Whether the rule is an enabled SNAT rule (a rule read back with another action or
    /// disabled reads `false`, so it differs from what Switchyard writes and is repaired).
    pub enabled: bool,
    /// Value of the [`TAG_OWNER`] tag.
    pub owner: String,
    /// Value of the [`TAG_NAMESPACE_UID`] tag, if any.
    pub namespace_uid: Option<String>,
    /// Human-readable name (`display_name`).
    pub display_name: String,
}

impl NatRule {
    /// An enabled SNAT rule, sources sorted and deduplicated (the form reads return).
    pub fn snat(
        id: impl Into<String>,
        mut source_networks: Vec<IpNet>,
        translated: IpAddr,
        owner: impl Into<String>,
        display_name: impl Into<String>,
    ) -> Self {
        source_networks.sort();
        source_networks.dedup();
        Self {
            id: id.into(),
            source_networks,
            translated,
            enabled: true,
            owner: owner.into(),
            namespace_uid: None,
            display_name: display_name.into(),
        }
    }

    /// The rule tagged with a namespace UID.
    pub fn with_namespace_uid(mut self, uid: impl Into<String>) -> Self {
        self.namespace_uid = Some(uid.into());
        self
    }

    /// Whether `other` translates the same sources to the same address, enabled alike, with
    /// the same tags (the display name does not count).
    pub fn same_rule(&self, other: &NatRule) -> bool {
        let mut a = self.clone();
        let mut b = other.clone();
        a.display_name.clear();
        b.display_name.clear();
        a.source_networks.sort();
        a.source_networks.dedup();
        b.source_networks.sort();
        b.source_networks.dedup();
        a == b
    }
}

/// A router holding Switchyard's SNAT rules (next to its static routes: a
/// [`crate::RouterDriver`] gives it through [`crate::RouterDriver::nat`]).
///
/// Implementations only ever modify rules tagged with their cluster; [`Self::list_nat`]
/// returns only those.
pub trait NatDriver: Send + Sync + std::fmt::Debug {
    /// Every NAT rule tagged with this driver's cluster (any owner).
    fn list_nat(&self) -> BoxFuture<'_, Result<Vec<NatRule>, RouterError>>;

    /// The rule with this id, if it exists and is this cluster's (`NotOwned` otherwise).
    fn get_nat<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<NatRule>, RouterError>>;

    /// Creates or replaces the rule (tagged with the cluster, owner and namespace UID). Fails
    /// with `NotOwned` if an untagged object has the id, with `Config` for a rule without
    /// sources or mixing address families.
    fn put_nat<'a>(&'a self, rule: &'a NatRule) -> BoxFuture<'a, Result<(), RouterError>>;

    /// Deletes the rule; a missing one is not an error. Fails with `NotOwned` (and deletes
    /// nothing) if the object is not this cluster's.
    fn delete_nat<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RouterError>>;
}

/// A NAT rule as the Policy API carries it (the fields Switchyard uses).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApiNatRule {
    #[serde(default)]
    resource_type: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    source_network: String,
    #[serde(default)]
    translated_network: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(rename = "_revision", default, skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
}

fn yes() -> bool {
    true
}

impl ApiNatRule {
    fn tag(&self, scope: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.scope == scope)
            .map(|t| t.tag.as_str())
    }

    fn to_rule(&self, path: &str) -> Result<NatRule, RouterError> {
        let bad = |message: String| RouterError::BadResponse {
            path: path.to_string(),
            message,
        };
        let sources = parse_networks(&self.source_network).map_err(bad)?;
        let translated = self
            .translated_network
            .trim()
            .parse::<IpAddr>()
            .map_err(|_| {
                bad(format!(
                    "translated_network {:?} is not an address",
                    self.translated_network
                ))
            })?;
        let mut rule = NatRule::snat(
            self.id.clone(),
            sources,
            translated,
            self.tag(TAG_OWNER).unwrap_or_default(),
            self.display_name.clone(),
        );
        rule.enabled = self.enabled && self.action == "SNAT";
        rule.namespace_uid = self.tag(TAG_NAMESPACE_UID).map(str::to_string);
        Ok(rule)
    }
}

/// `a,b,c` (CIDRs or single addresses, as NSX's `source_network`) -> networks.
pub fn parse_networks(text: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net = match part.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => part
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| format!("{part:?} is neither a CIDR nor an address"))?,
        };
        out.push(net);
    }
    Ok(out)
}

/// The NSX `source_network` text of networks: comma separated, no spaces.
pub fn networks_text(networks: &[IpNet]) -> String {
    networks
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The JSON body Switchyard PUTs for a NAT rule (exposed for tests and the fabric API).
pub fn nat_rule_body(rule: &NatRule, cluster: &str, revision: Option<i64>) -> Value {
    let mut tags = vec![
        Tag {
            scope: TAG_CLUSTER.into(),
            tag: cluster.into(),
        },
        Tag {
            scope: TAG_OWNER.into(),
            tag: rule.owner.clone(),
        },
    ];
    if let Some(uid) = &rule.namespace_uid {
        tags.push(Tag {
            scope: TAG_NAMESPACE_UID.into(),
            tag: uid.clone(),
        });
    }
    let body = ApiNatRule {
        resource_type: "PolicyNatRule".into(),
        id: rule.id.clone(),
        display_name: rule.display_name.clone(),
        action: "SNAT".into(),
        source_network: networks_text(&rule.source_networks),
        translated_network: rule.translated.to_string(),
        enabled: rule.enabled,
        tags,
        revision,
    };
    serde_json::to_value(body).unwrap_or(Value::Null)
}

impl PolicyDriver {
    fn nat_rules_path(&self) -> String {
        format!(
            "{BASE}/tier-1s/{}/nat/{NAT_SECTION}/nat-rules",
            self.tier1()
        )
    }

    fn nat_rule_path(&self, id: &str) -> Result<String, RouterError> {
        if !valid_id(id) {
            return Err(RouterError::Config(format!(
                "NAT rule id {id:?} is not a valid id"
            )));
        }
        Ok(format!("{}/{id}", self.nat_rules_path()))
    }

    fn ours_nat(&self, r: &ApiNatRule) -> bool {
        r.tag(TAG_CLUSTER) == Some(self.cluster())
    }

    async fn get_nat_raw(&self, id: &str) -> Result<Option<ApiNatRule>, RouterError> {
        let path = self.nat_rule_path(id)?;
        let Some(bytes) = self.call(Method::GET, &path, None, true).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RouterError::BadResponse {
                path,
                message: e.to_string(),
            })
    }

    async fn list_nat_impl(&self) -> Result<Vec<NatRule>, RouterError> {
        let base = self.nat_rules_path();
        let mut out = Vec::new();
        for item in self.list_raw(&base).await? {
            // Objects of others may have any shape: only ours must parse.
            let Ok(r) = serde_json::from_value::<ApiNatRule>(item) else {
                continue;
            };
            if self.ours_nat(&r) {
                out.push(r.to_rule(&base)?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn get_nat_impl(&self, id: &str) -> Result<Option<NatRule>, RouterError> {
        let path = self.nat_rule_path(id)?;
        match self.get_nat_raw(id).await? {
            None => Ok(None),
            Some(r) if self.ours_nat(&r) => r.to_rule(&path).map(Some),
            Some(_) => Err(self.not_owned(id)),
        }
    }

    async fn put_nat_impl(&self, rule: &NatRule) -> Result<(), RouterError> {
        let path = self.nat_rule_path(&rule.id)?;
        if rule.source_networks.is_empty() {
            return Err(RouterError::Config(format!(
                "NAT rule {}: refusing to write a rule without sources (delete it instead)",
                rule.id
            )));
        }
        if let Some(n) = rule
            .source_networks
            .iter()
            .find(|n| n.addr().is_ipv4() != rule.translated.is_ipv4())
        {
            return Err(RouterError::Config(format!(
                "NAT rule {}: source {n} is not of the family of {}",
                rule.id, rule.translated
            )));
        }
        let revision = match self.get_nat_raw(&rule.id).await? {
            None => None,
            Some(r) if self.ours_nat(&r) => r.revision,
            Some(_) => return Err(self.not_owned(&rule.id)),
        };
        let body = nat_rule_body(rule, self.cluster(), revision);
        self.call(Method::PUT, &path, Some(body), false).await?;
        Ok(())
    }

    async fn delete_nat_impl(&self, id: &str) -> Result<(), RouterError> {
        let path = self.nat_rule_path(id)?;
        match self.get_nat_raw(id).await? {
            None => return Ok(()),
            Some(r) if self.ours_nat(&r) => {}
            Some(_) => return Err(self.not_owned(id)),
        }
        self.call(Method::DELETE, &path, None, true).await?;
        Ok(())
    }
}

impl NatDriver for PolicyDriver {
    fn list_nat(&self) -> BoxFuture<'_, Result<Vec<NatRule>, RouterError>> {
        self.list_nat_impl().boxed()
    }

    fn get_nat<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<NatRule>, RouterError>> {
        self.get_nat_impl(id).boxed()
    }

    fn put_nat<'a>(&'a self, rule: &'a NatRule) -> BoxFuture<'a, Result<(), RouterError>> {
        self.put_nat_impl(rule).boxed()
    }

    fn delete_nat<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RouterError>> {
        self.delete_nat_impl(id).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_networks_parse_as_nsx_writes_them() {
        let n = parse_networks("10.30.0.0/26, 10.30.0.64/26,10.0.0.5").unwrap();
        assert_eq!(networks_text(&n), "10.30.0.0/26,10.30.0.64/26,10.0.0.5/32");
        assert!(parse_networks("10.30.0.0/26,nope").is_err());
        assert!(parse_networks("").unwrap().is_empty());
    }

    #[test]
    fn same_rule_ignores_order_and_name_but_not_tags() {
        let a = NatRule::snat(
            "r",
            vec![
                "10.0.1.0/24".parse().unwrap(),
                "10.0.0.0/24".parse().unwrap(),
            ],
            "192.0.2.7".parse().unwrap(),
            "ns",
            "one",
        )
        .with_namespace_uid("u1");
        let mut b = a.clone();
        b.display_name = "two".into();
        b.source_networks.reverse();
        assert!(a.same_rule(&b));
        b.namespace_uid = Some("u2".into());
        assert!(!a.same_rule(&b));
        let mut c = a.clone();
        c.enabled = false;
        assert!(!a.same_rule(&c));
    }
}
