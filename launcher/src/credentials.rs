//! The pool's credentials: `SPACELIFT_TOKEN` (backend endpoints and the pool's client
//! certificate) and `SPACELIFT_POOL_PRIVATE_KEY` (the key the certificate was issued for).
//!
//! Everything here happens before any connection: the token and the key are decoded, the key
//! is parsed (PKCS#8 RSA or EC, PKCS#1 RSA), and the key is checked against the
//! certificate so a mismatch (a reset pool, a key from another pool) gets its own error
//! instead of an obscure TLS failure later. The key never appears in `Debug`, `Display` or
//! an error message.

use std::fmt;
use std::sync::Arc;

use protocol::token::Token;
use protocol::ProtocolError;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// The variable names, as they appear in errors.
pub const TOKEN_VAR: &str = "SPACELIFT_TOKEN";
pub const KEY_VAR: &str = "SPACELIFT_POOL_PRIVATE_KEY";

/// Why the credentials are unusable. Messages name the variable and never quote its value.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CredentialsError {
    /// The token or key is not base64, not the expected JSON/PEM, or misses a field. The
    /// message names the variable and, for bad base64, the byte offset.
    #[error("{0}")]
    Decode(String),
    /// The key's PEM decoded but is not a private key we can use.
    #[error("{KEY_VAR}: {0}")]
    Key(String),
    /// The token's `.certificate` is not a usable certificate.
    #[error("{TOKEN_VAR}: .certificate: {0}")]
    Certificate(String),
    /// The key is fine, the certificate is fine, but they don't belong together.
    #[error(
        "{KEY_VAR} does not match the certificate in {TOKEN_VAR} (was the pool reset? a reset \
         issues a new token for a new CSR; use the token and the private key of the same \
         CSR, both base64-encoded with base64 -w0)"
    )]
    Mismatch,
}

/// The private key: parsed and checked, redacted in `Debug`.
pub struct PoolKey {
    der: PrivateKeyDer<'static>,
    signing: Arc<dyn SigningKey>,
}

impl PoolKey {
    /// The key as DER (PKCS#8 or PKCS#1, as it was given).
    pub fn der(&self) -> PrivateKeyDer<'static> {
        self.der.clone_key()
    }

    /// The signing key (ring) for TLS client authentication.
    pub fn signing_key(&self) -> Arc<dyn SigningKey> {
        self.signing.clone()
    }

    /// `RSA`, `ECDSA`, ... (safe to log).
    pub fn algorithm(&self) -> String {
        format!("{:?}", self.signing.algorithm())
    }
}

impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolKey({} <redacted>)", self.algorithm())
    }
}

impl Clone for PoolKey {
    fn clone(&self) -> Self {
        PoolKey {
            der: self.der.clone_key(),
            signing: self.signing.clone(),
        }
    }
}

/// The decoded, cross-checked pool credentials.
#[derive(Clone)]
pub struct Credentials {
    pub token: Token,
    pub key: PoolKey,
    /// The token's `.certificate`, parsed (leaf first; a chain is allowed).
    pub certificate_chain: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential as a whole; show only what helps an operator.
        f.debug_struct("Credentials")
            .field("pool_ulid", &self.token.pool_ulid)
            .field("broker", &self.token.broker.endpoint)
            .field("api", &self.token.api.endpoint)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Decodes `SPACELIFT_TOKEN` and `SPACELIFT_POOL_PRIVATE_KEY` (their texts) and checks
    /// that the key belongs to the token's certificate.
    pub fn from_env_text(
        token_text: &str,
        key_text: &str,
    ) -> Result<Credentials, CredentialsError> {
        let token = Token::decode(TOKEN_VAR, token_text).map_err(|e| sanitize(TOKEN_VAR, e))?;
        let certificate_chain = parse_certificates(&token.certificate)?;
        let key = parse_key(key_text)?;
        check_match(&certificate_chain, &key)?;
        Ok(Credentials {
            token,
            key,
            certificate_chain,
        })
    }

    /// The certificate chain and key as rustls wants them for client authentication.
    pub fn certified_key(&self) -> CertifiedKey {
        CertifiedKey::new(self.certificate_chain.clone(), self.key.signing_key())
    }
}

/// Turns a protocol error into a message that never quotes the input: serde's messages
/// can echo values ("invalid type: string \"...\""), so only structural facts are kept.
fn sanitize(var: &str, e: ProtocolError) -> CredentialsError {
    match e {
        ProtocolError::Json { source, .. } => {
            let text = source.to_string();
            // "missing field `x`" names a field; "unknown variant `v`" would quote a value.
            let detail = if text.starts_with("missing field") {
                text
            } else {
                match source.classify() {
                    serde_json::error::Category::Data => format!(
                        "a field has the wrong type at line {} column {}",
                        source.line(),
                        source.column()
                    ),
                    serde_json::error::Category::Eof => "the JSON is truncated".to_string(),
                    _ => format!(
                        "not valid JSON (line {} column {})",
                        source.line(),
                        source.column()
                    ),
                }
            };
            CredentialsError::Decode(format!(
                "{var}: decodes from base64 but is not the expected JSON: {detail}"
            ))
        }
        other => CredentialsError::Decode(other.to_string()),
    }
}

fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    if pem_without_line_breaks(pem) {
        return Err(CredentialsError::Certificate(
            "the PEM has no line breaks (the token is damaged; copy it again)".into(),
        ));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            CredentialsError::Certificate(format!("bad PEM: {}", describe_pem_error(&e)))
        })?;
    let leaf = certs
        .first()
        .ok_or_else(|| CredentialsError::Certificate("holds no certificate".into()))?;
    // x509-parser's errors are structural, but the DER is the token's: say only that.
    x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|_| {
        CredentialsError::Certificate(
            "not a valid X.509 certificate (its DER does not parse)".into(),
        )
    })?;
    Ok(certs)
}

/// A PEM error by its kind only: pki-types' own messages quote the offending line, which
/// for a key whose line breaks were lost is the whole key, as a list of decimal bytes.
pub(crate) fn describe_pem_error(e: &rustls_pki_types::pem::Error) -> &'static str {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a BEGIN line has no matching END line",
        E::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        E::Base64Decode(_) => "the text between BEGIN and END is not base64",
        E::NoItemsFound => "no PEM section found",
        E::SectionTooLarge => "a PEM section is larger than 256 MB",
        _ => "the PEM does not parse",
    }
}

/// True when a PEM's body does not start on a line of its own: what `echo $(cat key)`
/// leaves (lines joined with spaces) or a paste that dropped the line breaks.
fn pem_without_line_breaks(pem: &str) -> bool {
    let Some(begin) = pem.find("-----BEGIN ") else {
        return false;
    };
    let after = &pem[begin + "-----BEGIN ".len()..];
    let Some(close) = after.find("-----") else {
        return false;
    };
    let body = &after[close + "-----".len()..];
    let body = body.split("-----END").next().unwrap_or_default();
    !body.contains(['\n', '\r'])
}

fn parse_key(key_text: &str) -> Result<PoolKey, CredentialsError> {
    let pem = protocol::token::decode_private_key_pem(KEY_VAR, key_text)
        .map_err(|e| CredentialsError::Decode(e.to_string()))?;
    if pem_without_line_breaks(&pem) {
        return Err(CredentialsError::Key(
            "the PEM has no line breaks (was it passed through echo $(cat ...)?); encode the \
             file itself: base64 -w0 < spacelift.key"
                .into(),
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        CredentialsError::Key(format!(
            "the PEM private key does not parse: {}",
            describe_pem_error(&e)
        ))
    })?;
    let signing = any_supported_type(&der).map_err(|_| {
        CredentialsError::Key(
            "not a supported private key (expected RSA in PKCS#8 or PKCS#1, or an EC P-256/P-384 key)"
                .into(),
        )
    })?;
    Ok(PoolKey { der, signing })
}

fn check_match(chain: &[CertificateDer<'static>], key: &PoolKey) -> Result<(), CredentialsError> {
    let certified = CertifiedKey::new(chain.to_vec(), key.signing_key());
    match certified.keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CredentialsError::Mismatch)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            // The provider could not derive the public key; compare by hand.
            Err(CredentialsError::Key(
                "cannot derive the public key to check it against the certificate".into(),
            ))
        }
        Err(e) => Err(CredentialsError::Certificate(format!(
            "cannot check the key against it: {e}"
        ))),
    }
}

/// Test helpers: generated pool credentials (rcgen), shared by this crate's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use base64::Engine;
    use protocol::token::{ApiConfig, BrokerConfig};

    pub struct TestPki {
        pub ca_cert_pem: String,
        pub ca_key: rcgen::KeyPair,
        pub ca_params: rcgen::CertificateParams,
    }

    impl TestPki {
        pub fn new() -> TestPki {
            let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "test CA");
            let ca = params.self_signed(&ca_key).unwrap();
            TestPki {
                ca_cert_pem: ca.pem(),
                ca_key,
                ca_params: params,
            }
        }

        fn issuer(&self) -> rcgen::Issuer<'_, &rcgen::KeyPair> {
            rcgen::Issuer::from_params(&self.ca_params, &self.ca_key)
        }

        /// A client certificate for `key` (CN workers.spacelift.io).
        pub fn client_cert(&self, key: &rcgen::KeyPair) -> String {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "workers.spacelift.io");
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            params.signed_by(key, &self.issuer()).unwrap().pem()
        }

        /// A server certificate for 127.0.0.1 / localhost: (cert PEM, key PEM).
        pub fn server_cert(&self) -> (String, String) {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let params =
                rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                    .unwrap();
            let cert = params.signed_by(&key, &self.issuer()).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    pub fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    pub fn token_text(cert_pem: &str, ca_pem: Option<&str>, broker: &str, api: &str) -> String {
        Token {
            broker: BrokerConfig {
                endpoint: broker.into(),
            },
            api: ApiConfig {
                endpoint: api.into(),
            },
            pool_ulid: "01HZY0000000000000000POOL1".into(),
            certificate: cert_pem.into(),
            ca_certificate: ca_pem.map(str::to_string),
            topic_namespace: None,
        }
        .encode()
    }

    /// A fresh EC P-256 pool key (fast) and its matching credentials texts.
    pub struct TestPool {
        pub pki: TestPki,
        pub key_pem: String,
        pub cert_pem: String,
    }

    impl TestPool {
        pub fn new() -> TestPool {
            let pki = TestPki::new();
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let cert_pem = pki.client_cert(&key);
            TestPool {
                key_pem: key.serialize_pem(),
                cert_pem,
                pki,
            }
        }

        pub fn token(&self, broker: &str, api: &str) -> String {
            token_text(&self.cert_pem, Some(&self.pki.ca_cert_pem), broker, api)
        }

        pub fn credentials(&self, broker: &str, api: &str) -> Credentials {
            Credentials::from_env_text(&self.token(broker, api), &b64(&self.key_pem)).unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use std::process::Command;

    fn openssl(args: &[&str]) -> Option<Vec<u8>> {
        let out = Command::new("openssl").args(args).output().ok()?;
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(out.stdout)
    }

    /// An RSA key of `bits` in PKCS#8 PEM, via aws-lc-rs.
    fn rsa_pkcs8_pem(bits: usize) -> String {
        use aws_lc_rs::encoding::AsDer;
        let size = match bits {
            2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
            4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
            _ => unreachable!(),
        };
        let key = aws_lc_rs::rsa::KeyPair::generate(size).unwrap();
        let der = key.as_der().unwrap();
        pem("PRIVATE KEY", der.as_ref())
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let b = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
        let mut s = format!("-----BEGIN {label}-----\n");
        for chunk in b.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(chunk).unwrap());
            s.push('\n');
        }
        s.push_str(&format!("-----END {label}-----\n"));
        s
    }

    fn creds_for_rsa(
        key_pem_pkcs8: &str,
        key_pem_given: &str,
    ) -> Result<Credentials, CredentialsError> {
        let pki = TestPki::new();
        let kp = rcgen::KeyPair::from_pem(key_pem_pkcs8).unwrap();
        let cert = pki.client_cert(&kp);
        let token = token_text(&cert, None, "mqtts://127.0.0.1:1", "https://127.0.0.1:2");
        Credentials::from_env_text(&token, &b64(key_pem_given))
    }

    #[test]
    fn rsa_pkcs8_key_matching_certificate_is_accepted() {
        let key = rsa_pkcs8_pem(2048);
        let creds = creds_for_rsa(&key, &key).unwrap();
        assert!(
            creds.key.algorithm().contains("RSA"),
            "{}",
            creds.key.algorithm()
        );
        assert_eq!(creds.certificate_chain.len(), 1);
    }

    #[test]
    fn rsa_4096_pkcs8_as_spacelift_documents_it() {
        let key = rsa_pkcs8_pem(4096);
        creds_for_rsa(&key, &key).unwrap();
    }

    #[test]
    fn rsa_pkcs1_key_is_accepted() {
        let key = rsa_pkcs8_pem(2048);
        // Convert PKCS#8 -> PKCS#1 with openssl when available (the format `openssl req
        // -newkey rsa:4096 -nodes` wrote before OpenSSL 3).
        let dir = tempfile::tempdir().unwrap();
        let p8 = dir.path().join("k8.pem");
        std::fs::write(&p8, &key).unwrap();
        let pkcs1 = openssl(&["rsa", "-in", p8.to_str().unwrap(), "-traditional"]);
        use protocol::test_support::{require_component, INSTALL_DEPS};
        if !require_component(pkcs1.is_some(), "openssl", INSTALL_DEPS) {
            return;
        }
        let Some(pkcs1) = pkcs1 else { return };
        let pkcs1 = String::from_utf8(pkcs1).unwrap();
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
        let creds = creds_for_rsa(&key, &pkcs1).unwrap();
        assert!(matches!(creds.key.der(), PrivateKeyDer::Pkcs1(_)));
    }

    #[test]
    fn ec_pkcs8_key_is_accepted() {
        let pool = TestPool::new();
        let creds = pool.credentials("mqtts://127.0.0.1:1", "https://127.0.0.1:2");
        assert!(creds.key.algorithm().contains("ECDSA"));
    }

    #[test]
    fn key_of_another_pool_is_a_mismatch() {
        let pool = TestPool::new();
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let err = Credentials::from_env_text(
            &pool.token("mqtts://h:1", "https://h:2"),
            &b64(&other.serialize_pem()),
        )
        .unwrap_err();
        assert_eq!(err, CredentialsError::Mismatch);
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "SPACELIFT_POOL_PRIVATE_KEY does not match the certificate in SPACELIFT_TOKEN (was the pool reset?"
            ),
            "{msg}"
        );
        // An RSA key against an EC certificate is a mismatch too.
        let rsa = rsa_pkcs8_pem(2048);
        let err = Credentials::from_env_text(&pool.token("mqtts://h:1", "https://h:2"), &b64(&rsa))
            .unwrap_err();
        assert_eq!(err, CredentialsError::Mismatch);
    }

    #[test]
    fn bad_base64_names_variable_and_offset() {
        let pool = TestPool::new();
        let err = Credentials::from_env_text("eyJh*", &b64(&pool.key_pem)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SPACELIFT_TOKEN: unable to base64 decode: illegal base64 data at input byte 4"
        );
        let mut key = b64(&pool.key_pem);
        key.insert(10, '!');
        let err = Credentials::from_env_text(&pool.token("mqtts://h:1", "https://h:2"), &key)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "SPACELIFT_POOL_PRIVATE_KEY: unable to base64 decode: illegal base64 data at input byte 10"
        );
    }

    #[test]
    fn token_json_errors_never_echo_values() {
        let secret = "hunter2-very-secret";
        let json = format!(r#"{{"broker":{{"endpoint":1}},"api":"{secret}"}}"#);
        let err = Credentials::from_env_text(&b64(&json), "AAAA").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("SPACELIFT_TOKEN: "), "{msg}");
        assert!(!msg.contains(secret), "{msg}");
        let err =
            Credentials::from_env_text(&b64(r#"{"broker":{"endpoint":"x"}}"#), "AAAA").unwrap_err();
        assert!(err.to_string().contains("missing field `api`"), "{err}");
    }

    #[test]
    fn garbage_key_pem_is_a_key_error() {
        let pool = TestPool::new();
        let bogus = "-----BEGIN PRIVATE KEY-----\nAAAAAAAA\n-----END PRIVATE KEY-----\n";
        let err =
            Credentials::from_env_text(&pool.token("mqtts://h:1", "https://h:2"), &b64(bogus))
                .unwrap_err();
        assert!(matches!(err, CredentialsError::Key(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("SPACELIFT_POOL_PRIVATE_KEY: "),
            "{err}"
        );
    }

    /// Fails if `msg` carries any of the PEM's bytes in any spelling we know of: a run of
    /// 8 characters of its base64 body, its bytes (or its text's bytes) as a decimal
    /// list, or 4 DER bytes in hex.
    fn assert_no_pem_bytes(msg: &str, pem_text: &str) {
        let body: String = pem_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let chars: Vec<char> = body.chars().collect();
        for w in chars.windows(8) {
            let w: String = w.iter().collect();
            assert!(!msg.contains(&w), "quotes base64 {w:?}: {msg}");
        }
        let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &body)
            .expect("the test PEM's body is base64");
        let decimal = |bytes: &[u8]| {
            bytes
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for w in der.windows(4) {
            assert!(!msg.contains(&decimal(w)), "quotes DER in decimal: {msg}");
            let hex = hex::encode(w);
            assert!(
                !msg.to_ascii_lowercase().contains(&hex),
                "quotes DER in hex: {msg}"
            );
        }
        for w in body.as_bytes().windows(4) {
            assert!(
                !msg.contains(&decimal(w)),
                "quotes the text in decimal: {msg}"
            );
        }
    }

    #[test]
    fn pem_key_without_line_breaks_is_described_never_quoted() {
        let pool = TestPool::new();
        let token = pool.token("mqtts://h:1", "https://h:2");
        // `echo $(cat spacelift.key) | base64 -w0`: the shell joins the lines with spaces.
        let spaced = pool
            .key_pem
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            + "\n";
        // The same with the line breaks dropped altogether.
        let joined: String = pool.key_pem.lines().collect();
        for mangled in [spaced, joined] {
            let err = Credentials::from_env_text(&token, &b64(&mangled)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("SPACELIFT_POOL_PRIVATE_KEY: "), "{msg}");
            assert!(msg.contains("no line breaks"), "{msg}");
            assert!(msg.contains("base64 -w0 < spacelift.key"), "{msg}");
            assert_no_pem_bytes(&msg, &pool.key_pem);
            assert_no_pem_bytes(&format!("{err:?}"), &pool.key_pem);
        }
    }

    #[test]
    fn every_key_pem_error_describes_structure_only() {
        let pool = TestPool::new();
        let token = pool.token("mqtts://h:1", "https://h:2");
        let lines: Vec<&str> = pool.key_pem.lines().collect();
        let mut bad_char = lines.clone();
        let mid = format!("{}*{}", &lines[1][..10], &lines[1][10..]);
        bad_char[1] = &mid;
        let truncated = lines[..lines.len() - 1].join("\n") + "\n";
        let mut wrong_end = lines.clone();
        let last = lines.len() - 1;
        wrong_end[last] = "-----END RSA PRIVATE KEY-----";
        for mangled in [bad_char.join("\n"), truncated, wrong_end.join("\n")] {
            let err = Credentials::from_env_text(&token, &b64(&mangled)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("SPACELIFT_POOL_PRIVATE_KEY: "), "{msg}");
            assert_no_pem_bytes(&msg, &pool.key_pem);
            assert_no_pem_bytes(&format!("{err:?}"), &pool.key_pem);
        }
    }

    #[test]
    fn token_certificate_errors_never_quote_it() {
        let pool = TestPool::new();
        let spaced = pool
            .cert_pem
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let mut lines: Vec<String> = pool.cert_pem.lines().map(str::to_string).collect();
        lines[1].insert(5, '*');
        let bad_char = lines.join("\n");
        for cert in [spaced, bad_char] {
            let token = token_text(&cert, None, "mqtts://h:1", "https://h:2");
            let err = Credentials::from_env_text(&token, &b64(&pool.key_pem)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("SPACELIFT_TOKEN: .certificate: "), "{msg}");
            assert_no_pem_bytes(&msg, &pool.cert_pem);
            assert_no_pem_bytes(&format!("{err:?}"), &pool.cert_pem);
        }
    }

    #[test]
    fn secrets_absent_from_debug() {
        let pool = TestPool::new();
        let creds = pool.credentials("mqtts://h:1", "https://h:2");
        let dbg = format!("{creds:?}");
        let key_body: Vec<&str> = pool
            .key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        for line in key_body {
            assert!(!dbg.contains(line), "{dbg}");
        }
        assert!(!dbg.contains("BEGIN"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        assert!(dbg.contains("01HZY0000000000000000POOL1"), "{dbg}");
    }
}
