//! `/readyz` probes over TLS, the server's certificate verified against the apiserver CA
//! with the VIP as the expected name: a node whose certificate does not carry the VIP in its
//! SANs fails the probe (clients connecting to the VIP would refuse it).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The CA bundle is unusable.
    #[error("apiserver CA bundle: {0}")]
    Ca(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, the TLS handshake (certificate not trusted, VIP not in its SANs) or the
    /// exchange failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer was not `200`.
    #[error("/readyz answered {0}")]
    Status(String),
}

/// Probes apiservers' `/readyz` with one CA bundle and one expected name (the VIP).
#[derive(Clone)]
pub struct Prober {
    connector: TlsConnector,
    name: ServerName<'static>,
    timeout: Duration,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// A prober trusting only `ca_pem`, expecting `vip` in the certificates' SANs.
    pub fn new(ca_pem: &[u8], vip: IpAddr, timeout: Duration) -> Result<Prober, ProbeError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ProbeError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| ProbeError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ProbeError::Ca("no certificate in the bundle".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Prober {
            connector: TlsConnector::from(Arc::new(config)),
            name: ServerName::IpAddress(vip.into()),
            timeout,
        })
    }

    /// `GET /readyz` on `addr`: Ok when it answers 200.
    pub async fn readyz(&self, addr: SocketAddr) -> Result<(), ProbeError> {
        match tokio::time::timeout(self.timeout, self.exchange(addr)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout(self.timeout)),
        }
    }

    async fn exchange(&self, addr: SocketAddr) -> Result<(), ProbeError> {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = self.connector.connect(self.name.clone(), tcp).await?;
        let host = match self.name {
            ServerName::IpAddress(ip) => IpAddr::from(ip).to_string(),
            _ => String::new(),
        };
        tls.write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or_default();
        let status = line.split_whitespace().nth(1).unwrap_or_default();
        if status == "200" {
            Ok(())
        } else {
            Err(ProbeError::Status(if line.is_empty() {
                "nothing".into()
            } else {
                line.to_string()
            }))
        }
    }
}

/// The `host:port` of an `https://host:port` endpoint (port 443 when absent).
pub fn endpoint_addr(endpoint: &str) -> Result<SocketAddr, String> {
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| format!("{endpoint:?}: only https:// endpoints"))?;
    let hostport = rest.trim_end_matches('/');
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Ok(a);
    }
    let host = hostport.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 443))
        .map_err(|_| format!("{endpoint:?}: an IP address is needed (no DNS for the probes)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::net::TcpListener;

    /// A TLS server answering `status` to anything, with a certificate for `sans`.
    async fn server(
        ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
        sans: Vec<String>,
        status: &'static str,
    ) -> SocketAddr {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(sans).unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 1024];
                        let _ = tls.read(&mut buf).await;
                        let _ = tls
                            .write_all(
                                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n")
                                    .as_bytes(),
                            )
                            .await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn verifies_the_vip_in_the_sans() {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let ca_pem = issuer.pem();
        let vip: IpAddr = "198.51.100.10".parse().unwrap();
        let prober = Prober::new(ca_pem.as_bytes(), vip, Duration::from_secs(2)).unwrap();

        let good = server(
            &issuer,
            vec!["198.51.100.10".into(), "127.0.0.1".into()],
            "200 OK",
        )
        .await;
        prober.readyz(good).await.unwrap();
        let failing = server(
            &issuer,
            vec!["198.51.100.10".into()],
            "500 Internal Server Error",
        )
        .await;
        assert!(matches!(
            prober.readyz(failing).await,
            Err(ProbeError::Status(_))
        ));
        let no_vip = server(&issuer, vec!["127.0.0.1".into()], "200 OK").await;
        assert!(matches!(
            prober.readyz(no_vip).await,
            Err(ProbeError::Io(_))
        ));
        // A hung server: connects, never answers.
        let hung = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let hung_addr = hung.local_addr().unwrap();
        let quick = Prober::new(ca_pem.as_bytes(), vip, Duration::from_millis(200)).unwrap();
        assert!(matches!(
            quick.readyz(hung_addr).await,
            Err(ProbeError::Timeout(_))
        ));
        drop(hung);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint_addr("https://127.0.0.1:6443").unwrap(),
            "127.0.0.1:6443".parse().unwrap()
        );
        assert!(endpoint_addr("http://127.0.0.1:6443").is_err());
        assert!(endpoint_addr("https://api.example:6443").is_err());
    }
}
