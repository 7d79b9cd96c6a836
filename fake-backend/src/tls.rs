//! rustls configurations, all on the aws-lc-rs provider: servers that require a client
//! certificate chaining to the backend CA (pool identity is checked after the handshake,
//! by fingerprint), and the backend's client config for an external broker.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{BackendError, Result};
use crate::pki::{CertifiedKey, Pki};

/// Installs aws-lc-rs as the process default provider if none is (idempotent), for
/// libraries (reqwest, rumqttc) that build configs without naming one.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_err(what: &str) -> impl Fn(rustls::Error) -> BackendError + '_ {
    move |e| BackendError::Tls(format!("{what}: {e}"))
}

pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    rustls_pemfile::certs(&mut reader)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| BackendError::Tls(format!("certificate PEM: {e}")))
}

pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    rustls_pemfile::private_key(&mut reader)
        .map_err(|e| BackendError::Tls(format!("private key PEM: {e}")))?
        .ok_or_else(|| BackendError::Tls("no private key in PEM".into()))
}

fn roots(pki: &Pki) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pki.ca_cert_pem())? {
        roots.add(cert).map_err(tls_err("CA certificate"))?;
    }
    Ok(roots)
}

/// Server config requiring a client certificate signed by the backend CA.
pub fn server_config(
    pki: &Pki,
    server: &CertifiedKey,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(pki)?), provider())
        .build()
        .map_err(|e| BackendError::Tls(format!("client verifier: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(parse_certs(&server.cert_pem)?, parse_key(&server.key_pem)?)
        .map_err(tls_err("server certificate"))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Client config trusting only the backend CA, presenting `identity`.
pub fn client_config(pki: &Pki, identity: &CertifiedKey) -> Result<Arc<ClientConfig>> {
    client_config_pem(pki.ca_cert_pem(), identity)
}

/// Client config trusting only `ca_pem`, presenting `identity` (e.g. a pool's certificate
/// and key, for a test acting as a worker).
pub fn client_config_pem(ca_pem: &str, identity: &CertifiedKey) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        roots.add(cert).map_err(tls_err("CA certificate"))?;
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("protocol versions"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            parse_certs(&identity.cert_pem)?,
            parse_key(&identity.key_pem)?,
        )
        .map_err(tls_err("client certificate"))?;
    Ok(Arc::new(cfg))
}
