//! `SPACELIFT_POOL_PRIVATE_KEY`: with a fixed valid token and fuzzed key text, the error
//! (Display and Debug) never carries key bytes: no 8-byte piece of the text, of what it
//! decodes to, or of the DER inside, spelled as text, base64, hex or decimal byte values.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use fuzz_support::{find_leak, key_text, token_text};
use launcher::credentials::Credentials;
use libfuzzer_sys::fuzz_target;

/// The fixed words the errors are made of (see credentials.rs, protocol/src/token.rs and
/// rustls-pki-types' PEM errors).
const VOCABULARY: &[&str] = &[
    "SPACELIFT_POOL_PRIVATE_KEY: unable to base64 decode: illegal base64 data at input byte 0",
    "SPACELIFT_POOL_PRIVATE_KEY: is empty",
    "decodes to binary data, not a PEM text (base64 the whole .key file: base64 -w0 spacelift.key)",
    "is an encrypted private key; generate it with -nodes",
    "holds a certificate or CSR, not the private key (spacelift.key)",
    "does not hold a PEM private key (expected BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)",
    "the PEM private key does not parse: ",
    "not a supported private key (expected RSA in PKCS#8 or PKCS#1, or an EC P-256/P-384 key)",
    "cannot derive the public key to check it against the certificate",
    "does not match the certificate in SPACELIFT_TOKEN (was the pool reset? a reset issues a new token for a new CSR; use the token and the private key of the same CSR, both base64-encoded with base64 -w0)",
    "SPACELIFT_TOKEN: .certificate: cannot check the key against it: ",
    "-----BEGIN PRIVATE KEY----- -----END PRIVATE KEY----- -----BEGIN RSA PRIVATE KEY----- -----END RSA PRIVATE KEY----- -----BEGIN ENCRYPTED PRIVATE KEY----- -----BEGIN CERTIFICATE REQUEST-----",
    "Decode(\"SPACELIFT_POOL_PRIVATE_KEY: ",
    "Key(\"SPACELIFT_POOL_PRIVATE_KEY",
    "Key(\"the PEM private key does not parse: ",
    "Certificate(\"cannot check the key against it: ",
    "Mismatch",
    "no items found",
    "section end",
];

fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(token_text)
}

/// The DER inside a PEM text (all base64 body lines joined), if any.
fn pem_body(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    // Half of the inputs are raw text, half the base64 of it (so the fuzzer reaches the
    // PEM and DER parsers without having to learn base64).
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let key = if mode & 1 == 0 {
        text
    } else {
        base64::engine::general_purpose::STANDARD.encode(rest)
    };
    let err = match Credentials::from_env_text(token(), &key) {
        Ok(creds) => {
            // Only the real key matches the token's certificate (its text may differ:
            // PEM parsers ignore what follows the END line).
            let real = Credentials::from_env_text(token(), &key_text()).expect("the real key");
            assert_eq!(
                creds.key.der().secret_der(),
                real.key.der().secret_der(),
                "another key was accepted"
            );
            return;
        }
        Err(e) => e,
    };
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(key.trim().trim_end_matches('='))
        .unwrap_or_default();
    let der = pem_body(&decoded);
    let secrets: [&[u8]; 3] = [key.trim().as_bytes(), &decoded, &der];
    for shown in [err.to_string(), format!("{err:?}")] {
        if let Some(piece) = find_leak(&shown, &secrets, VOCABULARY) {
            panic!("the key error carries key bytes ({piece:?}): {shown}");
        }
    }
});
