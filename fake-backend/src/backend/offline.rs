//! Pool creation and reset on a data dir without a running backend (the CLI's `pool
//! create` and `pool reset` when no `serve` is up).

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{b64, make_token, PoolCredentials};
use crate::clock::{Clock, BASE_MS};
use crate::error::{BackendError, Result};
use crate::events::EventLog;
use crate::pki::Pki;
use crate::rules::{Core, Parts, PoolKeySource, Timing};
use crate::store::{Endpoints, Store};

/// Creates a pool in a data dir without a running backend (the CLI's `pool create` when
/// no `serve` is up). The token names the endpoints the last `serve` recorded, or the
/// CLI defaults.
pub fn create_pool_offline(
    data_dir: &Path,
    csr_pem: Option<&str>,
    key_bits: u32,
) -> Result<PoolCredentials> {
    let core = offline_core(data_dir)?;
    let source = match csr_pem {
        Some(csr) => PoolKeySource::Csr(csr),
        None => PoolKeySource::Generate { bits: key_bits },
    };
    let (pool, key) = core.add_pool(source)?;
    offline_credentials(&core, &pool, key)
}

/// `pool reset` without a running backend.
pub fn reset_pool_offline(
    data_dir: &Path,
    pool: &str,
    csr_pem: Option<&str>,
    key_bits: u32,
) -> Result<PoolCredentials> {
    let core = offline_core(data_dir)?;
    let source = match csr_pem {
        Some(csr) => PoolKeySource::Csr(csr),
        None => PoolKeySource::Generate { bits: key_bits },
    };
    let (key, _) = core.reset_pool(pool, source)?;
    offline_credentials(&core, pool, key)
}

/// Endpoints a token names when no backend has run in the data dir yet.
pub const DEFAULT_MQTT_BIND: &str = "127.0.0.1:1984";
pub const DEFAULT_HTTPS_BIND: &str = "127.0.0.1:8443";

fn offline_core(data_dir: &Path) -> Result<Core> {
    crate::tls::install_default_provider();
    let store = Store::open(data_dir)?;
    let pki = Pki::load_or_create(data_dir)?;
    let events = EventLog::open(data_dir)?;
    let mut state = store.load()?;
    // Offline use is not a backend start.
    state.generation = state.generation.wrapping_add(1000);
    let clock = Clock::new(BASE_MS.max(events.last_at_ms() + 1));
    let (tx, _rx) = mpsc::unbounded_channel();
    let timing = Timing {
        lease_ttl: Duration::from_secs(30),
        heartbeat_interval: Duration::from_secs(5),
        offer_ttl: Duration::from_secs(30),
    };
    let parts = Parts {
        timing,
        clock,
        events,
        store,
        pki,
        seed: 0,
    };
    Ok(Core::new(parts, state, tx))
}

fn offline_credentials(core: &Core, pool: &str, key: Option<String>) -> Result<PoolCredentials> {
    let (cert, endpoints) = core
        .read(|s| {
            s.pools
                .get(pool)
                .map(|p| (p.cert_pem.clone(), s.endpoints.clone()))
        })
        .ok_or_else(|| BackendError::NotFound(format!("pool {pool}")))?;
    let endpoints = endpoints.unwrap_or_else(|| Endpoints {
        broker: format!("mqtts://{DEFAULT_MQTT_BIND}"),
        api: format!("https://{DEFAULT_HTTPS_BIND}"),
    });
    Ok(PoolCredentials {
        pool_ulid: pool.to_string(),
        token: make_token(&endpoints, pool, cert.clone(), core.pki.ca_cert_pem()).encode(),
        private_key_b64: key.as_deref().map(b64),
        certificate_pem: cert,
        private_key_pem: key,
    })
}
