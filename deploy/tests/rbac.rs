//! RBAC covers exactly the API calls the code makes.
//!
//! Three things must agree: the table `deploy/rbac.tsv` (binary, group,
//! resource, verbs, scope), the roles of the manifest, and the code: every
//! kube-rs `Api<K>` in the sources a binary is built from, with the calls
//! made on it. The code scan understands `let x: Api<K> = ...; x.get(..)`,
//! `let x = Api::<K>::...; x.list(..)`, `Api::<K>::all(c).get(..)` and
//! `watcher(Api::<K>::..)`; anything else it fails on, so a new kind of use
//! is not silently missed (extend the scanner, then the table).
//!
//! Scope: a `cluster` row is granted by the binary's ClusterRole (bound by a
//! ClusterRoleBinding); a `namespace:NS` row only by the binary's Role in NS,
//! bound by a RoleBinding in NS, and NOT by the ClusterRole. Both bindings
//! name the DaemonSet's ServiceAccount. In the code, every `Api<K>` of a
//! namespaced row must be built with `Api::namespaced(c, ns)` (or
//! `namespaced_with`/`default_namespaced`), never `Api::all`; when `ns` is a
//! string literal or a `const` of the scanned sources, it must be NS (any
//! other expression, e.g. `&self.namespace`, cannot be followed by this scan
//! and is taken as namespaced).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{documents, manifest, object, objects, pod_spec, repo_root};
use k8s_openapi::Resource;
use switchyard_deploy::Variant;

/// (group, resource, verb)
type Permission = (String, String, String);

/// Where a row of the table applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    /// Cluster-scoped objects, or objects in every namespace: the ClusterRole.
    Cluster,
    /// Objects of one namespace only: a Role in that namespace.
    Namespace(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Cluster => write!(f, "cluster"),
            Scope::Namespace(ns) => write!(f, "namespace:{ns}"),
        }
    }
}

/// binary -> permission -> the scope it is granted in.
type Table = BTreeMap<String, BTreeMap<Permission, Scope>>;

/// How the code built one `Api<K>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ApiScope {
    /// `Api::all`: every namespace (or a cluster-scoped kind).
    All,
    /// `Api::namespaced(c, ns)`: `Some(ns)` when the scan could resolve it
    /// (string literal or `const` of the scanned sources).
    Namespaced(Option<String>),
    /// The constructor is not visible where the `Api<K>` is named (e.g. a
    /// function parameter).
    Unknown,
}

/// Permission -> every way the code built the `Api` it uses it through.
type CodeUses = BTreeMap<Permission, BTreeSet<ApiScope>>;

/// The sources each binary is built from and the binary's ClusterRole.
const BINARIES: &[(&str, &[&str])] = &[
    (
        "switchyard-agent",
        &["node-agent/src", "cni/src", "ovs/src"],
    ),
    ("switchyard-proxy", &["kube-proxy/src", "ovs/src"]),
    (
        "switchyard-controller",
        &["controller/src", "router/src", "api/src"],
    ),
    ("switchyard-cpvip", &["cpvip/src", "router/src", "api/src"]),
    ("switchyard", &["cni/src"]),
];

/// Sources whose calls go to another cluster, with the Role granting them there: left out of
/// their binary's scan (the binary's own roles do not grant them) and checked against that
/// Role instead (supervisor mode's calls to the supervisor cluster).
const OTHER_CLUSTER: &[(&str, &str)] = &[(
    "controller/src/supervisor/remote.rs",
    "deploy/supervisor-role.yaml",
)];

/// Parses `deploy/rbac.tsv`: binary, group, resource, verbs (comma
/// separated), scope (`cluster` or `namespace:NS`), tab separated.
fn parse_table(text: &str) -> Result<Table, String> {
    let mut out: Table = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let n = n + 1;
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 5 {
            return Err(format!(
                "rbac.tsv line {n}: 5 tab-separated columns (binary, group, resource, verbs, scope), found {}",
                cols.len()
            ));
        }
        let scope = match cols[4] {
            "cluster" => Scope::Cluster,
            other => match other.strip_prefix("namespace:") {
                Some(ns) if !ns.is_empty() => Scope::Namespace(ns.to_string()),
                _ => {
                    return Err(format!(
                        "rbac.tsv line {n}: scope {other:?} is neither `cluster` nor `namespace:NAME`"
                    ));
                }
            },
        };
        if !seen.insert((cols[0], cols[1], cols[2])) {
            return Err(format!(
                "rbac.tsv line {n}: {} {}/{} is listed twice (one row per resource, one scope)",
                cols[0], cols[1], cols[2]
            ));
        }
        for verb in cols[3].split(',') {
            out.entry(cols[0].to_string()).or_default().insert(
                (cols[1].to_string(), cols[2].to_string(), verb.to_string()),
                scope.clone(),
            );
        }
    }
    Ok(out)
}

fn table() -> Table {
    let path = repo_root().join("deploy/rbac.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    parse_table(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// (group, plural) of a k8s-openapi kind named in the code.
fn resource_of(kind: &str) -> Option<(String, String)> {
    fn of<K: Resource>() -> Option<(String, String)> {
        Some((K::GROUP.to_string(), K::URL_PATH_SEGMENT.to_string()))
    }
    use k8s_openapi::api::{apps, coordination, core, discovery, events, networking};
    match kind {
        "Node" => of::<core::v1::Node>(),
        "Pod" => of::<core::v1::Pod>(),
        "Namespace" => of::<core::v1::Namespace>(),
        // The proxy watches Services decoded into its own slim type.
        "Service" | "SlimService" | "WatchedService" => of::<core::v1::Service>(),
        "Endpoints" => of::<core::v1::Endpoints>(),
        "ConfigMap" => of::<core::v1::ConfigMap>(),
        "Secret" => of::<core::v1::Secret>(),
        "Event" => of::<events::v1::Event>(),
        "EndpointSlice" => of::<discovery::v1::EndpointSlice>(),
        // switchyard-proxy's slim EndpointSlice (kube-proxy/src/objects/mod.rs).
        "Slice" | "WatchedSlice" => of::<discovery::v1::EndpointSlice>(),
        "Lease" => of::<coordination::v1::Lease>(),
        "DaemonSet" => of::<apps::v1::DaemonSet>(),
        // Switchyard's own kinds (api/src/lib.rs).
        "IPPool" => Some((switchyard_api::GROUP.to_string(), "ippools".to_string())),
        "ControlPlaneVIP" => Some((
            switchyard_api::GROUP.to_string(),
            "controlplanevips".to_string(),
        )),
        "RouteTarget" => Some((
            switchyard_api::GROUP.to_string(),
            "routetargets".to_string(),
        )),
        "NetworkPolicy" => of::<networking::v1::NetworkPolicy>(),
        "Segment" => Some((switchyard_api::GROUP.to_string(), "segments".to_string())),
        "SegmentAddress" => Some((
            switchyard_api::GROUP.to_string(),
            "segmentaddresses".to_string(),
        )),
        _ => None,
    }
}

/// RBAC verbs (and subresource) of a kube-rs `Api` method.
fn verbs_of(method: &str) -> Option<(&'static [&'static str], &'static str)> {
    Some(match method {
        "get" | "get_opt" | "get_metadata" | "get_metadata_opt" => (&["get"], ""),
        "list" | "list_metadata" => (&["list"], ""),
        "watch" | "watch_metadata" => (&["watch"], ""),
        "create" => (&["create"], ""),
        "replace" => (&["update"], ""),
        "patch" | "patch_metadata" => (&["patch"], ""),
        "delete" => (&["delete"], ""),
        "delete_collection" => (&["deletecollection"], ""),
        "get_status" => (&["get"], "/status"),
        "patch_status" => (&["patch"], "/status"),
        "replace_status" => (&["update"], "/status"),
        "entry" => (&["get", "create", "update"], ""),
        _ => return None,
    })
}

/// Source without comment lines and `#[cfg(test)]` modules (tests are not
/// part of the binary).
fn production_source(text: &str) -> String {
    let cut = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The identifier ending just before byte `end` of `s`.
fn ident_before(s: &str, end: usize) -> &str {
    let start = s[..end]
        .char_indices()
        .rev()
        .find(|(_, c)| !is_ident(*c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    &s[start..end]
}

/// Index just past the parenthesis closing the one at `open`.
fn close_paren(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Method names called as `.name(` on `var` between `from` and the next `fn `
/// (also with the call on the next line: `var\n    .name(`).
/// Whether `var` (an `Api`) is given to `watcher(var, ..)` in the function
/// after `from`.
fn given_to_watcher(src: &str, var: &str, from: usize) -> bool {
    let end = src[from..].find("fn ").map_or(src.len(), |i| from + i);
    let scope = &src[from..end];
    [format!("watcher({var},"), format!("watcher({var}.clone(),")]
        .iter()
        .any(|call| scope.contains(call.as_str()))
}

fn calls_on(src: &str, var: &str, from: usize) -> Vec<String> {
    // No variable name seen (e.g. `x: kube::Api<K>`): no calls found, which the caller
    // reports, instead of searching for "" forever.
    if var.is_empty() {
        return Vec::new();
    }
    let end = src[from..].find("fn ").map_or(src.len(), |i| from + i);
    let scope = &src[from..end];
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = scope[at..].find(var) {
        let pos = at + i;
        at = pos + var.len();
        // `x.services.remove(..)` is a field of another value, not the variable.
        if pos > 0
            && scope[..pos]
                .chars()
                .next_back()
                .is_some_and(|c| is_ident(c) || c == '.')
        {
            continue;
        }
        let rest = scope[at..].trim_start();
        let Some(rest) = rest.strip_prefix('.') else {
            continue;
        };
        let method: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        if method != "clone" && !method.is_empty() {
            out.push(method);
        }
    }
    out
}

/// `const NAME: &str = "value";` items of `src` (NAME -> value).
fn string_consts(src: &str, out: &mut BTreeMap<String, String>) {
    for line in production_source(src).lines() {
        let line = line.trim_start();
        let line = line.strip_prefix("pub ").unwrap_or(line);
        let line = line
            .strip_prefix("pub(crate) ")
            .unwrap_or(line)
            .trim_start();
        let Some(rest) = line.strip_prefix("const ") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once(':') else {
            continue;
        };
        let Some(value) = rest
            .trim_start()
            .strip_prefix("&str")
            .and_then(|r| r.trim_start().strip_prefix('='))
            .and_then(|r| r.trim().strip_suffix(';'))
            .and_then(|r| r.trim().strip_prefix('"'))
            .and_then(|r| r.strip_suffix('"'))
        else {
            continue;
        };
        out.insert(name.trim().to_string(), value.to_string());
    }
}

/// The second top-level argument of the call whose `(` is at `open`.
fn second_argument(s: &str, open: usize) -> Option<&str> {
    let close = close_paren(s, open)?;
    let inner = &s[open + 1..close - 1];
    let mut depth = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                let arg = inner[i + 1..].trim();
                return Some(arg.split(',').next().unwrap_or(arg).trim());
            }
            _ => {}
        }
    }
    None
}

/// How the `Api<K>` named at `after_kind` (just past its `>`) is built:
/// `Api::<K>::ctor(..)` (turbofish) or `Api<K> = Api::ctor(..)`.
fn api_scope(
    src: &str,
    after_kind: usize,
    turbofish: bool,
    consts: &BTreeMap<String, String>,
) -> ApiScope {
    let rest = &src[after_kind..];
    let ctor_at = if turbofish {
        rest.strip_prefix("::")
    } else {
        rest.trim_start()
            .strip_prefix('=')
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix("Api::"))
    };
    let Some(ctor_text) = ctor_at else {
        return ApiScope::Unknown;
    };
    let ctor: String = ctor_text.chars().take_while(|c| is_ident(*c)).collect();
    let open = src.len() - ctor_text.len() + ctor.len();
    if !src[open..].starts_with('(') {
        return ApiScope::Unknown;
    }
    match ctor.as_str() {
        "all" | "all_with" => ApiScope::All,
        "default_namespaced" | "default_namespaced_with" => ApiScope::Namespaced(None),
        "namespaced" | "namespaced_with" => {
            let arg = second_argument(src, open).unwrap_or_default();
            let arg = arg.trim_start_matches('&');
            let resolved =
                if let Some(lit) = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
                    Some(lit.to_string())
                } else {
                    let last = arg.rsplit("::").next().unwrap_or(arg);
                    consts.get(last).cloned()
                };
            ApiScope::Namespaced(resolved)
        }
        _ => ApiScope::Unknown,
    }
}

/// Every API permission the code in `src` needs, with how each `Api` using
/// it was built; Err names an use the scan cannot classify. `consts`: the
/// string constants of the sources (to resolve namespace arguments).
fn scan_source(
    src: &str,
    origin: &str,
    consts: &BTreeMap<String, String>,
) -> Result<CodeUses, String> {
    let src = production_source(src);
    let mut out = CodeUses::new();
    for forbidden in [
        ".request::<",
        "request_text(",
        "Recorder::new",
        "DynamicObject",
    ] {
        if src.contains(forbidden) {
            return Err(format!(
                "{origin}: `{forbidden}` makes API calls this scan does not classify"
            ));
        }
    }
    let mut at = 0;
    while let Some(i) = src[at..].find("Api") {
        let pos = at + i;
        at = pos + 3;
        if pos > 0 && src[..pos].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &src[pos + 3..];
        let (turbofish, generic) = if let Some(r) = rest.strip_prefix("::<") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix('<') {
            (false, r)
        } else {
            continue; // `Api::all(..)` etc.: typed by the `Api<K>` it is bound to.
        };
        let kind: String = generic
            .chars()
            .take_while(|c| is_ident(*c) || *c == ':')
            .collect();
        let kind = kind.rsplit("::").next().unwrap_or_default().to_string();
        let line = src[..pos].lines().count() + 1;
        let (group, resource) = resource_of(&kind).ok_or_else(|| {
            format!("{origin}:{line}: Api<{kind}>: unknown kind; add it to resource_of()")
        })?;
        let line_start = src[..pos].rfind('\n').map_or(0, |i| i + 1);
        let before = &src[line_start..pos];
        let after_kind =
            pos + 3 + if turbofish { 3 } else { 1 } + generic.find('>').unwrap_or(0) + 1;
        let scope = api_scope(&src, after_kind, turbofish, consts);
        let mut methods: Vec<String> = Vec::new();
        let mut watched = false;
        if before.contains("watcher(") || before.contains("reflector(") {
            watched = true;
        } else if let Some(colon) = before.trim_end().strip_suffix(':') {
            // `let var: Api<K> = ...`, called on or given to `watcher(var, ..)`
            let var = ident_before(colon, colon.len());
            methods = calls_on(&src, var, pos);
            watched = given_to_watcher(&src, var, pos);
        } else if turbofish {
            // `Api::<K>::ctor(..)` followed by `.method(` or bound by `let var =`.
            let after = &src[after_kind..];
            let open = after.find('(').map(|i| after_kind + i);
            let closed = open.and_then(|o| close_paren(&src, o));
            if let Some(c) = closed
                && let Some(chain) = src[c..].strip_prefix('.')
            {
                methods.push(chain.chars().take_while(|c| is_ident(*c)).collect());
            } else if let Some(eq) = before.trim_end().strip_suffix('=') {
                let var = ident_before(eq.trim_end(), eq.trim_end().len());
                methods = calls_on(&src, var, pos);
            }
        }
        if watched {
            for verb in ["list", "watch"] {
                out.entry((group.clone(), resource.clone(), verb.to_string()))
                    .or_default()
                    .insert(scope.clone());
            }
            if methods.is_empty() {
                continue;
            }
        }
        if methods.is_empty() {
            return Err(format!(
                "{origin}:{line}: cannot tell which API calls this Api<{kind}> makes"
            ));
        }
        for m in methods {
            let (verbs, sub) = verbs_of(&m).ok_or_else(|| {
                format!("{origin}:{line}: Api<{kind}>.{m}(): unknown kube-rs method; add it to verbs_of()")
            })?;
            for v in verbs {
                out.entry((group.clone(), format!("{resource}{sub}"), v.to_string()))
                    .or_default()
                    .insert(scope.clone());
            }
        }
    }
    Ok(out)
}

/// The `.rs` files under `dir`, sorted, with their path from the repository root.
fn rust_files(dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let origin = path
                .strip_prefix(repo_root())
                .unwrap()
                .display()
                .to_string();
            out.push((origin, text));
        }
    }
}

/// The API calls of `binary`'s code, with how each `Api` was built.
fn code_uses(binary: &str) -> CodeUses {
    let dirs = BINARIES.iter().find(|(b, _)| *b == binary).unwrap().1;
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&repo_root().join(dir), &mut files);
    }
    let mut consts = BTreeMap::new();
    for (_, text) in &files {
        string_consts(text, &mut consts);
    }
    let mut out = CodeUses::new();
    for (origin, text) in &files {
        if OTHER_CLUSTER.iter().any(|(f, _)| f == origin) {
            continue;
        }
        let uses = scan_source(text, origin, &consts).unwrap_or_else(|e| panic!("{e}"));
        for (permission, scopes) in uses {
            out.entry(permission).or_default().extend(scopes);
        }
    }
    out
}

/// The code of `binary` against its rows of the table: the same API calls,
/// and the calls of a namespaced row only through `Api`s of that namespace.
fn check_code(
    binary: &str,
    code: &CodeUses,
    listed: &BTreeMap<Permission, Scope>,
) -> Result<(), String> {
    let code_set: BTreeSet<&Permission> = code.keys().collect();
    let listed_set: BTreeSet<&Permission> = listed.keys().collect();
    if code_set != listed_set {
        return Err(format!(
            "{binary}: the code's API calls (left) differ from deploy/rbac.tsv (right):\n{code_set:?}\n{listed_set:?}"
        ));
    }
    for (permission, scope) in listed {
        let Scope::Namespace(ns) = scope else {
            continue;
        };
        for api in &code[permission] {
            match api {
                ApiScope::Namespaced(None) => {}
                ApiScope::Namespaced(Some(used)) if used == ns => {}
                ApiScope::Namespaced(Some(used)) => {
                    return Err(format!(
                        "{binary}: {permission:?} is scoped to namespace {ns} in rbac.tsv but the code uses an Api::namespaced(.., {used:?})"
                    ));
                }
                ApiScope::All => {
                    return Err(format!(
                        "{binary}: {permission:?} is scoped to namespace {ns} in rbac.tsv but the code uses a cluster-wide Api::all"
                    ));
                }
                ApiScope::Unknown => {
                    return Err(format!(
                        "{binary}: {permission:?} is scoped to namespace {ns} in rbac.tsv but the scan cannot see how the code builds one of its Apis (build it with Api::namespaced where it is named)"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn role_permissions(role: &serde_json::Value) -> Result<BTreeSet<Permission>, String> {
    let mut out = BTreeSet::new();
    let name = &role["metadata"]["name"];
    let list = |rule: &serde_json::Value, key: &str| -> Result<Vec<String>, String> {
        rule[key]
            .as_array()
            .ok_or_else(|| format!("{} {name}: a rule without {key}", role["kind"]))?
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{} {name}: {key} holds a non-string", role["kind"]))
            })
            .collect()
    };
    for rule in role["rules"].as_array().into_iter().flatten() {
        for g in list(rule, "apiGroups")? {
            for r in list(rule, "resources")? {
                for v in list(rule, "verbs")? {
                    if v == "*" || r == "*" || g == "*" {
                        return Err(format!("{} {name}: no wildcards", role["kind"]));
                    }
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    Ok(out)
}

/// The one binding of `kind` named `name` (in `namespace` for a RoleBinding)
/// must refer to the role `role_kind`/`name` and name only `account`.
fn check_binding(
    docs: &[serde_json::Value],
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    role_kind: &str,
    account: (&str, &str),
) -> Result<(), String> {
    let place = namespace.map_or(String::new(), |ns| format!(" in namespace {ns}"));
    let found: Vec<&serde_json::Value> = objects(docs, kind)
        .into_iter()
        .filter(|b| {
            b["metadata"]["name"] == name
                && namespace.is_none_or(|ns| b["metadata"]["namespace"] == ns)
        })
        .collect();
    let [binding] = found[..] else {
        return Err(format!(
            "expected exactly one {kind} {name}{place}, found {}",
            found.len()
        ));
    };
    if binding["roleRef"]["kind"] != role_kind
        || binding["roleRef"]["name"] != name
        || binding["roleRef"]["apiGroup"] != "rbac.authorization.k8s.io"
    {
        return Err(format!(
            "{kind} {name}{place} must refer to the {role_kind} {name}, not {}",
            binding["roleRef"]
        ));
    }
    let want = serde_json::json!([{
        "kind": "ServiceAccount", "name": account.1, "namespace": account.0,
    }]);
    if binding["subjects"] != want {
        return Err(format!(
            "{kind} {name}{place} must bind exactly the ServiceAccount {}/{}, not {}",
            account.0, account.1, binding["subjects"]
        ));
    }
    Ok(())
}

/// The roles and bindings of a manifest against the table: each binary's
/// `cluster` rows exactly in its ClusterRole (bound to `account`, the
/// (namespace, name) of the pods' ServiceAccount); its `namespace:NS` rows
/// exactly in its Role in NS (bound by a RoleBinding in NS to `account`)
/// and not in the ClusterRole; no other ClusterRole or Role.
fn check_roles(
    docs: &[serde_json::Value],
    table: &Table,
    account: (&str, &str),
) -> Result<(), String> {
    check_roles_for(docs, table, &BTreeMap::new(), account)
}

/// [`check_roles`] with the ServiceAccount of some binaries given apart (the controller's
/// Deployment has its own); the others use `account`.
fn check_roles_for(
    docs: &[serde_json::Value],
    table: &Table,
    accounts: &BTreeMap<String, (String, String)>,
    account: (&str, &str),
) -> Result<(), String> {
    // (kind, namespace or "", role name) -> permissions the table wants there.
    let mut wanted: BTreeMap<(&str, String, String), BTreeSet<Permission>> = BTreeMap::new();
    for (binary, rows) in table {
        for (permission, scope) in rows {
            let key = match scope {
                Scope::Cluster => ("ClusterRole", String::new(), binary.clone()),
                Scope::Namespace(ns) => ("Role", ns.clone(), binary.clone()),
            };
            wanted.entry(key).or_default().insert(permission.clone());
        }
    }
    let mut found: BTreeMap<(&str, String, String), BTreeSet<Permission>> = BTreeMap::new();
    for kind in ["ClusterRole", "Role"] {
        for role in objects(docs, kind) {
            let name = role["metadata"]["name"].as_str().unwrap_or_default();
            let ns = if kind == "Role" {
                role["metadata"]["namespace"]
                    .as_str()
                    .ok_or_else(|| format!("Role {name} without a namespace"))?
                    .to_string()
            } else {
                String::new()
            };
            let key = (kind, ns, name.to_string());
            if found.insert(key.clone(), role_permissions(role)?).is_some() {
                return Err(format!("{kind} {name} appears twice"));
            }
        }
    }
    for ((kind, ns, name), granted) in &found {
        let place = if ns.is_empty() {
            String::new()
        } else {
            format!(" in namespace {ns}")
        };
        let Some(want) = wanted.get(&(*kind, ns.clone(), name.clone())) else {
            return Err(format!(
                "{kind} {name}{place}: rbac.tsv has no {} row of a binary {name}",
                if ns.is_empty() {
                    "cluster".to_string()
                } else {
                    format!("namespace:{ns}")
                }
            ));
        };
        if granted != want {
            // Name what is granted at the wrong scope, the likely mistake.
            for extra in granted.difference(want) {
                if let Some(scope) = table.get(name).and_then(|rows| rows.get(extra)) {
                    return Err(format!(
                        "{kind} {name}{place} grants {extra:?}, which rbac.tsv scopes to {scope}: it belongs in {}",
                        match scope {
                            Scope::Cluster => "the ClusterRole".to_string(),
                            Scope::Namespace(ns) => format!("the Role in namespace {ns}"),
                        }
                    ));
                }
            }
            return Err(format!(
                "{kind} {name}{place} grants (left) other than rbac.tsv (right):\n{granted:?}\n{want:?}"
            ));
        }
    }
    for (kind, ns, name) in wanted.keys() {
        if !found.contains_key(&(*kind, ns.clone(), name.clone())) {
            let place = if ns.is_empty() {
                String::new()
            } else {
                format!(" in namespace {ns}")
            };
            return Err(format!(
                "no {kind} {name}{place}, which rbac.tsv rows of {name} need"
            ));
        }
        let account = accounts
            .get(name)
            .map_or(account, |(n, a)| (n.as_str(), a.as_str()));
        if *kind == "ClusterRole" {
            check_binding(docs, "ClusterRoleBinding", None, name, kind, account)?;
        } else {
            check_binding(docs, "RoleBinding", Some(ns), name, kind, account)?;
        }
    }
    Ok(())
}

#[test]
fn table_lists_exactly_the_api_calls_of_the_code() {
    let table = table();
    for (binary, _) in BINARIES {
        let code = code_uses(binary);
        let listed = table.get(*binary).cloned().unwrap_or_default();
        check_code(binary, &code, &listed).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(
        table.keys().all(|b| BINARIES.iter().any(|(x, _)| x == b)),
        "rbac.tsv names an unknown binary"
    );
}

/// The calls another cluster receives are exactly what its Role grants, all through
/// namespaced Apis (the Role is one namespace's).
#[test]
fn other_cluster_roles_grant_exactly_their_calls() {
    for (file, role_file) in OTHER_CLUSTER {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        let code = scan_source(&text, file, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
        for (permission, scopes) in &code {
            assert!(
                scopes.iter().all(|s| matches!(s, ApiScope::Namespaced(_))),
                "{file}: {permission:?} through an Api that is not Api::namespaced"
            );
        }
        let yaml = std::fs::read_to_string(repo_root().join(role_file)).unwrap();
        let docs = documents(&yaml);
        let roles = objects(&docs, "Role");
        assert_eq!(roles.len(), 1, "{role_file}: one Role");
        assert!(
            objects(&docs, "ClusterRole").is_empty(),
            "{role_file}: no ClusterRole"
        );
        let granted = role_permissions(roles[0]).unwrap_or_else(|e| panic!("{e}"));
        let called: BTreeSet<Permission> = code.keys().cloned().collect();
        assert_eq!(
            called, granted,
            "{file}'s calls (left) differ from what {role_file} grants (right)"
        );
    }
}

#[test]
fn roles_grant_exactly_the_table_at_its_scope() {
    let table = table();
    for variant in Variant::ALL {
        let docs = manifest(variant);
        let daemonset = object(&docs, "DaemonSet", "switchyard-node");
        let account = (
            daemonset["metadata"]["namespace"].as_str().unwrap(),
            pod_spec(&docs)["serviceAccountName"].as_str().unwrap(),
        );
        object(&docs, "ServiceAccount", account.1);
        // The controller's Deployment runs as its own ServiceAccount.
        let deployment = object(&docs, "Deployment", "switchyard-controller");
        let controller = (
            deployment["metadata"]["namespace"]
                .as_str()
                .unwrap()
                .to_string(),
            deployment["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        assert_ne!(
            controller.1, account.1,
            "the controller has its own ServiceAccount"
        );
        object(&docs, "ServiceAccount", &controller.1);
        // switchyard-cpvip's DaemonSet (deploy/switchyard-cpvip.yaml) runs as its own account.
        let cpvip_ds = cpvip_daemonset();
        let cpvip = (
            cpvip_ds["metadata"]["namespace"]
                .as_str()
                .unwrap()
                .to_string(),
            cpvip_ds["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        object(&docs, "ServiceAccount", &cpvip.1);
        let accounts = BTreeMap::from([
            ("switchyard-controller".to_string(), controller),
            ("switchyard-cpvip".to_string(), cpvip),
        ]);
        check_roles_for(&docs, &table, &accounts, account)
            .unwrap_or_else(|e| panic!("{}: {e}", variant.file_name()));
    }
}

/// The DaemonSet of `deploy/switchyard-cpvip.yaml`.
fn cpvip_daemonset() -> serde_json::Value {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("switchyard-cpvip.yaml"),
    )
    .unwrap();
    documents(&text)
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("deploy/switchyard-cpvip.yaml has a DaemonSet")
}

/// A manifest like the generated one, small, with `cluster_extra` added to
/// the ClusterRole's rules and the Role/RoleBinding documents given.
fn small_manifest(cluster_extra: &str, role_docs: &str) -> Vec<serde_json::Value> {
    documents(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: agent}}
rules:
  - apiGroups: [""]
    resources: [nodes]
    verbs: [get, watch]
{cluster_extra}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: agent}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: agent}}
subjects: [{{kind: ServiceAccount, name: sa, namespace: sys}}]
{role_docs}
"#
    ))
}

const SMALL_ROLE: &str = r#"
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: agent, namespace: sys}
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, update]
"#;

const SMALL_ROLE_BINDING: &str = r#"
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: agent, namespace: sys}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: agent}
subjects: [{kind: ServiceAccount, name: sa, namespace: sys}]
"#;

const SMALL_TABLE: &str = "# comment\n\
agent\t\tnodes\tget,watch\tcluster\n\
agent\t\tconfigmaps\tget,update\tnamespace:sys\n";

#[test]
fn role_check_refuses_namespaced_rows_outside_their_role() {
    let table = parse_table(SMALL_TABLE).unwrap();
    let account = ("sys", "sa");
    let good = format!("{SMALL_ROLE}{SMALL_ROLE_BINDING}");
    check_roles(&small_manifest("", &good), &table, account).unwrap();

    // The Role is missing (its binding alone does not grant anything).
    let err = check_roles(&small_manifest("", SMALL_ROLE_BINDING), &table, account).unwrap_err();
    assert!(err.contains("no Role agent in namespace sys"), "{err}");

    // The rule is back in the ClusterRole (with or without the Role).
    let in_cluster_role = r#"  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, update]"#;
    for roles in [good.as_str(), ""] {
        let err =
            check_roles(&small_manifest(in_cluster_role, roles), &table, account).unwrap_err();
        assert!(
            err.contains("ClusterRole agent grants")
                && err.contains("namespace:sys")
                && err.contains("the Role in namespace sys"),
            "{err}"
        );
    }

    // The Role in another namespace.
    let elsewhere = good.replace("namespace: sys}", "namespace: other}");
    let err = check_roles(&small_manifest("", &elsewhere), &table, account).unwrap_err();
    assert!(err.contains("Role agent in namespace other"), "{err}");

    // No RoleBinding, or one binding another ServiceAccount or the ClusterRole.
    let err = check_roles(&small_manifest("", SMALL_ROLE), &table, account).unwrap_err();
    assert!(
        err.contains("exactly one RoleBinding agent in namespace sys"),
        "{err}"
    );
    let wrong_account = format!(
        "{SMALL_ROLE}{}",
        SMALL_ROLE_BINDING.replace("name: sa,", "name: default,")
    );
    let err = check_roles(&small_manifest("", &wrong_account), &table, account).unwrap_err();
    assert!(err.contains("ServiceAccount sys/sa"), "{err}");
    let wrong_ref = format!(
        "{SMALL_ROLE}{}",
        SMALL_ROLE_BINDING.replace("kind: Role,", "kind: ClusterRole,")
    );
    let err = check_roles(&small_manifest("", &wrong_ref), &table, account).unwrap_err();
    assert!(err.contains("must refer to the Role agent"), "{err}");

    // A Role grants more than its rows.
    let more = good.replace("verbs: [get, update]", "verbs: [get, update, delete]");
    let err = check_roles(&small_manifest("", &more), &table, account).unwrap_err();
    assert!(err.contains("Role agent in namespace sys grants"), "{err}");
}

#[test]
fn table_rows_say_their_scope() {
    let t = parse_table(SMALL_TABLE).unwrap();
    let p = |g: &str, r: &str, v: &str| (g.to_string(), r.to_string(), v.to_string());
    assert_eq!(t["agent"][&p("", "nodes", "watch")], Scope::Cluster);
    assert_eq!(
        t["agent"][&p("", "configmaps", "update")],
        Scope::Namespace("sys".to_string())
    );
    let err = parse_table("agent\t\tnodes\tget\n").unwrap_err();
    assert!(err.contains("5 tab-separated columns"), "{err}");
    let err = parse_table("agent\t\tnodes\tget\tnamespace:\n").unwrap_err();
    assert!(err.contains("neither `cluster` nor"), "{err}");
    let err = parse_table("agent\t\tnodes\tget\tcluster\nagent\t\tnodes\twatch\tnamespace:a\n")
        .unwrap_err();
    assert!(err.contains("listed twice"), "{err}");
}

#[test]
fn code_check_refuses_cluster_wide_use_of_a_namespaced_row() {
    let table = parse_table(SMALL_TABLE).unwrap();
    let consts: BTreeMap<String, String> = [("SYS_NS".to_string(), "sys".to_string())]
        .into_iter()
        .collect();
    let check = |src: &str| {
        let code = scan_source(src, "t.rs", &consts).unwrap();
        check_code("agent", &code, &table["agent"])
    };
    let nodes =
        "fn n(c: C) { let n: Api<Node> = Api::all(c); n.get(\"x\"); n.watch(&wp, \"0\"); }\n";
    // Namespaced by literal, by const (also by path), by an expression the
    // scan cannot follow.
    for cm in [
        "let cm: Api<ConfigMap> = Api::namespaced(c, \"sys\");",
        "let cm = Api::<ConfigMap>::namespaced(c.clone(), crate::ns::SYS_NS);",
        "let cm: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);",
    ] {
        check(&format!(
            "{nodes}fn f(c: C) {{ {cm} cm.get(\"a\"); cm.replace(\"a\", &pp, &x); }}"
        ))
        .unwrap();
    }
    let err = check(&format!(
        "{nodes}fn f(c: C) {{ let cm: Api<ConfigMap> = Api::all(c); cm.get(\"a\"); cm.replace(\"a\", &pp, &x); }}"
    ))
    .unwrap_err();
    assert!(err.contains("cluster-wide Api::all"), "{err}");
    let err = check(&format!(
        "{nodes}fn f(c: C) {{ let cm: Api<ConfigMap> = Api::namespaced(c, \"kube-system\"); cm.get(\"a\"); cm.replace(\"a\", &pp, &x); }}"
    ))
    .unwrap_err();
    assert!(err.contains("\"kube-system\""), "{err}");
    // One cluster-wide use among namespaced ones is enough to fail.
    let err = check(&format!(
        "{nodes}fn f(c: C) {{ let cm: Api<ConfigMap> = Api::namespaced(c, \"sys\"); cm.get(\"a\"); }}\n\
         fn g(c: C) {{ Api::<ConfigMap>::all(c).replace(\"a\", &pp, &x); }}"
    ))
    .unwrap_err();
    assert!(err.contains("cluster-wide"), "{err}");
    // A call the table does not list.
    let err = check(&format!(
        "{nodes}fn f(c: C) {{ let cm: Api<ConfigMap> = Api::namespaced(c, \"sys\"); cm.get(\"a\"); cm.delete(\"a\", &dp); }}"
    ))
    .unwrap_err();
    assert!(err.contains("differ from deploy/rbac.tsv"), "{err}");

    let mut found = BTreeMap::new();
    string_consts(
        "pub const A: &str = \"x\";\nconst B: u32 = 1;\npub(crate) const C: &str = \"y\";\n",
        &mut found,
    );
    assert_eq!(found.len(), 2);
    assert_eq!(found["C"], "y");
}

#[test]
fn scanner_finds_calls_and_refuses_what_it_cannot_classify() {
    let src = r#"
async fn a(c: Client) {
    let nodes: Api<Node> = Api::all(c.clone());
    nodes.get("n").await;
    let pods = Api::<Pod>::namespaced(c.clone(), "ns");
    pods.patch_status("p", &pp, &patch).await;
    Api::<Service>::all(c.clone()).list(&lp).await;
    let w = watcher::watcher(Api::<EndpointSlice>::all(c), cfg);
    let maps: Api<ConfigMap> = Api::namespaced(c.clone(), "sys");
    let m = watcher(maps, watcher::Config::default());
    // let x: Api<Secret> = Api::all(c); x.get("in a comment")
}
#[cfg(test)]
mod tests { fn t(c: Client) { let s: Api<Secret> = Api::all(c); s.delete("x"); } }
"#;
    let none = BTreeMap::new();
    let got = scan_source(src, "t.rs", &none).unwrap();
    let p = |g: &str, r: &str, v: &str| (g.to_string(), r.to_string(), v.to_string());
    let all = || [ApiScope::All].into_iter().collect::<BTreeSet<_>>();
    let want: CodeUses = [
        (p("", "nodes", "get"), all()),
        (
            p("", "pods/status", "patch"),
            [ApiScope::Namespaced(Some("ns".to_string()))]
                .into_iter()
                .collect(),
        ),
        (p("", "services", "list"), all()),
        (
            p("", "configmaps", "list"),
            [ApiScope::Namespaced(Some("sys".to_string()))]
                .into_iter()
                .collect(),
        ),
        (
            p("", "configmaps", "watch"),
            [ApiScope::Namespaced(Some("sys".to_string()))]
                .into_iter()
                .collect(),
        ),
        (p("discovery.k8s.io", "endpointslices", "list"), all()),
        (p("discovery.k8s.io", "endpointslices", "watch"), all()),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);

    let err = scan_source("fn f(api: Api<Node>) { g(api) }", "x.rs", &none).unwrap_err();
    assert!(err.contains("cannot tell"), "{err}");
    let err = scan_source(
        "fn f(c: C) { let a: Api<Widget> = Api::all(c); a.get(\"x\"); }",
        "x.rs",
        &none,
    )
    .unwrap_err();
    assert!(err.contains("unknown kind"), "{err}");
    let err = scan_source(
        "fn f(c: C) { let a: Api<Pod> = Api::all(c); a.evict(\"x\"); }",
        "x.rs",
        &none,
    )
    .unwrap_err();
    assert!(err.contains("evict"), "{err}");
}
