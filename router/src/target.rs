//! A router driver from a `RouteTarget` and its credentials Secret.
//!
//! The Secret (`tls.crt`, `tls.key`, optionally `ca.crt`) must live in the reader's own
//! namespace: the controller may read Secrets there only (least privilege). The CA bundle is
//! the RouteTarget's `caBundle`, else the Secret's `ca.crt`; without one nothing is sent (TLS
//! is always verified, never against system roots).

use std::sync::Arc;
use std::time::Duration;

use crate::{PolicyConfig, PolicyDriver, RouterDriver};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use switchyard_api::{Driver, RouteTarget};

/// Timeout of one router request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A driver and what it was built from (rebuilt when that changes).
#[derive(Debug, Clone)]
pub struct Built {
    /// RouteTarget and Secret resourceVersions.
    pub fingerprint: String,
    /// The driver.
    pub driver: Arc<dyn RouterDriver>,
}

/// Why a RouteTarget cannot be used (not retriable until it or its Secret changes).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The RouteTarget does not exist.
    #[error("RouteTarget {0} not found")]
    Missing(String),
    /// The credentials are missing or unusable.
    #[error("RouteTarget {name}: {message}")]
    Credentials {
        /// RouteTarget.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Reading the Secret failed (API error: retriable).
    #[error("RouteTarget {name}: reading its Secret: {source}")]
    Api {
        /// RouteTarget.
        name: String,
        /// The error.
        source: kube::Error,
    },
    /// The driver refused the configuration.
    #[error("RouteTarget {name}: {source}")]
    Driver {
        /// RouteTarget.
        name: String,
        /// The error.
        source: crate::RouterError,
    },
}

/// Builds the driver of `target` unless `current` was built from the same objects.
pub async fn driver(
    client: &Client,
    namespace: &str,
    cluster: &str,
    target: &RouteTarget,
    current: Option<&Built>,
) -> Result<Built, TargetError> {
    let name = target.name_any();
    let cred = |message: String| TargetError::Credentials {
        name: name.clone(),
        message,
    };
    let spec = &target.spec;
    let Some(sref) = &spec.credentials_secret_ref else {
        return Err(cred(
            "no credentialsSecretRef: a client certificate is required".into(),
        ));
    };
    if sref.namespace != namespace {
        return Err(cred(format!(
            "the credentials Secret must be in the reader's namespace {namespace} (it is in {})",
            sref.namespace
        )));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get_opt(&sref.name)
        .await
        .map_err(|source| TargetError::Api {
            name: name.clone(),
            source,
        })?
        .ok_or_else(|| cred(format!("Secret {namespace}/{} not found", sref.name)))?;
    let fingerprint = format!(
        "{}/{}",
        target.resource_version().unwrap_or_default(),
        secret.resource_version().unwrap_or_default()
    );
    if let Some(c) = current
        && c.fingerprint == fingerprint
    {
        return Ok(c.clone());
    }
    let data = secret.data.clone().unwrap_or_default();
    let field = |k: &str| data.get(k).map(|b| b.0.clone());
    let cert =
        field("tls.crt").ok_or_else(|| cred(format!("Secret {} has no tls.crt", sref.name)))?;
    let key =
        field("tls.key").ok_or_else(|| cred(format!("Secret {} has no tls.key", sref.name)))?;
    let ca = spec
        .ca_bundle
        .clone()
        .map(String::into_bytes)
        .or_else(|| field("ca.crt"))
        .ok_or_else(|| {
            cred("no CA bundle (spec.caBundle or the Secret's ca.crt): TLS must be verified".into())
        })?;
    let tier1 = match (spec.driver, &spec.tier1) {
        (_, Some(t)) => t.clone(),
        (Driver::Lab, None) => "lab".to_string(),
        (Driver::Nsx, None) => return Err(cred("driver nsx needs spec.tier1".into())),
    };
    let cfg = PolicyConfig {
        endpoint: spec.endpoint.clone(),
        tier1,
        cluster: cluster.to_string(),
        ca_pem: ca,
        cert_pem: cert,
        key_pem: key,
        timeout: REQUEST_TIMEOUT,
    };
    let built = match spec.driver {
        Driver::Lab => PolicyDriver::lab(cfg),
        Driver::Nsx => PolicyDriver::nsx(cfg),
    }
    .map_err(|source| TargetError::Driver {
        name: name.clone(),
        source,
    })?;
    Ok(Built {
        fingerprint,
        driver: Arc::new(built),
    })
}
