//! `support-bundle -o FILE.tar.gz`: everything needed to look at a node's
//! networking later, in one gzip-compressed tar archive (written with the
//! `tar` and `flate2` crates, no external `tar`).
//!
//! Secrets stay out: nothing reads Secrets or a kubeconfig, and every text
//! that goes in passes [`redact`], which blanks the values of
//! `token`, `client-key-data`, `client-certificate-data` and `password`
//! keys should a log line carry one.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use switchyard_ovs::ovsdb::{Operation, vswitch};

use crate::Error;
use crate::cli::BundleArgs;
use crate::flows::{owner_name, table_name};
use crate::ovs::Ovs;

/// Keys whose values never go into a bundle.
pub const SECRET_KEYS: [&str; 5] = [
    "client-key-data",
    "client-certificate-data",
    "token",
    "password",
    "authorization",
];

/// Blanks the value after any [`SECRET_KEYS`] key (`key: v`, `key=v`,
/// `"key":"v"`), line by line.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let lower = line.to_ascii_lowercase();
        let hit = SECRET_KEYS.iter().find_map(|k| {
            let mut from = 0;
            while let Some(i) = lower[from..].find(k) {
                let at = from + i;
                let after = &lower[at + k.len()..];
                let sep = after.trim_start_matches('"').trim_start();
                if sep.starts_with(':') || sep.starts_with('=') {
                    return Some(at + k.len());
                }
                from = at + k.len();
            }
            None
        });
        match hit {
            Some(end) => {
                out.push_str(&line[..end]);
                out.push_str(": <redacted by switchyardctl>");
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

/// One entry of the bundle and how collecting it went.
#[derive(Debug, Clone)]
pub struct Part {
    /// Path inside the archive.
    pub name: String,
    /// Contents (already redacted), or why it is missing.
    pub content: Result<Vec<u8>, String>,
}

fn text_part(name: &str, content: Result<String, String>) -> Part {
    Part {
        name: name.to_string(),
        content: content.map(|t| redact(&t).into_bytes()),
    }
}

fn command_output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut text = format!("$ {program} {}\n", args.join(" "));
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    if !out.stderr.is_empty() {
        text.push_str("\n# stderr:\n");
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn commands(list: &[(&str, &[&str])]) -> Result<String, String> {
    let mut text = String::new();
    let mut errors = Vec::new();
    for (program, args) in list {
        match command_output(program, args) {
            Ok(t) => text.push_str(&t),
            Err(e) => errors.push(e),
        }
        text.push('\n');
    }
    if text.trim().is_empty() && !errors.is_empty() {
        Err(errors.join("; "))
    } else {
        for e in errors {
            text.push_str(&format!("# {e}\n"));
        }
        Ok(text)
    }
}

/// Whether `name` matches `pattern` where `*` stands for any run of characters.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first)
        || !name[first.len()..].ends_with(last)
        || name.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The files a path names (a `*` in the file name is a wildcard).
pub fn expand(path: &Path) -> Vec<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains('*') {
        return if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| wildcard(&name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn read_tail(path: &Path, max: u64) -> Result<String, String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if len > max {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(len - max))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.take(max)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if len > max {
        text.insert_str(0, &format!("# first {} bytes left out\n", len - max));
    }
    Ok(text)
}

fn log_parts(kind: &str, paths: &[PathBuf], max: u64) -> Vec<Part> {
    let mut parts = Vec::new();
    for p in paths {
        let files = expand(p);
        if files.is_empty() {
            parts.push(Part {
                name: format!("logs/{kind}/MISSING"),
                content: Err(format!("no file matches {} (--{kind}-log)", p.display())),
            });
        }
        for f in files {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            parts.push(text_part(
                &format!("logs/{kind}/{name}"),
                read_tail(&f, max),
            ));
        }
    }
    parts
}

async fn openflow_parts(ovs: &Ovs) -> Vec<Part> {
    let of = match ovs.openflow().await {
        Ok(of) => of,
        Err(e) => {
            let e = e.to_string();
            return ["flows.txt", "groups.txt", "group-stats.txt"]
                .iter()
                .map(|n| Part {
                    name: n.to_string(),
                    content: Err(e.clone()),
                })
                .collect();
        }
    };
    let flows = ovs.flows(&of).await.map(|flows| {
        let mut text =
            String::from("# table (name), owner: n_packets, n_bytes, flow in ovs-ofctl syntax\n");
        let mut last = None;
        for f in &flows {
            if last != Some(f.flow.table) {
                text.push_str(&format!(
                    "\n# table {} {}\n",
                    f.flow.table,
                    table_name(f.flow.table)
                ));
                last = Some(f.flow.table);
            }
            text.push_str(&format!("[{}] {f}\n", owner_name(f.flow.cookie)));
        }
        text
    });
    let groups = ovs
        .groups(&of)
        .await
        .map(|groups| groups.iter().map(|g| format!("{g}\n")).collect::<String>());
    let stats = ovs.group_stats(&of).await.map(|stats| {
        stats
            .iter()
            .map(|s| {
                let buckets: Vec<String> = s
                    .buckets
                    .iter()
                    .enumerate()
                    .map(|(i, (p, b))| format!("bucket{i}:packet_count={p},byte_count={b}"))
                    .collect();
                format!(
                    "group_id={},ref_count={},packet_count={},byte_count={},{}\n",
                    s.group_id,
                    s.ref_count,
                    s.packet_count,
                    s.byte_count,
                    buckets.join(",")
                )
            })
            .collect::<String>()
    });
    vec![
        text_part("flows.txt", flows.map_err(|e| e.to_string())),
        text_part("groups.txt", groups.map_err(|e| e.to_string())),
        text_part("group-stats.txt", stats.map_err(|e| e.to_string())),
    ]
}

async fn ovsdb_part(ovs: &Ovs) -> Part {
    let dump = async {
        let db = ovs.ovsdb().await.map_err(|e| e.to_string())?;
        let schema = db
            .get_schema(vswitch::DB)
            .await
            .map_err(|e| e.to_string())?;
        let names: Vec<&String> = schema.tables.keys().collect();
        let ops: Vec<Operation> = names.iter().map(|t| Operation::select(t, vec![])).collect();
        let results = db
            .transact(vswitch::DB, &ops)
            .await
            .map_err(|e| e.to_string())?;
        let mut tables = serde_json::Map::new();
        for (name, r) in names.iter().zip(results) {
            tables.insert(name.to_string(), json!(r.rows.unwrap_or_default()));
        }
        serde_json::to_string_pretty(&json!({
            "database": vswitch::DB,
            "schema_version": schema.version,
            "tables": tables,
        }))
        .map_err(|e| e.to_string())
    };
    text_part("ovsdb.json", dump.await)
}

async fn appctl_part(ovs: &Ovs, name: &str, method: &str, params: &[&str]) -> Part {
    text_part(
        name,
        ovs.appctl(method, params).await.map_err(|e| e.to_string()),
    )
}

/// Collects every part.
pub async fn collect(ovs: &Ovs, args: &BundleArgs) -> Vec<Part> {
    let mut parts = openflow_parts(ovs).await;
    parts.push(ovsdb_part(ovs).await);
    parts.push(appctl_part(ovs, "conntrack.txt", "dpctl/dump-conntrack", &["-m"]).await);
    parts.push(appctl_part(ovs, "ovs-ports.txt", "dpif/show", &[]).await);
    parts.push(text_part(
        "routes.txt",
        commands(&[
            ("ip", &["-d", "address", "show"]),
            ("ip", &["-d", "route", "show", "table", "all"]),
            ("ip", &["rule", "show"]),
            ("ip", &["neighbour", "show"]),
        ]),
    ));
    parts.push(text_part(
        "nftables.txt",
        command_output("nft", &["list", "ruleset"]),
    ));
    parts.push(text_part(
        "iptables.txt",
        commands(&[("iptables-save", &[]), ("iptables-legacy-save", &[])]),
    ));
    let vswitchd = ovs.appctl("version", &[]).await.map_err(|e| e.to_string());
    let ovsdb = ovs
        .appctl_daemon("ovsdb-server", "version", &[])
        .await
        .map_err(|e| e.to_string());
    let kernel =
        std::fs::read_to_string("/proc/version").map_err(|e| format!("/proc/version: {e}"));
    let show = |r: Result<String, String>| match r {
        Ok(t) => t.trim().to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    parts.push(text_part(
        "versions.txt",
        Ok(format!(
            "switchyardctl {}\novs-vswitchd: {}\novsdb-server: {}\nkernel: {}\n",
            env!("CARGO_PKG_VERSION"),
            show(vswitchd),
            show(ovsdb),
            show(kernel)
        )),
    ));
    parts.extend(log_parts("agent", &args.agent_log, args.max_log_bytes));
    parts.extend(log_parts("proxy", &args.proxy_log, args.max_log_bytes));
    parts.extend(log_parts("cni", &args.cni_log, args.max_log_bytes));
    let ovs_logs: Vec<PathBuf> = if args.ovs_log.is_empty() {
        vec![
            ovs.rundir.join("*.log"),
            PathBuf::from("/var/log/openvswitch/*.log"),
        ]
    } else {
        args.ovs_log.clone()
    };
    let mut ovs_parts = log_parts("ovs", &ovs_logs, args.max_log_bytes);
    if args.ovs_log.is_empty() && ovs_parts.iter().any(|p| p.content.is_ok()) {
        ovs_parts.retain(|p| p.content.is_ok());
    }
    parts.extend(ovs_parts);
    parts
}

/// The MANIFEST listing each part and why one is missing.
pub fn manifest(parts: &[Part]) -> String {
    let mut text = String::from(
        "# switchyardctl support bundle: one line per part (ok, or why it is missing).\n\
         # No Secret and no kubeconfig is read; token/key/password values are redacted.\n",
    );
    for p in parts {
        match &p.content {
            Ok(c) => text.push_str(&format!("ok       {} ({} bytes)\n", p.name, c.len())),
            Err(e) => text.push_str(&format!("missing  {}: {e}\n", p.name)),
        }
    }
    text
}

/// Writes `parts` (those collected) and the MANIFEST into `path` under `prefix/`.
pub fn write(path: &Path, prefix: &str, parts: &[Part]) -> Result<(), Error> {
    let file = File::create(path).map_err(Error::io(format!("creating {}", path.display())))?;
    let mut tar = tar::Builder::new(GzEncoder::new(file, Compression::default()));
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let manifest = manifest(parts);
    let entries = std::iter::once(("MANIFEST.txt", manifest.as_bytes())).chain(
        parts.iter().filter_map(|p| {
            p.content
                .as_ref()
                .ok()
                .map(|c| (p.name.as_str(), c.as_slice()))
        }),
    );
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_cksum();
        tar.append_data(&mut header, format!("{prefix}/{name}"), data)
            .map_err(Error::io(format!("writing {name} into {}", path.display())))?;
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .map_err(Error::io(format!("finishing {}", path.display())))?;
    Ok(())
}

/// Runs `support-bundle`; returns the manifest.
pub async fn run(ovs: &Ovs, args: &BundleArgs) -> Result<String, Error> {
    let parts = collect(ovs, args).await;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    write(&args.output, &format!("switchyard-support-{stamp}"), &parts)?;
    Ok(format!(
        "wrote {}\n{}",
        args.output.display(),
        manifest(&parts)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_any_notation() {
        let text = "users:\n- name: a\n  user:\n    token: abc.def\n    client-key-data: LS0tLS1\nplain line\n{\"Authorization\": \"Bearer xyz\"}\npassword=hunter2\n";
        let r = redact(text);
        for secret in ["abc.def", "LS0tLS1", "Bearer xyz", "hunter2"] {
            assert!(!r.contains(secret), "{secret} in\n{r}");
        }
        assert!(r.contains("plain line\n"));
        assert_eq!(r.lines().count(), text.lines().count());
        assert_eq!(redact("tokens are fine here\n"), "tokens are fine here\n");
    }

    #[test]
    fn wildcards_match_file_names() {
        assert!(wildcard(
            "switchyard-*_switchyard-system_agent-*.log",
            "switchyard-abcde_switchyard-system_agent-0123.log"
        ));
        assert!(!wildcard(
            "switchyard-*_switchyard-system_agent-*.log",
            "switchyard-abcde_switchyard-system_proxy-0123.log"
        ));
        assert!(wildcard("*.log", "ovs-vswitchd.log"));
        assert!(wildcard("agent.log", "agent.log"));
        assert!(!wildcard("a*b*c", "ac"));
    }

    #[test]
    fn the_archive_holds_the_manifest_and_each_collected_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar.gz");
        let parts = vec![
            text_part("flows.txt", Ok("table=0 token: secret\n".into())),
            Part {
                name: "nftables.txt".into(),
                content: Err("cannot run nft".into()),
            },
        ];
        write(&path, "sb", &parts).unwrap();
        let mut archive =
            tar::Archive::new(flate2::read::GzDecoder::new(File::open(&path).unwrap()));
        let mut names = BTreeMap::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            names.insert(e.path().unwrap().display().to_string(), s);
        }
        assert_eq!(
            names.keys().collect::<Vec<_>>(),
            ["sb/MANIFEST.txt", "sb/flows.txt"]
        );
        assert!(names["sb/MANIFEST.txt"].contains("missing  nftables.txt: cannot run nft"));
        assert!(!names["sb/flows.txt"].contains("secret"));
    }

    use std::collections::BTreeMap;
}
