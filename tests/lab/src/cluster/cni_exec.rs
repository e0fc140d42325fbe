//! Executing CNI plugins the way libcni (containerd, CRI-O) does for a conflist.
//!
//! - Each plugin is found by its `type` in `CNI_PATH` and executed with the process
//!   environment plus `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`
//!   and `CNI_PATH` (empty strings where a verb has no value, as libcni sets them).
//! - Its stdin is the plugin's object from the conflist with `name` and `cniVersion` of the
//!   list, `prevResult` when there is one, and `runtimeConfig` holding the capability arguments
//!   the plugin declared in `capabilities` (only those). Keys are sorted, as Go's
//!   `encoding/json` writes a `map[string]interface{}`.
//! - ADD runs the plugins in order, each getting the previous one's result as `prevResult`,
//!   and caches the final result in `<cache>/results/<network>-<containerID>-<ifname>`
//!   (libcni's `cniCacheV1` document). DEL runs them in reverse with the cached result as
//!   `prevResult` (list version 0.4.0 and later) and removes the cache entry; CHECK needs the
//!   cached result. GC first DELs every cached attachment of the network that is not in the
//!   valid set, then (1.1.0) calls GC on each plugin with `cni.dev/valid-attachments` (and
//!   the misspelt `cni.dev/attachments` libcni also writes).
//! - A plugin that exits non-zero has its error on stdout (`code`, `msg`, `details`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

/// How long one plugin execution may take.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// A CNI failure.
#[derive(Debug, thiserror::Error)]
pub enum CniExecError {
    /// The conflist could not be used.
    #[error("network configuration {path}: {reason}")]
    Config {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No plugin binary of this type in CNI_PATH.
    #[error("failed to find plugin {plugin:?} in path {path:?}")]
    NotFound {
        /// Type.
        plugin: String,
        /// CNI_PATH entries.
        path: Vec<PathBuf>,
    },
    /// The plugin returned a CNI error.
    #[error("plugin {plugin} failed ({verb}): code {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        /// Plugin type.
        plugin: String,
        /// Verb.
        verb: String,
        /// CNI error code.
        code: u64,
        /// Message.
        msg: String,
        /// Details.
        details: String,
    },
    /// The plugin failed without a CNI error document.
    #[error("plugin {plugin} failed ({verb}): {message}")]
    Exec {
        /// Plugin type.
        plugin: String,
        /// Verb.
        verb: String,
        /// What happened (exit status, stderr, or invalid output).
        message: String,
    },
    /// CHECK without a cached result.
    #[error("could not retrieve cached result for {0}")]
    NoCachedResult(String),
    /// Cache I/O.
    #[error("CNI cache {path}: {source}")]
    Cache {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The runtime side of one attachment (libcni's `RuntimeConf`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConf {
    /// Sandbox (container) id.
    pub container_id: String,
    /// Path of the pod network namespace.
    pub netns: String,
    /// Interface name in the pod.
    pub ifname: String,
    /// `CNI_ARGS` pairs, in order.
    pub args: Vec<(String, String)>,
    /// Capability arguments (e.g. `io.kubernetes.cri.pod-annotations`).
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    /// The arguments kubelet/containerd pass for a pod sandbox.
    pub fn for_pod(
        container_id: &str,
        netns: &str,
        namespace: &str,
        name: &str,
        uid: &str,
        annotations: &BTreeMap<String, String>,
    ) -> RuntimeConf {
        let mut caps = Map::new();
        caps.insert(
            "io.kubernetes.cri.pod-annotations".into(),
            json!(annotations),
        );
        RuntimeConf {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), namespace.into()),
                ("K8S_POD_NAME".into(), name.into()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.into()),
                ("K8S_POD_UID".into(), uid.into()),
            ],
            capability_args: caps,
        }
    }

    /// `CNI_ARGS` as libcni joins them.
    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// An attachment found in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAttachment {
    /// The runtime configuration it was added with.
    pub rt: RuntimeConf,
    /// Network name.
    pub network: String,
    /// The cached result.
    pub result: Option<Value>,
}

/// A conflist, the plugin search path and the cache directory.
#[derive(Debug, Clone)]
pub struct CniConfig {
    list_bytes: Vec<u8>,
    list: Value,
    path: Vec<PathBuf>,
    cache_dir: PathBuf,
}

/// Recursively sorts object keys (Go marshals maps with sorted keys).
pub fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let b: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
            let mut out = Map::new();
            for (k, v) in b {
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn version_at_least(v: &str, min: (u64, u64, u64)) -> bool {
    let p: Vec<u64> = v.split('.').map(|x| x.parse().unwrap_or(0)).collect();
    let t = (
        p.first().copied().unwrap_or(0),
        p.get(1).copied().unwrap_or(0),
        p.get(2).copied().unwrap_or(0),
    );
    t >= min
}

/// Standard base64 (Go's encoding of a `[]byte` field).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl CniConfig {
    /// Loads a conflist file.
    pub fn load(
        conflist: &Path,
        path: Vec<PathBuf>,
        cache_dir: PathBuf,
    ) -> Result<CniConfig, CniExecError> {
        let bad = |reason: String| CniExecError::Config {
            path: conflist.to_path_buf(),
            reason,
        };
        let list_bytes = fs::read(conflist).map_err(|e| bad(e.to_string()))?;
        let list: Value = serde_json::from_slice(&list_bytes).map_err(|e| bad(e.to_string()))?;
        if !list["name"].is_string() || !list["cniVersion"].is_string() {
            return Err(bad("needs string name and cniVersion".into()));
        }
        if list["plugins"].as_array().is_none_or(Vec::is_empty) {
            return Err(bad("needs a non-empty plugins list".into()));
        }
        Ok(CniConfig {
            list_bytes,
            list,
            path,
            cache_dir,
        })
    }

    /// Network name.
    pub fn name(&self) -> &str {
        self.list["name"].as_str().unwrap_or("")
    }

    /// The list's cniVersion.
    pub fn version(&self) -> &str {
        self.list["cniVersion"].as_str().unwrap_or("")
    }

    fn plugins(&self) -> &[Value] {
        self.list["plugins"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The stdin libcni builds for one plugin.
    pub fn plugin_stdin(&self, plugin: &Value, prev: Option<&Value>, rt: &RuntimeConf) -> Vec<u8> {
        let mut conf = plugin.as_object().cloned().unwrap_or_default();
        conf.insert("name".into(), json!(self.name()));
        conf.insert("cniVersion".into(), json!(self.version()));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let mut rc = Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (cap, supported) in caps {
                if supported.as_bool() == Some(true)
                    && let Some(data) = rt.capability_args.get(cap)
                {
                    rc.insert(cap.clone(), data.clone());
                }
            }
        }
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        serde_json::to_vec(&sorted(&Value::Object(conf))).unwrap_or_default()
    }

    fn find_plugin(&self, plugin: &Value) -> Result<(String, PathBuf), CniExecError> {
        let ty = plugin["type"].as_str().unwrap_or("").to_string();
        if !ty.is_empty() && !ty.contains('/') {
            for dir in &self.path {
                let p = dir.join(&ty);
                if p.is_file() {
                    return Ok((ty, p));
                }
            }
        }
        Err(CniExecError::NotFound {
            plugin: ty,
            path: self.path.clone(),
        })
    }

    async fn exec(
        &self,
        verb: &str,
        plugin: &Value,
        stdin: Vec<u8>,
        rt: Option<&RuntimeConf>,
    ) -> Result<Vec<u8>, CniExecError> {
        let (ty, binary) = self.find_plugin(plugin)?;
        let exec_err = |message: String| CniExecError::Exec {
            plugin: ty.clone(),
            verb: verb.into(),
            message,
        };
        let joined = std::env::join_paths(&self.path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", rt.map_or("", |r| &r.container_id))
            .env("CNI_NETNS", rt.map_or("", |r| &r.netns))
            .env(
                "CNI_ARGS",
                rt.map(RuntimeConf::cni_args).unwrap_or_default(),
            )
            .env("CNI_IFNAME", rt.map_or("", |r| &r.ifname))
            .env("CNI_PATH", joined)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        tracing::debug!(verb, plugin = %ty, stdin = %String::from_utf8_lossy(&stdin), "executing CNI plugin");
        let mut child = cmd
            .spawn()
            .map_err(|e| exec_err(format!("cannot execute {}: {e}", binary.display())))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(&stdin)
                .await
                .map_err(|e| exec_err(format!("writing stdin: {e}")))?;
        }
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| exec_err(format!("no answer within {PLUGIN_TIMEOUT:?}")))?
            .map_err(|e| exec_err(e.to_string()))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(err) if err["code"].is_u64() => Err(CniExecError::Plugin {
                plugin: ty,
                verb: verb.into(),
                code: err["code"].as_u64().unwrap_or(0),
                msg: err["msg"].as_str().unwrap_or("").into(),
                details: err["details"].as_str().unwrap_or("").into(),
            }),
            _ => Err(exec_err(format!(
                "{}; stdout {:?}; stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }

    /// `<cache>/results/<network>-<containerID>-<ifname>`.
    pub fn cache_file(&self, rt: &RuntimeConf) -> PathBuf {
        self.cache_dir.join("results").join(format!(
            "{}-{}-{}",
            self.name(),
            rt.container_id,
            rt.ifname
        ))
    }

    /// The libcni `cniCacheV1` document for an attachment and its result.
    pub fn cache_document(&self, rt: &RuntimeConf, result: &Value) -> Value {
        let mut doc = Map::new();
        doc.insert("kind".into(), json!("cniCacheV1"));
        doc.insert("containerId".into(), json!(rt.container_id));
        doc.insert("config".into(), json!(base64(&self.list_bytes)));
        doc.insert("ifName".into(), json!(rt.ifname));
        doc.insert("networkName".into(), json!(self.name()));
        if !rt.netns.is_empty() {
            doc.insert("netns".into(), json!(rt.netns));
        }
        if !rt.args.is_empty() {
            doc.insert(
                "cniArgs".into(),
                Value::Array(rt.args.iter().map(|(k, v)| json!([k, v])).collect()),
            );
        }
        if !rt.capability_args.is_empty() {
            doc.insert(
                "capabilityArgs".into(),
                Value::Object(rt.capability_args.clone()),
            );
        }
        doc.insert("result".into(), result.clone());
        Value::Object(doc)
    }

    fn cached_result(&self, rt: &RuntimeConf) -> Option<Value> {
        let text = fs::read(self.cache_file(rt)).ok()?;
        let doc: Value = serde_json::from_slice(&text).ok()?;
        doc.get("result").cloned().filter(Value::is_object)
    }

    /// ADD of the whole list; caches and returns the final result.
    pub async fn add(&self, rt: &RuntimeConf) -> Result<Value, CniExecError> {
        let mut result: Option<Value> = None;
        for plugin in self.plugins() {
            let stdin = self.plugin_stdin(plugin, result.as_ref(), rt);
            let out = self.exec("ADD", plugin, stdin, Some(rt)).await?;
            let value: Value = serde_json::from_slice(&out).map_err(|e| CniExecError::Exec {
                plugin: plugin["type"].as_str().unwrap_or("").into(),
                verb: "ADD".into(),
                message: format!("result is not JSON: {e}"),
            })?;
            result = Some(value);
        }
        let result = result.unwrap_or_else(|| json!({}));
        let file = self.cache_file(rt);
        let cache_err = |source| CniExecError::Cache {
            path: file.clone(),
            source,
        };
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir).map_err(cache_err)?;
        }
        let doc =
            serde_json::to_vec(&sorted(&self.cache_document(rt, &result))).unwrap_or_default();
        fs::write(&file, doc).map_err(cache_err)?;
        Ok(result)
    }

    /// DEL of the whole list (reverse order) with the cached result; removes the cache entry.
    pub async fn del(&self, rt: &RuntimeConf) -> Result<(), CniExecError> {
        let cached = if version_at_least(self.version(), (0, 4, 0)) {
            self.cached_result(rt)
        } else {
            None
        };
        for plugin in self.plugins().iter().rev() {
            let stdin = self.plugin_stdin(plugin, cached.as_ref(), rt);
            self.exec("DEL", plugin, stdin, Some(rt)).await?;
        }
        let _ = fs::remove_file(self.cache_file(rt));
        Ok(())
    }

    /// CHECK of the whole list with the cached result.
    pub async fn check(&self, rt: &RuntimeConf) -> Result<(), CniExecError> {
        let cached = self
            .cached_result(rt)
            .ok_or_else(|| CniExecError::NoCachedResult(rt.container_id.clone()))?;
        for plugin in self.plugins() {
            let stdin = self.plugin_stdin(plugin, Some(&cached), rt);
            self.exec("CHECK", plugin, stdin, Some(rt)).await?;
        }
        Ok(())
    }

    /// Attachments of this network in the cache.
    pub fn cached_attachments(&self) -> Vec<CachedAttachment> {
        let Ok(dir) = fs::read_dir(self.cache_dir.join("results")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in dir.filter_map(Result::ok) {
            let Ok(bytes) = fs::read(entry.path()) else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if doc["kind"] != "cniCacheV1" {
                continue;
            }
            let s = |k: &str| doc[k].as_str().unwrap_or("").to_string();
            let args = doc["cniArgs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| {
                            Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(CachedAttachment {
                rt: RuntimeConf {
                    container_id: s("containerId"),
                    netns: s("netns"),
                    ifname: s("ifName"),
                    args,
                    capability_args: doc["capabilityArgs"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                },
                network: s("networkName"),
                result: doc.get("result").cloned(),
            });
        }
        out
    }

    /// GC: DEL of every cached attachment not in `valid` (container id, ifname), then the GC
    /// verb with the valid attachments (list version 1.1.0 and later). Returns the DELs made.
    pub async fn gc(&self, valid: &[(String, String)]) -> Result<usize, CniExecError> {
        let mut deleted = 0;
        let mut first_err = None;
        for cached in self.cached_attachments() {
            if cached.network != self.name()
                || valid
                    .iter()
                    .any(|(c, i)| *c == cached.rt.container_id && *i == cached.rt.ifname)
            {
                continue;
            }
            match self.del(&cached.rt).await {
                Ok(()) => deleted += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if version_at_least(self.version(), (1, 1, 0)) {
            let attachments: Vec<Value> = valid
                .iter()
                .map(|(c, i)| json!({"containerID": c, "ifname": i}))
                .collect();
            for plugin in self.plugins() {
                let mut conf = plugin.as_object().cloned().unwrap_or_default();
                conf.insert("name".into(), json!(self.name()));
                conf.insert("cniVersion".into(), json!(self.version()));
                conf.insert("cni.dev/valid-attachments".into(), json!(attachments));
                conf.insert("cni.dev/attachments".into(), json!(attachments));
                let stdin = serde_json::to_vec(&sorted(&Value::Object(conf))).unwrap_or_default();
                self.exec("GC", plugin, stdin, None).await?;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> CniConfig {
        let list = br#"{"cniVersion":"1.1.0","name":"switchyard","plugins":[{"type":"switchyard","agentSocket":"/s.sock","capabilities":{"io.kubernetes.cri.pod-annotations":true,"portMappings":false}}]}"#;
        let p = dir.join("c.conflist");
        fs::write(&p, list).unwrap();
        CniConfig::load(&p, vec![dir.to_path_buf()], dir.join("cache")).unwrap()
    }

    fn rt() -> RuntimeConf {
        let mut ann = BTreeMap::new();
        ann.insert("switchyard.io/segment".to_string(), "blue".to_string());
        let mut rt =
            RuntimeConf::for_pod("abc123", "/run/netns/p", "default", "web-1", "u-1", &ann);
        rt.capability_args
            .insert("portMappings".into(), json!([{"hostPort": 80}]));
        rt
    }

    #[test]
    fn stdin_is_byte_exact_like_libcni() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let plugin = c.plugins()[0].clone();
        // Undeclared/false capabilities are not injected; keys sorted at every level.
        assert_eq!(
            String::from_utf8(c.plugin_stdin(&plugin, None, &rt())).unwrap(),
            r#"{"agentSocket":"/s.sock","capabilities":{"io.kubernetes.cri.pod-annotations":true,"portMappings":false},"cniVersion":"1.1.0","name":"switchyard","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"switchyard.io/segment":"blue"}},"type":"switchyard"}"#
        );
        let prev = json!({"cniVersion":"1.1.0","ips":[{"address":"10.244.0.5/24"}]});
        let with_prev = String::from_utf8(c.plugin_stdin(&plugin, Some(&prev), &rt())).unwrap();
        assert!(
            with_prev.contains(
                r#""prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.244.0.5/24"}]}"#
            ),
            "{with_prev}"
        );
    }

    #[test]
    fn cni_args_in_kubelet_order() {
        assert_eq!(
            rt().cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1"
        );
    }

    #[test]
    fn cache_document_is_libcni_v1() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let mut r = rt();
        r.capability_args.remove("portMappings");
        let doc = sorted(&c.cache_document(&r, &json!({"cniVersion":"1.1.0"})));
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"capabilityArgs":{{"io.kubernetes.cri.pod-annotations":{{"switchyard.io/segment":"blue"}}}},"cniArgs":[["IgnoreUnknown","1"],["K8S_POD_NAMESPACE","default"],["K8S_POD_NAME","web-1"],["K8S_POD_INFRA_CONTAINER_ID","abc123"],["K8S_POD_UID","u-1"]],"config":"{}","containerId":"abc123","ifName":"eth0","kind":"cniCacheV1","netns":"/run/netns/p","networkName":"switchyard","result":{{"cniVersion":"1.1.0"}}}}"#,
                base64(&c.list_bytes)
            )
        );
        assert_eq!(
            c.cache_file(&r),
            dir.path().join("cache/results/switchyard-abc123-eth0")
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn bad_conflists_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "{",
            r#"{"name":"x"}"#,
            r#"{"name":"x","cniVersion":"1.0.0","plugins":[]}"#,
        ] {
            let p = dir.path().join("bad");
            fs::write(&p, text).unwrap();
            assert!(
                CniConfig::load(&p, vec![], dir.path().into()).is_err(),
                "{text}"
            );
        }
    }
}
