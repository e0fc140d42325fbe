//! TLS client configuration from PEM: the CA bundle the router is verified against, and the
//! client certificate (NSX principal identity) presented to it.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Unusable TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA bundle holds no certificate.
    #[error("the CA bundle holds no PEM certificate")]
    NoCa,
    /// A PEM block could not be read.
    #[error("{what}: {message}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })
}

/// A client configuration that verifies the server against `ca_pem` only (no system roots)
/// and presents `cert_pem`/`key_pem`.
pub(crate) fn client_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certs("CA bundle", ca_pem)? {
        roots.add(ca)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCa);
    }
    let chain = certs("client certificate", cert_pem)?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "client certificate",
            message: "no PEM certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        what: "client key",
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}
