//! How each kind of value is read and checked: booleans, numbers, durations, lists,
//! mounts, the private-VCS pairs, proxies, CAs. Pure functions of the environment.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use protocol::duration::parse_go_duration;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use super::vars::{self, Kind, Var};
use super::{invalid, ConfigError, EnvSource};
use crate::container_spec::{PRIVATEVCS_ENDPOINT_PREFIX, PRIVATEVCS_NAME_PREFIX};
use crate::secret::{ExposeSecret, SecretString};
use crate::settings::{ExtraMount, MountScope, PassedEnv, PrivateVcsMapping};

pub(super) struct Reader<'a> {
    pub(super) env: &'a dyn EnvSource,
}

impl Reader<'_> {
    /// The value, trimmed; empty counts as unset.
    pub(super) fn get(&self, name: &str) -> Option<String> {
        self.env
            .var(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The value, or the table's default when unset.
    pub(super) fn text(&self, var: &Var) -> String {
        self.get(var.name)
            .unwrap_or_else(|| var.default_value().to_string())
    }

    pub(super) fn boolean(&self, var: &Var) -> Result<bool, ConfigError> {
        debug_assert_eq!(var.kind, Kind::Bool, "{}", var.name);
        let v = self.text(var);
        parse_bool(&v).ok_or_else(|| {
            invalid(
                var.name,
                format!("expected true or false (or 1/0), got {v:?}"),
            )
        })
    }

    pub(super) fn duration(&self, var: &Var) -> Result<Duration, ConfigError> {
        debug_assert_eq!(var.kind, Kind::Duration, "{}", var.name);
        let v = self.text(var);
        match parse_go_duration(&v) {
            Ok(d) if d > Duration::ZERO => Ok(d),
            Ok(_) => Err(invalid(var.name, format!("must be positive, got {v:?}"))),
            Err(e) => Err(invalid(
                var.name,
                format!("expected a Go duration such as 7m, 1h30m or 90s, got {v:?} ({e})"),
            )),
        }
    }

    /// A whole number at least the table's minimum (and that fits in `T`).
    pub(super) fn number<T: TryFrom<u64>>(&self, var: &Var) -> Result<T, ConfigError> {
        let Kind::Number { min } = var.kind else {
            unreachable!("{} is not a number", var.name)
        };
        let v = self.text(var);
        v.parse::<u64>()
            .ok()
            .filter(|n| *n >= min)
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| {
                invalid(
                    var.name,
                    format!("expected a whole number >= {min}, got {v:?}"),
                )
            })
    }

    /// `var`, or its lower-case spelling when the upper-case one is unset.
    pub(super) fn proxy(&self, var: &Var) -> Result<Option<String>, ConfigError> {
        let upper = var.name;
        let lower = upper.to_ascii_lowercase();
        let (name, value) = match self.get(upper) {
            Some(v) => (upper, v),
            None => match self.get(&lower) {
                Some(v) => (lower.as_str(), v),
                None => return Ok(None),
            },
        };
        // Proxy URLs may hold credentials: never quote them.
        match reqwest::Url::parse(&value) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https" | "socks5" | "socks5h")
                    && u.has_host() =>
            {
                Ok(Some(value))
            }
            _ => Err(invalid(
                name,
                "expected a proxy URL such as http://proxy.example:3128",
            )),
        }
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

pub(super) fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `SPACELIFT_WHITELIST_ENVS`: see its help in [`vars`] for the `ro_`/`wo_` interpretation.
pub(super) fn whitelist(r: &Reader<'_>) -> Result<(Vec<PassedEnv>, Vec<String>), ConfigError> {
    let mut out: Vec<PassedEnv> = Vec::new();
    let mut warnings = Vec::new();
    let Some(list) = r.get(vars::WHITELIST_ENVS.name) else {
        return Ok((out, warnings));
    };
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (scope, name) = if let Some(n) = entry.strip_prefix("ro_") {
            (MountScope::ReadOnlyRuns, n)
        } else if let Some(n) = entry.strip_prefix("wo_") {
            (MountScope::WriteRuns, n)
        } else {
            (MountScope::All, entry)
        };
        if !valid_env_name(name) {
            return Err(invalid(
                vars::WHITELIST_ENVS.name,
                format!("entry {entry:?} is not a variable name (letters, digits and _)"),
            ));
        }
        // A scoped entry prefers the scoped variable (so RO and write runs can get
        // different values under the same name), else the plain one.
        let value = if scope == MountScope::All {
            r.env.var(name)
        } else {
            r.env.var(entry).or_else(|| r.env.var(name))
        };
        match value {
            Some(value) => {
                out.retain(|p| !(p.name == name && p.applies_to == scope));
                out.push(PassedEnv {
                    name: name.to_string(),
                    value: value.into(),
                    applies_to: scope,
                });
            }
            None => warnings.push(format!(
                "{}: {entry} is not set in the launcher's environment; not passed to runs",
                vars::WHITELIST_ENVS.name
            )),
        }
    }
    Ok((out, warnings))
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `SPACELIFT_MASK_ENVS`: the values (from the launcher's environment, and from the
/// whitelisted values of that name) to mask. Empty values are never masked.
pub(super) fn masked(r: &Reader<'_>, passed: &[PassedEnv]) -> (Vec<SecretString>, Vec<String>) {
    let mut values: Vec<String> = Vec::new();
    let mut warnings = Vec::new();
    let Some(list) = r.get(vars::MASK_ENVS.name) else {
        return (Vec::new(), warnings);
    };
    for name in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut found = false;
        for p in passed.iter().filter(|p| p.name == name) {
            found = true;
            values.push(p.value.expose_secret().to_string());
        }
        if let Some(v) = r.env.var(name) {
            found = true;
            values.push(v);
        }
        if !passed.iter().any(|p| p.name == name) {
            warnings.push(format!(
                "{}: {name} is not in {}; it is masked but not passed to runs",
                vars::MASK_ENVS.name,
                vars::WHITELIST_ENVS.name
            ));
        } else if !found {
            warnings.push(format!("{}: {name} is not set", vars::MASK_ENVS.name));
        }
    }
    values.retain(|v| !v.is_empty());
    values.sort();
    values.dedup();
    (
        values.into_iter().map(SecretString::from).collect(),
        warnings,
    )
}

/// `/host:/container[:ro|:rw]` entries, comma separated.
pub(super) fn mounts(
    r: &Reader<'_>,
    var: &Var,
    scope: MountScope,
) -> Result<Vec<ExtraMount>, ConfigError> {
    let var = var.name;
    let Some(list) = r.get(var) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = entry.split(':').collect();
        let (host, container, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] if matches!(*m, "ro" | "rw") => (*h, *c, Some(*m)),
            _ => {
                return Err(invalid(
                    var,
                    format!("entry {entry:?} is not /host/path:/container/path[:ro]"),
                ))
            }
        };
        for (what, p) in [("host", host), ("container", container)] {
            if !p.starts_with('/') {
                return Err(invalid(
                    var,
                    format!("entry {entry:?}: the {what} path {p:?} must be absolute"),
                ));
            }
        }
        let container = match mode {
            Some("ro") => format!("{container}:ro"),
            _ => container.to_string(),
        };
        out.push(ExtraMount {
            host: host.to_string(),
            container,
            applies_to: scope,
        });
    }
    Ok(out)
}

/// `SPACELIFT_PRIVATEVCS_MAPPING_{NAME,BASE_ENDPOINT}_<n>`: complete pairs, ordered by `<n>`.
pub(super) fn private_vcs_mappings(
    r: &Reader<'_>,
) -> Result<(Vec<PrivateVcsMapping>, Vec<String>), ConfigError> {
    // n -> (the variable as spelled, its value): errors name the variable that was set.
    let mut names: BTreeMap<u32, (String, String)> = BTreeMap::new();
    let mut endpoints: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for (var, _) in r.env.vars() {
        let (map, suffix) = if let Some(n) = var.strip_prefix(PRIVATEVCS_NAME_PREFIX) {
            (&mut names, n)
        } else if let Some(n) = var.strip_prefix(PRIVATEVCS_ENDPOINT_PREFIX) {
            (&mut endpoints, n)
        } else {
            continue;
        };
        // Empty counts as unset, as everywhere.
        let Some(value) = r.get(&var) else { continue };
        let n = match suffix.parse::<u32>() {
            Ok(n) if suffix.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(invalid(
                    &var,
                    "the suffix must be a number: _0, _1, ... (one per VCS-agent pool)",
                ))
            }
        };
        if map.insert(n, (var.clone(), value)).is_some() {
            return Err(invalid(
                &var,
                format!("set twice for n = {n} (leading zeros?)"),
            ));
        }
    }
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (n, (name_var, _)) in &names {
        if !endpoints.contains_key(n) {
            let suffix = &name_var[PRIVATEVCS_NAME_PREFIX.len()..];
            return Err(invalid(
                name_var,
                format!("is set but {}{suffix} is not", PRIVATEVCS_ENDPOINT_PREFIX),
            ));
        }
    }
    for (n, (endpoint_var, _)) in &endpoints {
        if !names.contains_key(n) {
            let suffix = &endpoint_var[PRIVATEVCS_ENDPOINT_PREFIX.len()..];
            return Err(invalid(
                endpoint_var,
                format!("is set but {}{suffix} is not", PRIVATEVCS_NAME_PREFIX),
            ));
        }
    }
    for (i, (n, (name_var, name))) in names.into_iter().enumerate() {
        let (endpoint_var, endpoint) = endpoints.remove(&n).unwrap_or_default();
        match reqwest::Url::parse(&endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            _ => {
                // Credentials in a URL are never quoted.
                let shown = if endpoint.contains('@') {
                    String::new()
                } else {
                    format!(", got {endpoint:?}")
                };
                return Err(invalid(
                    &endpoint_var,
                    format!("expected a URL with a scheme, such as https://vcs.example.com{shown}"),
                ));
            }
        }
        if usize::try_from(n).ok() != Some(i) {
            warnings.push(format!(
                "{name_var}: the mappings are not numbered 0, 1, ...; runs get this one as _{i}"
            ));
        }
        out.push(PrivateVcsMapping {
            name,
            base_endpoint: endpoint.into(),
        });
    }
    Ok((out, warnings))
}

/// `SPACELIFT_METADATA_<key>=<value>`: prefix stripped, case kept, empty keys skipped.
pub(super) fn metadata(env: &dyn EnvSource) -> BTreeMap<String, String> {
    env.vars()
        .into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(vars::METADATA.name)?;
            (!key.is_empty()).then(|| (key.to_string(), v))
        })
        .collect()
}

pub(super) fn validate_docker_host(h: &str) -> Result<(), ConfigError> {
    let ok = match h.split_once("://") {
        Some(("unix", path)) => path.starts_with('/'),
        Some(("tcp" | "http", rest)) => !rest.is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            vars::DOCKER_HOST.name,
            format!(
                "expected unix:///path/to/docker.sock or tcp://host:port, got {h:?} \
                 (TLS, ssh and named pipes are not supported)"
            ),
        ))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdditionalRootCas {
    #[serde(default)]
    ca_certificates: Vec<String>,
}

/// `ADDITIONAL_ROOT_CAS`: base64 JSON `{"caCertificates":["<base64 PEM>", ...]}`. Each entry
/// may hold several certificates. (A raw PEM instead of base64 PEM is tolerated.)
pub fn parse_additional_root_cas(text: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let var = vars::ADDITIONAL_ROOT_CAS.name;
    let json = protocol::token::decode_base64(var, text).map_err(|e| match e {
        protocol::ProtocolError::Base64 { offset, .. } => invalid(
            var,
            format!("unable to base64 decode: illegal base64 data at input byte {offset}"),
        ),
        other => invalid(var, other.to_string()),
    })?;
    let parsed: AdditionalRootCas = serde_json::from_slice(&json).map_err(|e| {
        invalid(
            var,
            format!("expected base64 of {{\"caCertificates\":[\"<base64 PEM>\"]}}: {e}"),
        )
    })?;
    let mut out = Vec::new();
    for (i, entry) in parsed.ca_certificates.iter().enumerate() {
        let pem = if entry.contains("-----BEGIN") {
            entry.as_bytes().to_vec()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(entry.trim())
                .map_err(|e| invalid(var, format!("caCertificates[{i}] is not base64: {e}")))?
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(var, format!("caCertificates[{i}] is not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(
                var,
                format!("caCertificates[{i}] holds no PEM certificate"),
            ));
        }
        out.extend(certs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_env::{err, with};
    use super::*;
    use crate::credentials::testing::{b64, TestPool};

    #[test]
    fn mounts_parse_with_scopes_and_validate_paths() {
        let c = with(&[
            (vars::EXTRA_MOUNTS.name, "/a:/b, /c:/d:ro"),
            (vars::RO_EXTRA_MOUNTS.name, "/ro:/mnt/ro"),
            (vars::WO_EXTRA_MOUNTS.name, "/wo:/mnt/wo:rw"),
        ])
        .unwrap();
        let m = &c.settings.extra_mounts;
        let got: Vec<(&str, &str, MountScope)> = m
            .iter()
            .map(|m| (m.host.as_str(), m.container.as_str(), m.applies_to))
            .collect();
        assert_eq!(
            got,
            [
                ("/a", "/b", MountScope::All),
                ("/c", "/d:ro", MountScope::All),
                ("/ro", "/mnt/ro", MountScope::ReadOnlyRuns),
                ("/wo", "/mnt/wo", MountScope::WriteRuns),
            ]
        );
        assert_eq!(
            err(&[(vars::EXTRA_MOUNTS.name, "/a:b")]),
            "SPACELIFT_WORKER_EXTRA_MOUNTS: entry \"/a:b\": the container path \"b\" must be absolute"
        );
        assert_eq!(
            err(&[(vars::RO_EXTRA_MOUNTS.name, "a:/b")]),
            "SPACELIFT_WORKER_RO_EXTRA_MOUNTS: entry \"a:/b\": the host path \"a\" must be absolute"
        );
        assert_eq!(
            err(&[(vars::WO_EXTRA_MOUNTS.name, "/a")]),
            "SPACELIFT_WORKER_WO_EXTRA_MOUNTS: entry \"/a\" is not /host/path:/container/path[:ro]"
        );
    }

    #[test]
    fn whitelist_and_mask() {
        let c = with(&[
            (
                vars::WHITELIST_ENVS.name,
                "AWS_REGION, ro_AWS_KEY, wo_AWS_KEY, ro_PLAIN, MISSING",
            ),
            ("AWS_REGION", "eu-west-1"),
            ("ro_AWS_KEY", "read-key"),
            ("wo_AWS_KEY", "write-key"),
            ("AWS_KEY", "unscoped"),
            ("PLAIN", "plain"),
            (vars::MASK_ENVS.name, "AWS_KEY"),
        ])
        .unwrap();
        let got: Vec<(&str, &str, MountScope)> = c
            .settings
            .passed_env
            .iter()
            .map(|p| (p.name.as_str(), p.value.expose_secret(), p.applies_to))
            .collect();
        assert_eq!(
            got,
            [
                ("AWS_REGION", "eu-west-1", MountScope::All),
                ("AWS_KEY", "read-key", MountScope::ReadOnlyRuns),
                ("AWS_KEY", "write-key", MountScope::WriteRuns),
                ("PLAIN", "plain", MountScope::ReadOnlyRuns),
            ]
        );
        let masked: Vec<&str> = c
            .settings
            .masked_values
            .iter()
            .map(|v| v.expose_secret())
            .collect();
        assert_eq!(masked, ["read-key", "unscoped", "write-key"]);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("MISSING is not set"),
            "{:?}",
            c.warnings
        );
        assert!(err(&[(vars::WHITELIST_ENVS.name, "A-B")])
            .starts_with("SPACELIFT_WHITELIST_ENVS: entry \"A-B\" is not a variable name"));
    }

    #[test]
    fn private_vcs_mappings_are_paired_and_validated() {
        let c = with(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_1", "gitlab-pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_1",
                "https://gitlab.internal:8443",
            ),
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "github-pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0",
                "http://ghe.internal",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.settings.private_vcs_mappings,
            [
                PrivateVcsMapping {
                    name: "github-pool".into(),
                    base_endpoint: "http://ghe.internal".into(),
                },
                PrivateVcsMapping {
                    name: "gitlab-pool".into(),
                    base_endpoint: "https://gitlab.internal:8443".into(),
                },
            ]
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(with(&[]).unwrap().settings.private_vcs_mappings.is_empty());

        assert_eq!(
            err(&[("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "pool")]),
            "SPACELIFT_PRIVATEVCS_MAPPING_NAME_0: is set but \
             SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0 is not"
        );
        assert_eq!(
            err(&[(
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_3",
                "https://vcs"
            )]),
            "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_3: is set but \
             SPACELIFT_PRIVATEVCS_MAPPING_NAME_3 is not"
        );
        assert_eq!(
            err(&[
                ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "pool"),
                (
                    "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0",
                    "vcs.internal:443"
                ),
            ]),
            "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0: expected a URL with a scheme, \
             such as https://vcs.example.com, got \"vcs.internal:443\""
        );
        let e = err(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0",
                "user:t0ken@vcs",
            ),
        ]);
        assert!(e.starts_with("SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0: expected a URL"));
        assert!(!e.contains("t0ken"), "{e}");
        assert_eq!(
            err(&[("SPACELIFT_PRIVATEVCS_MAPPING_NAME_x", "pool")]),
            "SPACELIFT_PRIVATEVCS_MAPPING_NAME_x: the suffix must be a number: _0, _1, ... \
             (one per VCS-agent pool)"
        );
        // An empty value counts as unset.
        assert!(with(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", ""),
            ("SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0", " "),
        ])
        .unwrap()
        .settings
        .private_vcs_mappings
        .is_empty());
        // A gap is renumbered, with a warning.
        let c = with(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_2", "pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_2",
                "https://vcs",
            ),
        ])
        .unwrap();
        assert_eq!(c.settings.private_vcs_mappings.len(), 1);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("as _0"), "{:?}", c.warnings);
    }

    /// Found by fuzz/ (config): with a leading zero the error named `..._NAME_8`, a
    /// variable nobody set, instead of `..._NAME_08`.
    #[test]
    fn private_vcs_errors_name_the_variable_as_spelled() {
        assert_eq!(
            err(&[("SPACELIFT_PRIVATEVCS_MAPPING_NAME_08", "pool")]),
            "SPACELIFT_PRIVATEVCS_MAPPING_NAME_08: is set but \
             SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_08 is not"
        );
        let e = err(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_01", "pool"),
            ("SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_1", "vcs"),
        ]);
        assert!(
            e.starts_with("SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_1: expected a URL"),
            "{e}"
        );
    }

    #[test]
    fn additional_root_cas() {
        let pool = TestPool::new();
        let pem = &pool.pki.ca_cert_pem;
        let json = format!(r#"{{"caCertificates":["{}"]}}"#, b64(pem));
        let c = with(&[(vars::ADDITIONAL_ROOT_CAS.name, &b64(&json))]).unwrap();
        assert_eq!(c.additional_root_cas.len(), 1);
        let e = err(&[(vars::ADDITIONAL_ROOT_CAS.name, "a*b")]);
        assert_eq!(
            e,
            "ADDITIONAL_ROOT_CAS: unable to base64 decode: illegal base64 data at input byte 1"
        );
        let e = err(&[(
            vars::ADDITIONAL_ROOT_CAS.name,
            &b64(r#"{"caCertificates":["bm90IHBlbQ=="]}"#),
        )]);
        assert_eq!(
            e,
            "ADDITIONAL_ROOT_CAS: caCertificates[0] holds no PEM certificate"
        );
        let e = err(&[(vars::ADDITIONAL_ROOT_CAS.name, &b64("[1]"))]);
        assert!(
            e.starts_with("ADDITIONAL_ROOT_CAS: expected base64 of {\"caCertificates\""),
            "{e}"
        );
    }

    /// Go's maximum duration (`protocol::duration`) bounds every duration variable.
    #[test]
    fn durations_beyond_gos_maximum_are_refused() {
        let e = err(&[(vars::RUN_TIMEOUT.name, "2562048h")]);
        assert!(
            e.starts_with("SPACELIFT_LAUNCHER_RUN_TIMEOUT: ") && e.contains("2562047h"),
            "{e}"
        );
    }
}
