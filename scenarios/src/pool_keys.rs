//! Pool keys for worlds, made once per process and handed out by index: generating an
//! RSA-2048 key was half the CPU of a simulated schedule, and every world needs the same
//! few (its pool's, another pool's, the ones after a revocation).

use std::sync::Mutex;

use base64::Engine;
use fake_backend::{BackendHandle, PoolCredentials};
use rcgen::{CertificateParams, KeyPair, RsaKeySize, PKCS_RSA_SHA256};

use crate::error::ScenarioError;

struct PoolKey {
    key_pem: String,
    csr_pem: String,
}

static KEYS: Mutex<Vec<PoolKey>> = Mutex::new(Vec::new());

fn harness(what: &str, e: impl std::fmt::Display) -> ScenarioError {
    ScenarioError::Harness(format!("{what}: {e}"))
}

/// The `n`-th key's (PEM, CSR PEM), made on first use. Operators' keys are RSA-2048 (the
/// size Spacelift's docs show), so these are too.
fn nth(n: usize) -> Result<(String, String), ScenarioError> {
    let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
    while keys.len() <= n {
        let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)
            .map_err(|e| harness("generating a pool key", e))?;
        let csr = CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|r| r.pem())
            .map_err(|e| harness("making a pool CSR", e))?;
        keys.push(PoolKey {
            key_pem: key.serialize_pem(),
            csr_pem: csr,
        });
    }
    Ok((keys[n].key_pem.clone(), keys[n].csr_pem.clone()))
}

/// A new pool with the `n`-th key: its credentials, the key as the launcher takes it.
pub fn create_pool(backend: &BackendHandle, n: usize) -> Result<PoolCredentials, ScenarioError> {
    let (key, csr) = nth(n)?;
    let mut creds = backend
        .create_pool_from_csr(&csr)
        .map_err(|e| harness("creating a pool", e))?;
    with_key(&mut creds, key);
    Ok(creds)
}

/// `pool`'s certificate reissued for the `n`-th key.
pub fn reset_pool(
    backend: &BackendHandle,
    pool: &str,
    n: usize,
) -> Result<PoolCredentials, ScenarioError> {
    let (key, csr) = nth(n)?;
    let mut creds = backend
        .reset_pool(pool, Some(&csr))
        .map_err(|e| harness("resetting the pool", e))?;
    with_key(&mut creds, key);
    Ok(creds)
}

fn with_key(creds: &mut PoolCredentials, key_pem: String) {
    creds.private_key_b64 =
        Some(base64::engine::general_purpose::STANDARD.encode(key_pem.as_bytes()));
    creds.private_key_pem = Some(key_pem);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_index_is_the_same_key_and_another_index_another() {
        let (a, _) = nth(0).unwrap();
        let (b, _) = nth(0).unwrap();
        let (c, _) = nth(1).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with("-----BEGIN PRIVATE KEY-----"), "{a}");
    }
}
