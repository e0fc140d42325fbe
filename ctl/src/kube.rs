//! The API server: a client from a kubeconfig (or in-cluster), and
//! `NAMESPACE/NAME` arguments.

use std::path::Path;
use std::time::Duration;

use crate::Error;

/// A client: `--kubeconfig` if given, else kube's inference
/// (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster service account);
/// connecting, and reading or writing a request, each within `timeout`.
pub async fn client(kubeconfig: Option<&Path>, timeout: Duration) -> Result<::kube::Client, Error> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = ::kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("reading {}: {e}", path.display())))?;
            ::kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Kubeconfig(format!("using {}: {e}", path.display())))?
        }
        None => ::kube::Config::infer().await.map_err(|e| {
            Error::Kubeconfig(format!(
                "no kubeconfig and not in a cluster ({e}); pass --kubeconfig or set KUBECONFIG"
            ))
        })?,
    };
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    ::kube::Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))
}

/// `NAMESPACE/NAME`, or `NAME` in `default`.
pub fn split_name(text: &str) -> Result<(String, String), Error> {
    let (ns, name) = match text.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => ("default", text),
    };
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(Error::Usage(format!(
            "{text:?}: expected NAMESPACE/NAME or NAME"
        )));
    }
    Ok((ns.to_string(), name.to_string()))
}

/// An API error with what was asked.
pub fn api_err(what: impl Into<String>) -> impl FnOnce(::kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api {
        what,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_to_the_default_namespace() {
        assert_eq!(
            split_name("kube-system/dns").unwrap(),
            ("kube-system".into(), "dns".into())
        );
        assert_eq!(split_name("web").unwrap(), ("default".into(), "web".into()));
        for bad in ["", "/web", "ns/", "a/b/c"] {
            assert!(split_name(bad).is_err(), "{bad}");
        }
    }
}
