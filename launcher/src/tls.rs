//! The rustls client configuration shared by the HTTPS client and the MQTT connection:
//! ring, TLS 1.2/1.3, the pool certificate + key for client authentication, and
//! roots = the platform's (system store) + the token's `ca_certificate` +
//! `ADDITIONAL_ROOT_CAS`.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use thiserror::Error;

use crate::config::LauncherConfig;
use crate::credentials::Credentials;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TlsError {
    #[error("SPACELIFT_TOKEN: .ca_certificate is not a PEM certificate: {0}")]
    TokenCa(String),
    #[error("no trust roots: the system store is empty and neither the token nor ADDITIONAL_ROOT_CAS names a CA")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the trust roots come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemRoots {
    /// The platform's store (`/etc/ssl/certs` via rustls-native-certs), as production does.
    Include,
    /// Only the token's CA and the additional ones (tests: deterministic and fast).
    Exclude,
}

/// The client config for `cfg`: production entry point.
pub fn client_config(cfg: &LauncherConfig) -> Result<Arc<ClientConfig>, TlsError> {
    build_client_config(
        &cfg.credentials,
        &cfg.additional_root_cas,
        SystemRoots::Include,
    )
}

/// The root store: system roots (optional) + the token's CA + `extra`.
pub fn root_store(
    creds: &Credentials,
    extra: &[CertificateDer<'static>],
    system: SystemRoots,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if system == SystemRoots::Include {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // Skip the odd unparsable system certificate, as browsers do.
            let _ = roots.add(cert);
        }
        if !native.errors.is_empty() {
            tracing::debug!(
                errors = native.errors.len(),
                "some system root certificates could not be loaded"
            );
        }
    }
    if let Some(ca) = &creds.token.ca_certificate {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::TokenCa(crate::credentials::describe_pem_error(&e).into()))?;
        if certs.is_empty() {
            return Err(TlsError::TokenCa("holds no certificate".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| TlsError::TokenCa(e.to_string()))?;
        }
    }
    for c in extra {
        roots
            .add(c.clone())
            .map_err(|e| TlsError::Config(format!("ADDITIONAL_ROOT_CAS: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(roots)
}

/// Builds the config: ring provider, safe default protocol versions, client auth with
/// the pool's certificate and key.
pub fn build_client_config(
    creds: &Credentials,
    extra_roots: &[CertificateDer<'static>],
    system: SystemRoots,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = root_store(creds, extra_roots, system)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(PoolCert(Arc::new(creds.certified_key()))));
    Ok(Arc::new(config))
}

/// Always presents the pool certificate (the key is already checked against it).
#[derive(Debug)]
struct PoolCert(Arc<CertifiedKey>);

impl ResolvesClientCert for PoolCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // Offer the certificate only if the key can sign with a scheme the server accepts;
        // otherwise the handshake fails with a clear "no client certificate" alert.
        self.0.key.choose_scheme(sigschemes).map(|_| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// TLS alerts by which a server says it does not accept our client certificate: the pool
/// was reset, the key does not belong to the certificate, or the certificate comes from
/// another CA (a CA of the same name but another key shows up as `DecryptError`).
pub fn rejects_client_certificate(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::CertificateRequired
            | A::UnknownCA
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::AccessDenied
            | A::DecryptError
    )
}

/// Finds a rustls error in an error's source chain, looking inside `io::Error`s (whose
/// `source()` skips the wrapped error itself).
pub(crate) fn find_rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::testing::TestPool;

    #[test]
    fn roots_hold_token_ca_and_additional() {
        let pool = TestPool::new();
        let creds = pool.credentials("mqtts://h:1", "https://h:2");
        let other = TestPool::new();
        let extra: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(other.pki.ca_cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let roots = root_store(&creds, &extra, SystemRoots::Exclude).unwrap();
        assert_eq!(roots.len(), 2);
        let roots = root_store(&creds, &[], SystemRoots::Exclude).unwrap();
        assert_eq!(roots.len(), 1);
        let mut no_ca = creds.clone();
        no_ca.token.ca_certificate = None;
        assert_eq!(
            root_store(&no_ca, &[], SystemRoots::Exclude).unwrap_err(),
            TlsError::NoRoots
        );
        let cfg = build_client_config(&creds, &extra, SystemRoots::Exclude).unwrap();
        assert!(cfg.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn system_roots_load_when_present() {
        let pool = TestPool::new();
        let creds = pool.credentials("mqtts://h:1", "https://h:2");
        let with = root_store(&creds, &[], SystemRoots::Include).unwrap();
        // The token CA is always there; the system store adds to it where one exists.
        assert!(!with.is_empty());
    }

    #[test]
    fn token_ca_errors_never_quote_it() {
        let pool = TestPool::new();
        let mut creds = pool.credentials("mqtts://h:1", "https://h:2");
        let ca = pool.pki.ca_cert_pem.clone();
        creds.token.ca_certificate = Some(ca.split_whitespace().collect::<Vec<_>>().join(" "));
        let msg = root_store(&creds, &[], SystemRoots::Exclude)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("SPACELIFT_TOKEN: .ca_certificate"), "{msg}");
        let body: String = ca.lines().filter(|l| !l.starts_with("-----")).collect();
        let decimal = |b: &[u8]| {
            b.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for w in body.as_bytes().windows(4) {
            assert!(!msg.contains(&decimal(w)), "{msg}");
        }
        for w in body.as_bytes().windows(8) {
            assert!(!msg.contains(std::str::from_utf8(w).unwrap()), "{msg}");
        }
    }
}
