//! DEL requests queued by the binary while the agent is unreachable.
//!
//! A pod must never stay Terminating because the network plugin could not
//! reach its agent (restarting, crash-looping, being upgraded). The binary
//! then writes the DEL request to `<socket dir>/pending-del/` and reports
//! success; the agent runs every queued DEL when it starts (DEL is
//! idempotent) and removes the file once it has succeeded.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::protocol::CniRequest;

/// Name of the queue directory beside the agent's socket.
pub const PENDING_DEL_DIR: &str = "pending-del";

/// The queue directory of the agent serving `socket`.
pub fn queue_dir(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join(PENDING_DEL_DIR)
}

/// Writes `request` (a DEL) to the queue, atomically (a temporary file
/// renamed into place, mode 0600); a second DEL of the same attachment
/// replaces the first. Returns the file's path.
pub fn queue_del(socket: &Path, request: &CniRequest) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let (container, ifname) = request.attachment().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a DEL without container id and interface name cannot be queued",
        )
    })?;
    let dir = queue_dir(socket);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{container}_{ifname}.json"));
    let tmp = dir.join(format!(".{container}_{ifname}.json.tmp"));
    let body = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&body)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The queued DELs of the agent serving `socket`, oldest first, each with
/// its file (remove it once the DEL succeeded). Files that do not decode
/// are reported as errors, not dropped.
pub fn queued_dels(socket: &Path) -> std::io::Result<Vec<(PathBuf, Result<CniRequest, String>)>> {
    let dir = queue_dir(socket);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let modified = entry.metadata()?.modified()?;
        let request = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<CniRequest>(&b).map_err(|e| e.to_string()))
            .and_then(|r| {
                r.validate_identifiers()
                    .map(|()| r)
                    .map_err(|e| format!("{}: {}", e.msg, e.details))
            });
        found.push((modified, path, request));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    Ok(found.into_iter().map(|(_, p, r)| (p, r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use crate::env::{CniArgs, CniEnv};
    use crate::protocol::Verb;

    fn del(container: &str) -> CniRequest {
        let stdin = r#"{"cniVersion":"1.1.0","name":"n","type":"switchyard"}"#;
        CniRequest::new(
            Verb::Del,
            CniEnv {
                container_id: Some(container.into()),
                netns: None,
                ifname: Some("eth0".into()),
                args: CniArgs::default(),
                path: vec![],
            },
            parse_config(stdin.as_bytes()).unwrap(),
            stdin.into(),
        )
    }

    #[test]
    fn queued_dels_come_back_in_order_and_a_repeat_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        assert!(queued_dels(&socket).unwrap().is_empty());
        let a = queue_del(&socket, &del("aaa")).unwrap();
        queue_del(&socket, &del("bbb")).unwrap();
        assert_eq!(queue_del(&socket, &del("aaa")).unwrap(), a);
        std::fs::write(queue_dir(&socket).join("broken.json"), b"{").unwrap();
        let found = queued_dels(&socket).unwrap();
        assert_eq!(found.len(), 3);
        let ok: Vec<String> = found
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .map(|r| r.env.container_id.clone().unwrap())
            .collect();
        assert_eq!(ok.len(), 2);
        assert!(ok.contains(&"aaa".to_owned()) && ok.contains(&"bbb".to_owned()));
        assert!(
            found
                .iter()
                .any(|(p, r)| p.ends_with("broken.json") && r.is_err())
        );
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&a).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }
}
