//! Placement is the namespace owner's decision: a pod stays on its
//! namespace's segment and VLAN unless the cluster admin lets the pods of
//! that namespace choose (namespace annotation
//! [`ANNOTATION_POD_PLACEMENT`]` = `[`POD_PLACEMENT_ALLOW`]). Pods of a
//! namespace network made by `switchyard-controller` never leave it.
//!
//! If segments separate tenants, a pod author who could name any segment or
//! VLAN in the pod's own annotations could join another tenant's network;
//! the namespace object, not the pod, is what the cluster admin controls.
//! A pod annotation that repeats its namespace's choice is accepted.

use std::collections::BTreeMap;
use std::fmt;

use super::{ANNOTATION_SEGMENT, ANNOTATION_VLAN, LABEL_NETWORK, SegmentError};
use crate::config::SegmentConfig;

/// Namespace annotation, set by the cluster admin, that lets the
/// namespace's pods choose their own segment and VLAN with
/// `switchyard.io/segment` and `switchyard.io/vlan` (value
/// [`POD_PLACEMENT_ALLOW`]; any other value or none: the namespace decides).
pub const ANNOTATION_POD_PLACEMENT: &str = "switchyard.io/pod-placement";
/// The value of [`ANNOTATION_POD_PLACEMENT`] that lets pods choose.
pub const POD_PLACEMENT_ALLOW: &str = "allow";
/// The value of [`ANNOTATION_POD_PLACEMENT`] that says the default aloud.
pub const POD_PLACEMENT_NAMESPACE: &str = "namespace";
/// The finalizer `switchyard-controller` puts on a namespace it gave its own
/// network. The namespace map [`super::decide`] gets carries it under this
/// key (value `finalizer`) beside the annotations, as it carries the
/// [`LABEL_NETWORK`] label: with either, the namespace has its own network.
pub const FINALIZER_NAMESPACE_NETWORK: &str = "switchyard.io/namespace-network";

/// Why a namespace's pods may not choose their placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// No [`ANNOTATION_POD_PLACEMENT`] (or `namespace`): the default.
    NamespaceDecides,
    /// [`ANNOTATION_POD_PLACEMENT`] with a value that is not `allow`.
    UnknownValue(String),
    /// A namespace network made by `switchyard-controller`.
    OwnNetwork,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::NamespaceDecides => write!(
                f,
                "placement is the namespace owner's decision; the cluster admin lets a namespace's pods choose with the namespace annotation {ANNOTATION_POD_PLACEMENT}={POD_PLACEMENT_ALLOW}"
            ),
            Rule::UnknownValue(v) => write!(
                f,
                "placement is the namespace owner's decision; the namespace annotation {ANNOTATION_POD_PLACEMENT}={v:?} is not {POD_PLACEMENT_ALLOW:?}, the value that lets its pods choose"
            ),
            Rule::OwnNetwork => write!(
                f,
                "placement is the namespace owner's decision; the namespace has its own network (switchyard-controller), which its pods never leave ({ANNOTATION_POD_PLACEMENT} does not apply to it)"
            ),
        }
    }
}

/// Whether the namespace with these annotations (and network label and
/// finalizer mark) lets its pods choose: `None` if so, else the rule that
/// keeps them on the namespace's placement.
pub fn restriction(namespace_annotations: &BTreeMap<String, String>) -> Option<Rule> {
    let own_network = namespace_annotations.get(LABEL_NETWORK).map(String::as_str)
        == Some("dedicated")
        || namespace_annotations.contains_key(FINALIZER_NAMESPACE_NETWORK);
    if own_network {
        return Some(Rule::OwnNetwork);
    }
    match namespace_annotations
        .get(ANNOTATION_POD_PLACEMENT)
        .map(|v| v.trim())
    {
        Some(POD_PLACEMENT_ALLOW) => None,
        None | Some(POD_PLACEMENT_NAMESPACE) => Some(Rule::NamespaceDecides),
        Some(other) => Some(Rule::UnknownValue(other.to_string())),
    }
}

/// Refuses a pod's segment or VLAN annotation that differs from what its
/// namespace chose, unless the namespace lets its pods choose. Malformed
/// values are left to [`super::decide`], which names them.
pub(super) fn check(
    namespace: &str,
    pod_annotations: &BTreeMap<String, String>,
    namespace_annotations: &BTreeMap<String, String>,
    segments: &[SegmentConfig],
    default_segment: &str,
) -> Result<(), SegmentError> {
    let Some(rule) = restriction(namespace_annotations) else {
        return Ok(());
    };
    let ns_value = |key: &str| namespace_annotations.get(key).map(|v| v.trim());
    let ns_segment = match ns_value(ANNOTATION_SEGMENT) {
        Some(name) if !name.is_empty() => name,
        _ => default_segment,
    };
    // The namespace's VLAN: its annotation, else its segment's VLAN.
    let ns_vlan: Option<String> = match ns_value(ANNOTATION_VLAN) {
        Some(v) => Some(
            v.parse::<u16>()
                .map_or_else(|_| format!("{v:?}"), |n| n.to_string()),
        ),
        None => segments
            .iter()
            .find(|s| s.name == ns_segment)
            .map(|s| s.vlan.to_string()),
    };
    let choice = || match &ns_vlan {
        Some(vlan) => format!("segment {ns_segment:?}, VLAN {vlan}"),
        None => format!("segment {ns_segment:?}"),
    };
    let refuse = |annotation: &'static str, value: &str| SegmentError::PlacementRefused {
        annotation,
        value: value.to_string(),
        namespace: namespace.to_string(),
        namespace_choice: choice(),
        rule: rule.clone(),
    };
    if let Some(asked) = pod_annotations.get(ANNOTATION_SEGMENT).map(|v| v.trim())
        && !asked.is_empty()
        && asked != ns_segment
    {
        return Err(refuse(ANNOTATION_SEGMENT, asked));
    }
    if let Some(asked) = pod_annotations.get(ANNOTATION_VLAN).map(|v| v.trim())
        && let Ok(number) = asked.parse::<u16>()
        && ns_vlan.as_deref() != Some(number.to_string().as_str())
    {
        return Err(refuse(ANNOTATION_VLAN, asked));
    }
    Ok(())
}
