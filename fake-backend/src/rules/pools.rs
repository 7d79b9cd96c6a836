//! Pools and their certificates: minting a pool from a CSR or a generated key, resetting
//! its certificate, and telling which pool a client certificate belongs to.

use serde_json::json;

use super::Core;
use crate::error::{BackendError, Result};
use crate::events::{kinds, NewEvent};
use crate::store::Pool;

/// Where a pool's key comes from.
#[derive(Debug, Clone, Copy)]
pub enum PoolKeySource<'a> {
    /// A PEM CSR made by the operator (e.g. with `openssl req`).
    Csr(&'a str),
    /// Generate an RSA key of this many bits (2048, 3072, 4096).
    Generate { bits: u32 },
}

impl Core {
    /// The pool a client certificate belongs to; `Err` says why it is refused.
    pub(crate) fn pool_for_fingerprint(
        &self,
        fingerprint: &str,
    ) -> std::result::Result<String, String> {
        let st = self.lock();
        for pool in st.state.pools.values() {
            if pool.fingerprint == fingerprint {
                return Ok(pool.ulid.clone());
            }
            if pool.retired_fingerprints.iter().any(|f| f == fingerprint) {
                return Err(format!(
                    "certificate of pool {} was replaced by a pool reset",
                    pool.ulid
                ));
            }
        }
        Err("certificate does not belong to any pool".into())
    }

    pub(crate) fn add_pool(&self, key: PoolKeySource<'_>) -> Result<(String, Option<String>)> {
        let id = self.new_id();
        let (cert_pem, key_pem) = self.issue(&id, key, 0)?;
        let fingerprint = crate::pki::fingerprint(&crate::pki::first_cert_der(&cert_pem)?);
        self.mutate(|tx| {
            tx.st.state.pools.insert(
                id.clone(),
                Pool {
                    ulid: id.clone(),
                    cert_pem,
                    fingerprint: fingerprint.clone(),
                    retired_fingerprints: Vec::new(),
                    resets: 0,
                },
            );
            tx.event(
                NewEvent::new(kinds::POOL_CREATED)
                    .pool(&id)
                    .data(json!({ "fingerprint": fingerprint })),
            );
        });
        Ok((id, key_pem))
    }

    /// Issues a new certificate for `pool`; the old one is refused from now on.
    /// Returns the new key when generated, and the old fingerprint.
    pub(crate) fn reset_pool(
        &self,
        pool: &str,
        key: PoolKeySource<'_>,
    ) -> Result<(Option<String>, String)> {
        let resets = self
            .read(|s| s.pools.get(pool).map(|p| p.resets))
            .ok_or_else(|| BackendError::NotFound(format!("pool {pool}")))?;
        let (cert_pem, key_pem) = self.issue(pool, key, resets + 1)?;
        let fingerprint = crate::pki::fingerprint(&crate::pki::first_cert_der(&cert_pem)?);
        let old = self.mutate(|tx| {
            let p = tx.st.state.pools.get_mut(pool)?;
            let old = std::mem::replace(&mut p.fingerprint, fingerprint.clone());
            p.retired_fingerprints.push(old.clone());
            p.cert_pem = cert_pem;
            p.resets += 1;
            tx.event(
                NewEvent::new(kinds::POOL_RESET)
                    .pool(pool)
                    .data(json!({ "fingerprint": fingerprint, "retired": old })),
            );
            Some(old)
        });
        let old = old.ok_or_else(|| BackendError::NotFound(format!("pool {pool}")))?;
        Ok((key_pem, old))
    }

    fn issue(
        &self,
        cn: &str,
        key: PoolKeySource<'_>,
        nonce: u64,
    ) -> Result<(String, Option<String>)> {
        match key {
            PoolKeySource::Csr(csr) => Ok((self.pki.sign_csr(csr, cn, nonce)?, None)),
            PoolKeySource::Generate { bits } => {
                let ck = self.pki.generate_client(cn, bits, nonce)?;
                Ok((ck.cert_pem, Some(ck.key_pem)))
            }
        }
    }
}
