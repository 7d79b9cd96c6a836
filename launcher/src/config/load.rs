//! Validation: the environment (and the command line's overrides) to a [`LauncherConfig`],
//! reading no file and making no connection; each variable is read as [`vars`] says.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::parse::{
    masked, metadata, mounts, parse_additional_root_cas, parse_u64, private_vcs_mappings,
    validate_docker_host, whitelist, Reader,
};
use super::{
    invalid, vars, ConfigError, EnvSource, LauncherConfig, LogFormat, Overrides, ProxyConfig,
};
use crate::credentials::Credentials;
use crate::interruption::{Cloud, WatchConfig};
use crate::settings::{MountScope, RunUser, Settings};

/// Builds the configuration from `env` (no command-line overrides).
pub fn load(env: &dyn EnvSource) -> Result<LauncherConfig, ConfigError> {
    load_with(env, &Overrides::default())
}

/// Builds the configuration from `env`, with command-line `overrides` winning.
/// Decodes and cross-checks the credentials; reads no file and makes no connection
/// ([`LauncherConfig::prepare`] does what needs the disk).
pub fn load_with(
    env: &dyn EnvSource,
    overrides: &Overrides,
) -> Result<LauncherConfig, ConfigError> {
    let r = Reader { env };
    let mut warnings = Vec::new();

    let token_text = r.get(vars::TOKEN.name).ok_or(ConfigError::Missing {
        var: vars::TOKEN.name,
        hint: "the base64 worker pool token from the pool's page",
    })?;
    let key_text = r
        .get(vars::POOL_PRIVATE_KEY.name)
        .ok_or(ConfigError::Missing {
            var: vars::POOL_PRIVATE_KEY.name,
            hint: "base64 -w0 of the PEM private key the pool's CSR was made with",
        })?;
    let credentials = Credentials::from_env_text(&token_text, &key_text)?;

    let capacity = match overrides.capacity {
        Some(0) => return Err(invalid("--capacity", "expected a whole number >= 1, got 0")),
        Some(c) => c,
        None => r.number::<u32>(&vars::CAPACITY)?,
    };

    let (passed_env, mut w) = whitelist(&r)?;
    warnings.append(&mut w);
    let (masked_values, mut w) = masked(&r, &passed_env);
    warnings.append(&mut w);

    let mut extra_mounts = mounts(&r, &vars::EXTRA_MOUNTS, MountScope::All)?;
    extra_mounts.extend(mounts(
        &r,
        &vars::RO_EXTRA_MOUNTS,
        MountScope::ReadOnlyRuns,
    )?);
    extra_mounts.extend(mounts(&r, &vars::WO_EXTRA_MOUNTS, MountScope::WriteRuns)?);

    let (private_vcs_mappings, mut w) = private_vcs_mappings(&r)?;
    warnings.append(&mut w);

    let docker_config_dir = r.get(vars::DOCKER_CONFIG_DIR.name).map(PathBuf::from);

    let seed = match r.get(vars::SEED.name) {
        None => rand::random::<u64>(),
        Some(s) => parse_u64(&s).ok_or_else(|| {
            invalid(
                vars::SEED.name,
                format!("expected an unsigned 64-bit integer (decimal or 0x hex), got {s:?}"),
            )
        })?,
    };

    let metrics_addr = match r.get(vars::METRICS_ADDR.name) {
        None => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
            invalid(
                vars::METRICS_ADDR.name,
                format!("expected host:port with an IP address, e.g. 127.0.0.1:9100, got {s:?}"),
            )
        })?),
    };

    let data_dir = PathBuf::from(r.text(&vars::DATA_DIR));
    if !data_dir.is_absolute() {
        return Err(invalid(
            vars::DATA_DIR.name,
            format!(
                "must be an absolute path (run containers bind-mount from it), got {:?}",
                data_dir.display().to_string()
            ),
        ));
    }

    let settings = Settings {
        capacity,
        default_runner_image: r.text(&vars::DEFAULT_RUNNER_IMAGE),
        default_ansible_runner_image: r.text(&vars::DEFAULT_ANSIBLE_RUNNER_IMAGE),
        network: r.text(&vars::NETWORK),
        runtime: r.get(vars::RUNTIME.name),
        run_user: RunUser::parse(&r.text(&vars::RUN_USER))
            .map_err(|m| invalid(vars::RUN_USER.name, m))?,
        extra_mounts,
        passed_env,
        masked_values,
        logs_timeout: r.duration(&vars::LOGS_TIMEOUT)?,
        run_timeout: r.duration(&vars::RUN_TIMEOUT)?,
        prepare_timeout: r.duration(&vars::PREPARE_TIMEOUT)?,
        output_buffer_bytes: r
            .number::<usize>(&vars::RUN_OUTPUT_BUFFER_MIB)?
            .saturating_mul(1 << 20),
        stop_grace: r.duration(&vars::STOP_GRACE)?,
        run_logs_on_stdout: r.boolean(&vars::RUN_LOGS_ON_STDOUT)?,
        debug: r.boolean(&vars::DEBUG)?,
        sensitive_output_upload: r.boolean(&vars::SENSITIVE_OUTPUT_UPLOAD)?,
        docker_config_dir,
        metadata: metadata(env),
        data_dir,
        binary_cache_keep: r.number::<usize>(&vars::BINARY_CACHE_KEEP)?,
        seed,
        metrics_addr,
        // Compiled by `LauncherConfig::prepare`.
        init_policy: None,
        private_vcs_mappings,
    };

    let docker_host = match r.get(vars::DOCKER_HOST.name) {
        None => None,
        Some(h) => {
            validate_docker_host(&h)?;
            Some(h)
        }
    };

    let log_format = {
        let s = r.text(&vars::LOG_FORMAT);
        LogFormat::parse(&s).ok_or_else(|| {
            invalid(
                vars::LOG_FORMAT.name,
                format!("expected auto, text or json, got {s:?}"),
            )
        })?
    };

    let interruption = interruption(&r)?;

    let no_proxy = vars::NO_PROXY.name;
    let proxy = ProxyConfig {
        http: r.proxy(&vars::HTTP_PROXY)?,
        https: r.proxy(&vars::HTTPS_PROXY)?,
        no_proxy: r
            .get(no_proxy)
            .or_else(|| r.get(&no_proxy.to_ascii_lowercase())),
    };

    let additional_root_cas = match r.get(vars::ADDITIONAL_ROOT_CAS.name) {
        None => Vec::new(),
        Some(text) => parse_additional_root_cas(&text)?,
    };

    Ok(LauncherConfig {
        settings,
        credentials,
        docker_host,
        log_format,
        proxy,
        additional_root_cas,
        init_policy_path: r
            .get(vars::RUN_INITIALIZATION_POLICY.name)
            .map(PathBuf::from),
        interruption,
        warnings,
    })
}

fn interruption(r: &Reader<'_>) -> Result<Option<WatchConfig>, ConfigError> {
    let word = r.text(&vars::INTERRUPTION_WATCH);
    let cloud = Cloud::parse(&word).map_err(|expected| {
        invalid(
            vars::INTERRUPTION_WATCH.name,
            format!("expected {expected}, got {word:?}"),
        )
    })?;
    let poll_interval = r.duration(&vars::INTERRUPTION_POLL_INTERVAL)?;
    let url = r.text(&vars::INTERRUPTION_METADATA_URL);
    let well_formed = reqwest::Url::parse(&url)
        .is_ok_and(|u| u.scheme() == "http" && u.has_host() && u.path() == "/");
    if !well_formed {
        return Err(invalid(
            vars::INTERRUPTION_METADATA_URL.name,
            format!("expected http://host[:port] and nothing more, got {url:?}"),
        ));
    }
    Ok(cloud.map(|cloud| WatchConfig {
        cloud,
        poll_interval,
        metadata_url: url.trim_end_matches('/').to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::test_env::{base, err, with};
    use super::*;
    use crate::config::{MapEnv, DEFAULT_ANSIBLE_RUNNER_IMAGE};

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = with(&[]).unwrap();
        let s = &c.settings;
        assert_eq!(s.capacity, 1);
        assert_eq!(
            s.default_runner_image,
            "public.ecr.aws/spacelift/runner-terraform:latest"
        );
        assert_eq!(s.network, "bridge");
        assert_eq!(s.runtime, None);
        assert!(s.extra_mounts.is_empty());
        assert!(s.passed_env.is_empty());
        assert!(s.masked_values.is_empty());
        assert_eq!(s.logs_timeout, Duration::from_secs(420));
        assert_eq!(s.output_buffer_bytes, 64 << 20);
        assert_eq!(s.run_timeout, Duration::from_secs(4200));
        assert_eq!(s.prepare_timeout, Duration::from_secs(900));
        assert_eq!(s.stop_grace, Duration::from_secs(10));
        assert!(!s.run_logs_on_stdout);
        assert!(!s.debug);
        assert_eq!(s.run_user, RunUser::SPACELIFT);
        assert_eq!(s.docker_config_dir, None);
        assert!(s.metadata.is_empty());
        assert_eq!(s.data_dir, PathBuf::from("/opt/spacelift"));
        assert_eq!(s.binary_cache_keep, 3);
        assert_eq!(s.metrics_addr, None);
        assert_eq!(c.docker_host, None);
        assert_eq!(c.log_format, LogFormat::Auto);
        assert_eq!(c.proxy, ProxyConfig::default());
        assert!(c.additional_root_cas.is_empty());
        assert!(!s.sensitive_output_upload);
        assert_eq!(s.default_ansible_runner_image, DEFAULT_ANSIBLE_RUNNER_IMAGE);
        assert_eq!(c.credentials.token.pool_ulid, "01HZY0000000000000000POOL1");
    }

    #[test]
    fn every_variable_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let c = with(&[
            (vars::CAPACITY.name, "4"),
            (vars::DEFAULT_RUNNER_IMAGE.name, "my/runner:1"),
            (vars::DEFAULT_ANSIBLE_RUNNER_IMAGE.name, "my/ansible:1"),
            (vars::NETWORK.name, "none"),
            (vars::RUNTIME.name, "runsc"),
            (vars::RUN_USER.name, "1000"),
            (vars::LOGS_TIMEOUT.name, "1h30m"),
            (vars::RUN_TIMEOUT.name, "90s"),
            (vars::PREPARE_TIMEOUT.name, "20m"),
            (vars::RUN_OUTPUT_BUFFER_MIB.name, "2"),
            (vars::STOP_GRACE.name, "1.5s"),
            (vars::RUN_LOGS_ON_STDOUT.name, "true"),
            (vars::DEBUG.name, "1"),
            (vars::SENSITIVE_OUTPUT_UPLOAD.name, "True"),
            (vars::DOCKER_CONFIG_DIR.name, dir.path().to_str().unwrap()),
            (vars::DATA_DIR.name, "/var/lib/launcher"),
            (vars::BINARY_CACHE_KEEP.name, "5"),
            (vars::SEED.name, "0x10"),
            (vars::METRICS_ADDR.name, "127.0.0.1:9100"),
            (vars::LOG_FORMAT.name, "JSON"),
            (vars::DOCKER_HOST.name, "tcp://127.0.0.1:2375"),
            ("HTTPS_PROXY", "http://proxy.local:3128"),
            ("http_proxy", "http://lower.local:3128"),
            ("NO_PROXY", "localhost,127.0.0.1"),
        ])
        .unwrap();
        let s = &c.settings;
        assert_eq!(s.capacity, 4);
        assert_eq!(s.default_runner_image, "my/runner:1");
        assert_eq!(s.default_ansible_runner_image, "my/ansible:1");
        assert_eq!(s.network, "none");
        assert_eq!(s.runtime.as_deref(), Some("runsc"));
        assert_eq!(
            s.run_user,
            RunUser {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(s.logs_timeout, Duration::from_secs(5400));
        assert_eq!(s.run_timeout, Duration::from_secs(90));
        assert_eq!(s.prepare_timeout, Duration::from_secs(1200));
        assert_eq!(s.output_buffer_bytes, 2 << 20);
        assert_eq!(s.stop_grace, Duration::from_millis(1500));
        assert!(s.run_logs_on_stdout && s.debug && s.sensitive_output_upload);
        assert_eq!(s.docker_config_dir.as_deref(), Some(dir.path()));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/launcher"));
        assert_eq!(s.binary_cache_keep, 5);
        assert_eq!(s.seed, 16);
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.docker_host.as_deref(), Some("tcp://127.0.0.1:2375"));
        assert_eq!(
            c.proxy,
            ProxyConfig {
                http: Some("http://lower.local:3128".into()),
                https: Some("http://proxy.local:3128".into()),
                no_proxy: Some("localhost,127.0.0.1".into()),
            }
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn capacity_override_wins() {
        let (mut env, _p) = base();
        env.set(vars::CAPACITY.name, "2");
        let c = load_with(&env, &Overrides { capacity: Some(8) }).unwrap();
        assert_eq!(c.settings.capacity, 8);
        let e = load_with(&env, &Overrides { capacity: Some(0) }).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--capacity: expected a whole number >= 1, got 0"
        );
    }

    #[test]
    fn required_variables_are_named() {
        let e = load(&MapEnv::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SPACELIFT_TOKEN is required but not set"),
            "{e}"
        );
        let (mut env, _p) = base();
        env.0.remove(vars::POOL_PRIVATE_KEY.name);
        let e = load(&env).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SPACELIFT_POOL_PRIVATE_KEY is required but not set"),
            "{e}"
        );
        // Empty counts as unset.
        env.set(vars::POOL_PRIVATE_KEY.name, "  ");
        assert!(matches!(
            load(&env).unwrap_err(),
            ConfigError::Missing { .. }
        ));
    }

    #[test]
    fn bad_values_name_the_variable_and_expectation() {
        assert_eq!(
            err(&[(vars::CAPACITY.name, "zero")]),
            "SPACELIFT_LAUNCHER_CAPACITY: expected a whole number >= 1, got \"zero\""
        );
        assert_eq!(
            err(&[(vars::CAPACITY.name, "0")]),
            "SPACELIFT_LAUNCHER_CAPACITY: expected a whole number >= 1, got \"0\""
        );
        assert_eq!(
            err(&[(vars::BINARY_CACHE_KEEP.name, "-1")]),
            "SPACELIFT_LAUNCHER_BINARY_CACHE_KEEP: expected a whole number >= 1, got \"-1\""
        );
        let e = err(&[(vars::LOGS_TIMEOUT.name, "7")]);
        assert!(
            e.starts_with("SPACELIFT_LAUNCHER_LOGS_TIMEOUT: expected a Go duration such as 7m, 1h30m or 90s, got \"7\""),
            "{e}"
        );
        assert!(err(&[(vars::RUN_TIMEOUT.name, "7days")])
            .starts_with("SPACELIFT_LAUNCHER_RUN_TIMEOUT: expected a Go duration"));
        assert_eq!(
            err(&[(vars::STOP_GRACE.name, "0s")]),
            "SPACELIFT_LAUNCHER_STOP_GRACE: must be positive, got \"0s\""
        );
        assert_eq!(
            err(&[(vars::DEBUG.name, "yes")]),
            "SPACELIFT_DEBUG: expected true or false (or 1/0), got \"yes\""
        );
        assert!(err(&[(vars::RUN_LOGS_ON_STDOUT.name, "on")])
            .starts_with("SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED: expected true or false"));
        assert!(err(&[(vars::SENSITIVE_OUTPUT_UPLOAD.name, "maybe")])
            .starts_with("SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED: expected true or false"));
        assert!(err(&[(vars::SEED.name, "abc")])
            .starts_with("SPACELIFT_LAUNCHER_SEED: expected an unsigned 64-bit integer"));
        assert!(err(&[(vars::METRICS_ADDR.name, "localhost")])
            .starts_with("SPACELIFT_LAUNCHER_METRICS_ADDR: expected host:port"));
        assert_eq!(
            err(&[(vars::RUN_USER.name, "spacelift")]),
            "SPACELIFT_LAUNCHER_RUN_USER: expected uid[:gid] as numbers, e.g. 1983:1983, got \"spacelift\""
        );
        assert!(err(&[(vars::RUN_USER.name, "1983:x")])
            .starts_with("SPACELIFT_LAUNCHER_RUN_USER: expected"));
        assert_eq!(
            err(&[(vars::LOG_FORMAT.name, "xml")]),
            "SPACELIFT_LAUNCHER_LOG_FORMAT: expected auto, text or json, got \"xml\""
        );
        assert_eq!(
            err(&[(vars::DATA_DIR.name, "relative/dir")]),
            "SPACELIFT_LAUNCHER_DATA_DIR: must be an absolute path (run containers bind-mount from it), got \"relative/dir\""
        );
        assert!(err(&[(vars::DOCKER_HOST.name, "ssh://h")])
            .starts_with("DOCKER_HOST: expected unix://"));
        assert!(
            err(&[(vars::DOCKER_HOST.name, "unix://relative.sock")]).starts_with("DOCKER_HOST:")
        );
        let e = err(&[("HTTPS_PROXY", "http//user:s3cret@proxy")]);
        assert!(e.starts_with("HTTPS_PROXY: expected a proxy URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn metadata_strips_prefix_keeps_case_skips_empty_key() {
        let c = with(&[
            ("SPACELIFT_METADATA_instance_id", "i-123"),
            ("SPACELIFT_METADATA_AsgId", "asg"),
            ("SPACELIFT_METADATA_", "ignored"),
            ("SPACELIFT_METADATA_empty", ""),
            ("OTHER_METADATA_x", "no"),
        ])
        .unwrap();
        let m: Vec<(&str, &str)> = c
            .settings
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            m,
            [("AsgId", "asg"), ("empty", ""), ("instance_id", "i-123")]
        );
    }

    #[test]
    fn credentials_errors_surface() {
        let e = err(&[(vars::TOKEN.name, "bad*token")]);
        assert_eq!(
            e,
            "SPACELIFT_TOKEN: unable to base64 decode: illegal base64 data at input byte 3"
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let (mut env, pool) = base();
        env.set(vars::WHITELIST_ENVS.name, "AWS_SECRET")
            .set("AWS_SECRET", "wJalrXUtnFEMI-secret")
            .set(vars::MASK_ENVS.name, "AWS_SECRET")
            .set("HTTPS_PROXY", "http://bob:pr0xy-pass@proxy.local:3128");
        let c = load(&env).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("wJalrXUtnFEMI-secret"), "{dbg}");
        assert!(!dbg.contains("pr0xy-pass"), "{dbg}");
        assert!(!dbg.contains("bob"), "{dbg}");
        for line in pool.key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!dbg.contains(line), "{dbg}");
        }
        assert!(dbg.contains("AWS_SECRET"), "{dbg}");
        assert!(dbg.contains("proxy.local"), "{dbg}");
    }

    #[test]
    fn debug_redacts_private_vcs_credentials() {
        let c = with(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "ghe-pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0",
                "https://vcs-user:vcs-pa55word@ghe.internal:8443/api",
            ),
        ])
        .unwrap();
        for dbg in [format!("{c:?}"), format!("{:?}", c.settings)] {
            assert!(!dbg.contains("vcs-pa55word"), "{dbg}");
            assert!(!dbg.contains("vcs-user"), "{dbg}");
            assert!(dbg.contains("ghe.internal:8443"), "{dbg}");
            assert!(dbg.contains("ghe-pool"), "{dbg}");
        }
    }

    #[test]
    fn interruption_watch_is_off_unless_a_cloud_is_named() {
        assert_eq!(with(&[]).unwrap().interruption, None);
        let c = with(&[
            (vars::INTERRUPTION_WATCH.name, "AWS"),
            (vars::INTERRUPTION_POLL_INTERVAL.name, "2s"),
            (
                vars::INTERRUPTION_METADATA_URL.name,
                "http://127.0.0.1:8099/",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.interruption,
            Some(WatchConfig {
                cloud: Cloud::Aws,
                poll_interval: Duration::from_secs(2),
                metadata_url: "http://127.0.0.1:8099".into(),
            })
        );
        let gcp = with(&[(vars::INTERRUPTION_WATCH.name, "gcp")]).unwrap();
        let gcp = gcp.interruption.unwrap();
        assert_eq!(gcp.metadata_url, "http://169.254.169.254");
        assert_eq!(gcp.poll_interval, Duration::from_secs(5));
        assert_eq!(
            err(&[(vars::INTERRUPTION_WATCH.name, "auto")]),
            "SPACELIFT_LAUNCHER_INTERRUPTION_WATCH: expected off, aws, gcp or azure, got \"auto\""
        );
        assert!(err(&[(
            vars::INTERRUPTION_METADATA_URL.name,
            "https://169.254.169.254/latest"
        )])
        .contains("expected http://host[:port]"));
    }
}
