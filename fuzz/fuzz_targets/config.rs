//! Every configuration variable: `config::load_with` over a `MapEnv` holding a valid
//! token and key plus fuzzed values for the other variables (durations, sizes, booleans,
//! mounts, whitelists, masks, metadata, private-VCS mappings, proxies, CAs, ...).
//!
//! Properties: a bad value's error names a variable that was set (and starts with it);
//! neither an error nor the configuration's Debug carries a secret (a whitelisted value
//! that is masked, proxy or VCS URL credentials); a loaded configuration holds only
//! valid values. Go durations written as `<s>s<n>ns` parse back to themselves.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use fuzz_support::{key_text, token_text};
use launcher::config::vars::{self, Kind};
use launcher::config::{load_with, ConfigError, MapEnv, Overrides};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use protocol::duration::parse_go_duration;

/// Variables the fuzzer sets: the table's (`vars::ALL`), but the credentials, the
/// families (set through `Extra`) and `SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY` (a
/// file `prepare` reads: the policy file has its own parser and tests); plus the proxies'
/// lower-case spellings and candidates for the whitelist and the mask list.
fn fuzzed_vars() -> &'static [String] {
    static VARS: OnceLock<Vec<String>> = OnceLock::new();
    VARS.get_or_init(|| {
        let mut names: Vec<String> = vars::ALL
            .iter()
            .filter(|v| !matches!(v.kind, Kind::Credential | Kind::Family))
            .filter(|v| v.name != vars::RUN_INITIALIZATION_POLICY.name)
            .map(|v| v.name.to_string())
            .collect();
        for v in [vars::HTTP_PROXY, vars::HTTPS_PROXY, vars::NO_PROXY] {
            names.push(v.name.to_ascii_lowercase());
        }
        names.extend(
            [
                "SECRET_A",
                "SECRET_B",
                "ro_SECRET_A",
                "wo_SECRET_B",
                "PLAIN",
            ]
            .map(String::from),
        );
        names
    })
}

/// Variables whose values are secrets when they are whitelisted and masked.
const SECRETS: &[&str] = &["SECRET_A", "SECRET_B", "ro_SECRET_A", "wo_SECRET_B"];

#[derive(Arbitrary, Debug)]
enum Extra {
    Metadata(String, String),
    VcsName(String, String),
    VcsEndpoint(String, String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    values: Vec<(u8, String)>,
    extras: Vec<Extra>,
    capacity: Option<u32>,
    duration: (u64, u32),
}

/// What a configuration with only the credentials shows (pool ULID, endpoints, defaults):
/// public text a fuzzed secret may coincide with (`000000000000` is in the pool ULID).
fn public_text() -> &'static str {
    static PUBLIC: OnceLock<String> = OnceLock::new();
    PUBLIC.get_or_init(|| {
        let (token, key) = credentials();
        let env = MapEnv::new([
            (vars::TOKEN.name, token.as_str()),
            (vars::POOL_PRIVATE_KEY.name, key),
        ]);
        let cfg = load_with(&env, &Overrides::default()).expect("the credentials load");
        format!("{cfg:?}")
    })
}

fn credentials() -> &'static (String, String) {
    static CREDS: OnceLock<(String, String)> = OnceLock::new();
    CREDS.get_or_init(|| (token_text(), key_text()))
}

/// User names and passwords in the URLs among the values.
fn url_credentials(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((_, rest)) = value.split_once("://") {
        if let Some((userinfo, _)) = rest.split('/').next().unwrap_or("").rsplit_once('@') {
            out.extend(userinfo.split(':').map(str::to_string));
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let (d_secs, d_nanos) = (
        // Below Go's maximum (2562047h47m16.854775807s), which config refuses beyond.
        input.duration.0 % 9_223_372_036,
        input.duration.1 % 1_000_000_000,
    );
    assert_eq!(
        parse_go_duration(&format!("{d_secs}s{d_nanos}ns")),
        Ok(Duration::new(d_secs, d_nanos))
    );

    let (token, key) = credentials();
    let mut env = MapEnv::new([
        (vars::TOKEN.name, token.as_str()),
        (vars::POOL_PRIVATE_KEY.name, key),
    ]);
    for (i, value) in &input.values {
        let names = fuzzed_vars();
        env.set(
            names[usize::from(*i) % names.len()].as_str(),
            value.as_str(),
        );
    }
    for extra in &input.extras {
        let (prefix, suffix, value) = match extra {
            Extra::Metadata(k, v) => (vars::METADATA.name, k, v),
            Extra::VcsName(n, v) => (vars::PRIVATEVCS_NAME.name, n, v),
            Extra::VcsEndpoint(n, v) => (vars::PRIVATEVCS_ENDPOINT.name, n, v),
        };
        env.set(format!("{prefix}{suffix}"), value.as_str());
    }
    let overrides = Overrides {
        capacity: input.capacity,
    };

    // Secrets: masked whitelisted values and URL credentials, 8 bytes or longer (shorter
    // ones turn up by coincidence), and not also the value of some non-secret variable
    // (whose own error may rightly quote it).
    let masked: Vec<String> = env
        .0
        .get(vars::MASK_ENVS.name)
        .map(|l| l.split(',').map(|n| n.trim().to_string()).collect())
        .unwrap_or_default();
    let mut secrets: Vec<String> = Vec::new();
    let mut sources: Vec<&str> = Vec::new();
    for (name, value) in &env.0 {
        let bare = name
            .strip_prefix("ro_")
            .or_else(|| name.strip_prefix("wo_"))
            .unwrap_or(name);
        if SECRETS.contains(&name.as_str()) && masked.iter().any(|m| m == bare) {
            secrets.push(value.trim().to_string());
            sources.push(name);
        }
        if name.eq_ignore_ascii_case("http_proxy")
            || name.eq_ignore_ascii_case("https_proxy")
            || name.starts_with(vars::PRIVATEVCS_ENDPOINT.name)
        {
            secrets.extend(url_credentials(value));
            sources.push(name);
        }
    }
    secrets.retain(|s| {
        s.len() >= 8
            && !public_text().contains(s.as_str())
            && !env.0.iter().any(|(name, value)| {
                name.contains(s.as_str())
                    || (!sources.contains(&name.as_str()) && value.contains(s.as_str()))
            })
    });
    let check = |shown: &str| {
        for s in &secrets {
            assert!(!shown.contains(s.as_str()), "secret {s:?} shown: {shown}");
        }
    };

    match load_with(&env, &overrides) {
        Ok(cfg) => {
            // The RNG seed is random per load: digits a secret may coincide with.
            let seed = cfg.settings.seed.to_string();
            check(&format!("{cfg:?}").replace(&seed, "<seed>"));
            let s = &cfg.settings;
            assert!(s.capacity >= 1);
            assert!(s.binary_cache_keep >= 1);
            for d in [
                s.logs_timeout,
                s.run_timeout,
                s.prepare_timeout,
                s.stop_grace,
            ] {
                assert!(d > Duration::ZERO);
            }
            for m in &s.extra_mounts {
                assert!(
                    m.host.starts_with('/') && m.container.starts_with('/'),
                    "{m:?}"
                );
            }
            assert!(s.data_dir.is_absolute());
        }
        Err(ConfigError::Invalid { var, message }) => {
            let shown = ConfigError::Invalid {
                var: var.clone(),
                message: message.clone(),
            }
            .to_string();
            assert!(
                env.0.contains_key(&var) || var == "--capacity",
                "the error names {var:?}, which was not set: {shown}"
            );
            assert!(shown.starts_with(&format!("{var}: ")), "{shown}");
            check(&shown);
            check(&format!("{var:?} {message:?}"));
        }
        Err(e) => panic!("the token and key are valid, yet: {e}"),
    }
});
