//! kubeconfig files pointing at the lab API server.

use std::path::Path;

/// The kubeconfig text for a server URL: one cluster, user and context named
/// `switchyard-lab`, no credentials (the lab server does no authentication).
pub fn render(server_url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: switchyard-lab
  cluster:
    server: {server_url}
users:
- name: switchyard-lab
  user: {{}}
contexts:
- name: switchyard-lab
  context:
    cluster: switchyard-lab
    user: switchyard-lab
    namespace: default
current-context: switchyard-lab
preferences: {{}}
"
    )
}

/// Writes [`render`] to `path` (creating parent directories).
pub fn write(path: &Path, server_url: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, render(server_url))
}

#[cfg(test)]
mod tests {
    #[test]
    fn kubeconfig_is_byte_exact() {
        let expected = "apiVersion: v1\nkind: Config\nclusters:\n- name: switchyard-lab\n  cluster:\n    server: http://127.0.0.1:6443\nusers:\n- name: switchyard-lab\n  user: {}\ncontexts:\n- name: switchyard-lab\n  context:\n    cluster: switchyard-lab\n    user: switchyard-lab\n    namespace: default\ncurrent-context: switchyard-lab\npreferences: {}\n";
        assert_eq!(super::render("http://127.0.0.1:6443"), expected);
    }
}
