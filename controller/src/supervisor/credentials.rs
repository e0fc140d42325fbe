//! The supervisor's kubeconfig, from a Secret and nothing else.
//!
//! Only inline data is accepted: the server must be `https://`, its CA given as
//! `certificate-authority-data` (no system roots, no `insecure-skip-tls-verify`), and the
//! user's credentials inline (`client-certificate-data` + `client-key-data`, or `token`).
//! Anything that would read a file of the controller's, run a command or skip verification
//! (`certificate-authority`, `client-certificate`, `client-key`, `tokenFile`, `exec`,
//! `auth-provider`, `proxy-url`, basic auth, impersonation) is refused with the field named.

use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The Secret key holding the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";

/// Why the Secret gives no usable supervisor client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The Secret or its key is missing.
    #[error("Secret {0}")]
    Missing(String),
    /// The kubeconfig does not parse.
    #[error("kubeconfig in Secret {secret}: {message}")]
    Invalid {
        /// `namespace/name`.
        secret: String,
        /// What is wrong.
        message: String,
    },
    /// The kubeconfig asks for something refused here.
    #[error("kubeconfig in Secret {secret}: {field} is not allowed ({why})")]
    Refused {
        /// `namespace/name`.
        secret: String,
        /// The field.
        field: &'static str,
        /// Why.
        why: &'static str,
    },
}

/// What the controller uses of the kubeconfig.
#[derive(Clone)]
pub struct Supervisor {
    /// Client configuration (TLS verified against the kubeconfig's CA only).
    pub config: kube::Config,
    /// The context's namespace, if it names one.
    pub namespace: Option<String>,
    /// The server URL (for messages).
    pub server: String,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("server", &self.server)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Checks the kubeconfig text and builds the client configuration from its current context.
pub async fn from_kubeconfig(secret: &str, text: &str) -> Result<Supervisor, CredentialsError> {
    let invalid = |message: String| CredentialsError::Invalid {
        secret: secret.to_string(),
        message,
    };
    let refused = |field, why| CredentialsError::Refused {
        secret: secret.to_string(),
        field,
        why,
    };
    let kc = Kubeconfig::from_yaml(text).map_err(|e| invalid(e.to_string()))?;
    let context_name = kc
        .current_context
        .clone()
        .or_else(|| (kc.contexts.len() == 1).then(|| kc.contexts[0].name.clone()))
        .ok_or_else(|| invalid("no current-context".into()))?;
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| invalid(format!("context {context_name:?} not found")))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| invalid(format!("cluster {:?} not found", context.cluster)))?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| invalid("the cluster has no server".into()))?;
    if !server.starts_with("https://") {
        return Err(refused("server", "only https:// (TLS verified)"));
    }
    if cluster.insecure_skip_tls_verify == Some(true) {
        return Err(refused(
            "insecure-skip-tls-verify",
            "TLS is always verified",
        ));
    }
    if cluster.certificate_authority.is_some() {
        return Err(refused(
            "certificate-authority",
            "a file of the controller's; use certificate-authority-data",
        ));
    }
    if cluster.certificate_authority_data.is_none() {
        return Err(refused(
            "a cluster without certificate-authority-data",
            "no system roots are used",
        ));
    }
    if cluster.proxy_url.is_some() {
        return Err(refused("proxy-url", "direct connections only"));
    }
    if let Some(user) = &context.user {
        let auth = kc
            .auth_infos
            .iter()
            .find(|a| &a.name == user)
            .and_then(|a| a.auth_info.clone())
            .ok_or_else(|| invalid(format!("user {user:?} not found")))?;
        let file = "a file of the controller's; use the -data field";
        for (set, field, why) in [
            (
                auth.client_certificate.is_some(),
                "client-certificate",
                file,
            ),
            (auth.client_key.is_some(), "client-key", file),
            (auth.token_file.is_some(), "tokenFile", file),
            (auth.exec.is_some(), "exec", "no commands are run"),
            (auth.auth_provider.is_some(), "auth-provider", "no plugins"),
            (
                auth.username.is_some() || auth.password.is_some(),
                "username/password",
                "no basic auth",
            ),
            (
                auth.impersonate.is_some() || auth.impersonate_groups.is_some(),
                "as",
                "no impersonation",
            ),
        ] {
            if set {
                return Err(refused(field, why));
            }
        }
        if auth.client_certificate_data.is_some() != auth.client_key_data.is_some() {
            return Err(invalid(
                "client-certificate-data and client-key-data go together".into(),
            ));
        }
    }
    let config = kube::Config::from_custom_kubeconfig(
        kc,
        &KubeConfigOptions {
            context: Some(context_name),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| invalid(e.to_string()))?;
    Ok(Supervisor {
        config,
        namespace: context.namespace.clone(),
        server,
    })
}

/// Reads the kubeconfig from Secret `namespace/name` (key `kubeconfig`).
pub async fn from_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(Supervisor, String), CredentialsError> {
    use k8s_openapi::api::core::v1::Secret;
    let id = format!("{namespace}/{name}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| CredentialsError::Missing(format!("{id}: {e}")))?
        .ok_or_else(|| CredentialsError::Missing(format!("{id} not found")))?;
    let version = secret.metadata.resource_version.clone().unwrap_or_default();
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .ok_or_else(|| CredentialsError::Missing(format!("{id} has no key {KUBECONFIG_KEY}")))?;
    let text = std::str::from_utf8(&data.0).map_err(|_| CredentialsError::Invalid {
        secret: id.clone(),
        message: "not UTF-8".into(),
    })?;
    Ok((from_kubeconfig(&id, text).await?, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(cluster: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: sup\ncontexts:\n- name: sup\n  context: {{cluster: sup, user: guest, namespace: guests}}\nclusters:\n- name: sup\n  cluster:\n{cluster}users:\n- name: guest\n  user:\n{user}"
        )
    }

    const CA: &str = "    certificate-authority-data: Zm9v\n";
    const TOKEN: &str = "    token: abc\n";

    async fn refused_field(cluster: &str, user: &str) -> &'static str {
        match from_kubeconfig("ns/s", &kubeconfig(cluster, user)).await {
            Err(CredentialsError::Refused { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn only_inline_verified_credentials() {
        let https = "    server: https://192.0.2.1:6443\n";
        assert_eq!(
            refused_field(&format!("    server: http://192.0.2.1\n{CA}"), TOKEN).await,
            "server"
        );
        assert_eq!(
            refused_field(
                &format!("{https}{CA}    insecure-skip-tls-verify: true\n"),
                TOKEN
            )
            .await,
            "insecure-skip-tls-verify"
        );
        assert_eq!(
            refused_field(
                &format!("{https}    certificate-authority: /etc/ca.crt\n"),
                TOKEN
            )
            .await,
            "certificate-authority"
        );
        assert_eq!(
            refused_field(https, TOKEN).await,
            "a cluster without certificate-authority-data"
        );
        let c = format!("{https}{CA}");
        assert_eq!(
            refused_field(&c, "    tokenFile: /var/run/token\n").await,
            "tokenFile"
        );
        assert_eq!(
            refused_field(
                &c,
                "    client-certificate: /c.crt\n    client-key: /c.key\n"
            )
            .await,
            "client-certificate"
        );
        assert_eq!(
            refused_field(
                &c,
                "    exec: {apiVersion: client.authentication.k8s.io/v1, command: x}\n"
            )
            .await,
            "exec"
        );
        assert_eq!(
            refused_field(&c, "    username: a\n    password: b\n").await,
            "username/password"
        );
        assert!(matches!(
            from_kubeconfig("ns/s", "not: [yaml").await,
            Err(CredentialsError::Invalid { .. })
        ));
    }
}
