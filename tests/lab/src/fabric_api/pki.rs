//! The lab's certificates for the fabric API: a lab CA, the server certificate (for the
//! fabric's address) and the client certificate a router driver presents (the lab's
//! "principal identity"). Written as PEM files into one directory.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// Paths of the PEM files of a fabric API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PkiFiles {
    /// The lab CA (verifies the server, and the clients).
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate (principal identity) and key.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

impl PkiFiles {
    /// The files under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A failure generating or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen failed.
    #[error("generating a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn params(cn: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    Ok(p)
}

/// Generates a CA, a server certificate for `server_ips`/`server_names` and a client
/// certificate `client_cn`, and writes them into `dir` (keys mode 0600).
pub fn generate(
    dir: &Path,
    server_ips: &[IpAddr],
    server_names: &[&str],
    client_cn: &str,
) -> Result<PkiFiles, PkiError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PkiError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut ca = params("switchyard lab fabric CA")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut server = params("switchyard lab fabric API")?;
    server.subject_alt_names = server_ips
        .iter()
        .map(|ip| rcgen::SanType::IpAddress(*ip))
        .chain(
            server_names
                .iter()
                .filter_map(|n| (*n).try_into().ok().map(rcgen::SanType::DnsName)),
        )
        .collect();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;

    let mut client = params(client_cn)?;
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client_cert = client.signed_by(&client_key, &ca)?;

    let files = PkiFiles::in_dir(dir);
    let write = |path: &Path, text: String, secret: bool| -> Result<(), PkiError> {
        fs::write(path, text).map_err(io(path))?;
        if secret {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io(path))?;
        }
        Ok(())
    };
    write(&files.ca, ca.pem(), false)?;
    write(&files.server_cert, server_cert.pem(), false)?;
    write(&files.server_key, server_key.serialize_pem(), true)?;
    write(&files.client_cert, client_cert.pem(), false)?;
    write(&files.client_key, client_key.serialize_pem(), true)?;
    Ok(files)
}
