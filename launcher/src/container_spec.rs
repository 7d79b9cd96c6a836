//! The run container, as a pure function of the settings, the run and the cached worker
//! binary. Everything the Docker adapter creates comes from here, so one unit test pins it.

use std::collections::BTreeMap;
use std::path::Path;

use protocol::api::RunSpec;

use crate::ports::{CachedBinary, ContainerSpec};
use crate::secret::ExposeSecret;
use crate::settings::{MountScope, Settings};

/// Where the worker binary appears inside the container: the root process under
/// Docker's init, replacing the image's ENTRYPOINT and CMD.
pub const WORKER_BINARY_PATH: &str = "/opt/spacelift/binaries/spacelift-worker";
/// The run's workspace, a fresh host directory per run owned by the run user.
pub const WORKSPACE: &str = "/mnt/workspace";
/// Where Spacelift's worker checks the repository out, inside [`WORKSPACE`].
pub const SOURCE_DIR: &str = "source";

/// `SPACELIFT_PRIVATEVCS_MAPPING_NAME_<n>`: the worker's variable for a VCS-agent pool
/// name, spelled as the launcher's own (config reads the launcher's under these names).
pub const PRIVATEVCS_NAME_PREFIX: &str = "SPACELIFT_PRIVATEVCS_MAPPING_NAME_";
/// `SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_<n>`: the URL that pool's VCS is reached at.
pub const PRIVATEVCS_ENDPOINT_PREFIX: &str = "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_";

/// Run env under this prefix is dropped: only the operator configures private-VCS
/// mappings, so a stack cannot add an index beyond theirs and steer the worker's VCS
/// traffic (`SPACELIFT_PRIVATEVCS_MAPPING_{NAME,BASE_ENDPOINT}_<n>`).
const PRIVATEVCS_RUN_ENV_PREFIX: &str = "SPACELIFT_PRIVATEVCS_MAPPING_";

/// Labels on every run container, so a restarted launcher can find what it left behind.
pub mod labels {
    pub const RUN_ID: &str = "workers.spacelift.io/run-id";
    pub const WORKER: &str = "workers.spacelift.io/worker";
    pub const POOL: &str = "workers.spacelift.io/pool";
    pub const LAUNCHER: &str = "workers.spacelift.io/launcher";
}

/// Who this launcher is: the worker identity from registration plus a per-process id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub worker_ulid: String,
    pub pool_ulid: String,
    /// Per-process launcher instance id (tells two launcher processes of a worker apart).
    pub launcher_id: String,
}

/// `spacelift-<run ulid lowercase>`: unique per run, so Docker itself refuses a second
/// container for a run (a last line of defence against starting it twice).
pub fn container_name(run_ulid: &str) -> String {
    format!("spacelift-{}", run_ulid.to_ascii_lowercase())
}

fn applies(scope: MountScope, read_only_run: bool) -> bool {
    match scope {
        MountScope::All => true,
        MountScope::ReadOnlyRuns => read_only_run,
        MountScope::WriteRuns => !read_only_run,
    }
}

pub fn build(
    settings: &Settings,
    run: &RunSpec,
    image: &str,
    binary: &CachedBinary,
    workspace: &Path,
    ids: &Ids,
) -> ContainerSpec {
    let read_only = run.run_type.is_read_only();

    // Precedence, lowest first: the launcher's allow-listed env, the stack's own env (more
    // specific), then the operator's private-VCS mappings (a stack can neither redirect
    // its VCS traffic nor add mappings: it cannot set any) and the identity variables, so
    // a run cannot impersonate another.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for p in &settings.passed_env {
        if applies(p.applies_to, read_only) {
            env.insert(p.name.clone(), p.value.expose_secret().to_string());
        }
    }
    for (k, v) in run
        .env
        .iter()
        .filter(|(k, _)| !k.starts_with(PRIVATEVCS_RUN_ENV_PREFIX))
    {
        env.insert(k.clone(), v.clone());
    }
    for (i, m) in settings.private_vcs_mappings.iter().enumerate() {
        env.insert(format!("{PRIVATEVCS_NAME_PREFIX}{i}"), m.name.clone());
        env.insert(
            format!("{PRIVATEVCS_ENDPOINT_PREFIX}{i}"),
            m.base_endpoint.expose_secret().to_string(),
        );
    }
    // The operator's worker switches: a stack cannot turn on sensitive output upload.
    env.insert(
        "SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED".into(),
        settings.sensitive_output_upload.to_string(),
    );
    env.insert("SPACELIFT_DEBUG".into(), settings.debug.to_string());
    env.insert("SPACELIFT_RUN_ULID".into(), run.run_ulid.clone());
    env.insert("SPACELIFT_WORKER_ULID".into(), ids.worker_ulid.clone());
    env.insert("SPACELIFT_POOL_ULID".into(), ids.pool_ulid.clone());

    let mut binds = vec![
        format!("{}:{}:ro", binary.path.display(), WORKER_BINARY_PATH),
        format!("{}:{}", workspace.display(), WORKSPACE),
    ];
    binds.extend(
        settings
            .extra_mounts
            .iter()
            .filter(|m| applies(m.applies_to, read_only))
            .map(|m| format!("{}:{}", m.host, m.container)),
    );

    let labels = BTreeMap::from([
        (labels::RUN_ID.to_string(), run.run_ulid.clone()),
        (labels::WORKER.to_string(), ids.worker_ulid.clone()),
        (labels::POOL.to_string(), ids.pool_ulid.clone()),
        (labels::LAUNCHER.to_string(), ids.launcher_id.clone()),
    ]);

    ContainerSpec {
        name: container_name(&run.run_ulid),
        image: image.to_string(),
        entrypoint: vec![WORKER_BINARY_PATH.to_string()],
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        labels,
        binds,
        network: settings.network.clone(),
        runtime: settings.runtime.clone(),
        working_dir: WORKSPACE.to_string(),
        user: settings.run_user.to_string(),
        init: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{ExtraMount, PassedEnv, PrivateVcsMapping};
    use protocol::api::RunType;
    use std::path::PathBuf;

    fn settings() -> Settings {
        let mut s = Settings::isolated(PathBuf::from("/data"));
        s.network = "bridge".into();
        s.runtime = Some("runsc".into());
        let pe = |name: &str, scope| PassedEnv {
            name: name.into(),
            value: format!("{name}-value").into(),
            applies_to: scope,
        };
        s.passed_env = vec![
            pe("HTTPS_PROXY", MountScope::All),
            pe("RO_ONLY", MountScope::ReadOnlyRuns),
            pe("WO_ONLY", MountScope::WriteRuns),
        ];
        let m = |host: &str, scope| ExtraMount {
            host: host.into(),
            container: format!("/mnt{host}"),
            applies_to: scope,
        };
        s.extra_mounts = vec![
            m("/all", MountScope::All),
            m("/ro", MountScope::ReadOnlyRuns),
            m("/wo", MountScope::WriteRuns),
        ];
        s
    }

    fn run(run_type: RunType) -> RunSpec {
        RunSpec {
            run_ulid: "01HRUNULIDABCDEF".into(),
            stack_id: "stack".into(),
            run_type,
            image: Some("img:1".into()),
            env: BTreeMap::from([
                ("TF_VAR_x".to_string(), "1".to_string()),
                // A run cannot impersonate another run or worker.
                ("SPACELIFT_RUN_ULID".to_string(), "spoofed".to_string()),
            ]),
            vendor: None,
        }
    }

    fn ids() -> Ids {
        Ids {
            worker_ulid: "W1".into(),
            pool_ulid: "P1".into(),
            launcher_id: "L1".into(),
        }
    }

    const WS: &str = "/data/workspaces/spacelift-01hrunulidabcdef";

    fn binary() -> CachedBinary {
        CachedBinary {
            version: "1.2.3".into(),
            sha256: "ab".into(),
            path: PathBuf::from("/data/binaries/ab/spacelift-worker"),
        }
    }

    #[test]
    fn identity_entrypoint_binds_and_labels() {
        let spec = build(
            &settings(),
            &run(RunType::Tracked),
            "img:1",
            &binary(),
            Path::new(WS),
            &ids(),
        );
        assert_eq!(spec.name, "spacelift-01hrunulidabcdef");
        assert_eq!(spec.image, "img:1");
        assert_eq!(spec.entrypoint, vec![WORKER_BINARY_PATH.to_string()]);
        assert_eq!(spec.working_dir, "/mnt/workspace");
        assert_eq!(spec.network, "bridge");
        assert_eq!(spec.runtime.as_deref(), Some("runsc"));
        assert_eq!(
            spec.binds[0],
            "/data/binaries/ab/spacelift-worker:/opt/spacelift/binaries/spacelift-worker:ro"
        );
        assert_eq!(
            spec.binds[1],
            "/data/workspaces/spacelift-01hrunulidabcdef:/mnt/workspace"
        );
        // Spacelift's user by default, under Docker's init.
        assert_eq!(spec.user, "1983:1983");
        assert!(spec.init);
        assert_eq!(
            spec.labels,
            BTreeMap::from([
                (labels::RUN_ID.to_string(), "01HRUNULIDABCDEF".to_string()),
                (labels::WORKER.to_string(), "W1".to_string()),
                (labels::POOL.to_string(), "P1".to_string()),
                (labels::LAUNCHER.to_string(), "L1".to_string()),
            ])
        );
        assert!(spec
            .env
            .contains(&"SPACELIFT_RUN_ULID=01HRUNULIDABCDEF".to_string()));
        assert!(!spec.env.iter().any(|e| e.contains("spoofed")));
        assert!(spec.env.contains(&"SPACELIFT_WORKER_ULID=W1".to_string()));
        assert!(spec.env.contains(&"SPACELIFT_POOL_ULID=P1".to_string()));
        assert!(spec.env.contains(&"TF_VAR_x=1".to_string()));
    }

    #[test]
    fn write_runs_get_write_env_and_mounts_only() {
        let spec = build(
            &settings(),
            &run(RunType::Tracked),
            "img:1",
            &binary(),
            Path::new(WS),
            &ids(),
        );
        assert!(spec
            .env
            .contains(&"HTTPS_PROXY=HTTPS_PROXY-value".to_string()));
        assert!(spec.env.contains(&"WO_ONLY=WO_ONLY-value".to_string()));
        assert!(!spec.env.iter().any(|e| e.starts_with("RO_ONLY=")));
        assert_eq!(spec.binds[2..], ["/all:/mnt/all", "/wo:/mnt/wo"]);
    }

    #[test]
    fn read_only_runs_get_read_only_env_and_mounts_only() {
        for t in [RunType::Proposed, RunType::Module] {
            let spec = build(
                &settings(),
                &run(t),
                "img:1",
                &binary(),
                Path::new(WS),
                &ids(),
            );
            assert!(spec.env.contains(&"RO_ONLY=RO_ONLY-value".to_string()));
            assert!(spec
                .env
                .contains(&"HTTPS_PROXY=HTTPS_PROXY-value".to_string()));
            assert!(!spec.env.iter().any(|e| e.starts_with("WO_ONLY=")));
            assert_eq!(spec.binds[2..], ["/all:/mnt/all", "/ro:/mnt/ro"]);
        }
    }

    #[test]
    fn private_vcs_mappings_reach_every_run_and_win_over_the_stack() {
        let mut s = settings();
        s.private_vcs_mappings = vec![
            PrivateVcsMapping {
                name: "github-pool".into(),
                base_endpoint: "http://ghe.internal".into(),
            },
            PrivateVcsMapping {
                name: "gitlab-pool".into(),
                base_endpoint: "https://gitlab.internal:8443".into(),
            },
        ];
        for t in [RunType::Proposed, RunType::Tracked, RunType::Task] {
            let mut r = run(t);
            r.env.insert(
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0".into(),
                "http://attacker".into(),
            );
            let spec = build(&s, &r, "img:1", &binary(), Path::new(WS), &ids());
            for want in [
                "SPACELIFT_PRIVATEVCS_MAPPING_NAME_0=github-pool",
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0=http://ghe.internal",
                "SPACELIFT_PRIVATEVCS_MAPPING_NAME_1=gitlab-pool",
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_1=https://gitlab.internal:8443",
            ] {
                assert!(
                    spec.env.contains(&want.to_string()),
                    "{want}: {:?}",
                    spec.env
                );
            }
            assert!(!spec.env.iter().any(|e| e.contains("attacker")));
        }
        // None configured: none passed.
        let mut r = run(RunType::Tracked);
        r.env.insert(
            "SPACELIFT_PRIVATEVCS_MAPPING_NAME_0".into(),
            "attacker-pool".into(),
        );
        let spec = build(&settings(), &r, "img:1", &binary(), Path::new(WS), &ids());
        assert!(!spec
            .env
            .iter()
            .any(|e| e.starts_with("SPACELIFT_PRIVATEVCS_")));

        let spec = build(
            &settings(),
            &run(RunType::Tracked),
            "img:1",
            &binary(),
            Path::new(WS),
            &ids(),
        );
        assert!(!spec
            .env
            .iter()
            .any(|e| e.starts_with("SPACELIFT_PRIVATEVCS_")));
    }

    #[test]
    fn debug_never_shows_env_values() {
        let mut s = settings();
        s.passed_env = vec![PassedEnv {
            name: "TF_VAR_db_password".into(),
            value: "passed-s3cret-value".into(),
            applies_to: MountScope::All,
        }];
        let mut r = run(RunType::Tracked);
        r.env
            .insert("STACK_SECRET".into(), "stack-s3cret-value".into());
        let spec = build(&s, &r, "img", &binary(), Path::new(WS), &ids());
        for dbg in [format!("{spec:?}"), format!("{spec:#?}")] {
            assert!(!dbg.contains("passed-s3cret-value"), "{dbg}");
            assert!(!dbg.contains("stack-s3cret-value"), "{dbg}");
            // The names help an operator and are not secret.
            assert!(dbg.contains("TF_VAR_db_password"), "{dbg}");
        }
    }

    #[test]
    fn run_user_is_configurable() {
        let mut s = settings();
        s.run_user = crate::settings::RunUser { uid: 0, gid: 0 };
        let spec = build(
            &s,
            &run(RunType::Tracked),
            "img:1",
            &binary(),
            Path::new(WS),
            &ids(),
        );
        assert_eq!(spec.user, "0:0");
    }

    /// The operator's worker switches reach every run, and a stack cannot flip them
    /// (sensitive output upload is the operator's call).
    #[test]
    fn worker_switches_reach_the_worker_and_win_over_the_stack() {
        let mut s = settings();
        let mut r = run(RunType::Tracked);
        r.env.insert(
            "SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED".into(),
            "true".into(),
        );
        r.env.insert("SPACELIFT_DEBUG".into(), "true".into());
        let spec = build(&s, &r, "img:1", &binary(), Path::new(WS), &ids());
        assert!(spec
            .env
            .contains(&"SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED=false".to_string()));
        assert!(spec.env.contains(&"SPACELIFT_DEBUG=false".to_string()));
        s.sensitive_output_upload = true;
        s.debug = true;
        for t in [RunType::Proposed, RunType::Tracked] {
            let spec = build(&s, &run(t), "img:1", &binary(), Path::new(WS), &ids());
            assert!(spec
                .env
                .contains(&"SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED=true".to_string()));
            assert!(spec.env.contains(&"SPACELIFT_DEBUG=true".to_string()));
        }
    }

    /// The stack cannot add mappings beyond the operator's: any run env under the
    /// private-VCS prefix is dropped, whatever its index.
    #[test]
    fn run_env_cannot_add_private_vcs_mappings() {
        let mut s = settings();
        s.private_vcs_mappings = vec![PrivateVcsMapping {
            name: "github-pool".into(),
            base_endpoint: "http://ghe.internal".into(),
        }];
        let mut r = run(RunType::Tracked);
        for (k, v) in [
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_5", "evil-pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_5",
                "http://attacker",
            ),
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_x", "evil-pool"),
        ] {
            r.env.insert(k.into(), v.into());
        }
        let spec = build(&s, &r, "img:1", &binary(), Path::new(WS), &ids());
        let vcs: Vec<&String> = spec
            .env
            .iter()
            .filter(|e| e.starts_with("SPACELIFT_PRIVATEVCS_"))
            .collect();
        assert_eq!(
            vcs,
            [
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0=http://ghe.internal",
                "SPACELIFT_PRIVATEVCS_MAPPING_NAME_0=github-pool",
            ]
        );
        assert!(spec.env.contains(&"TF_VAR_x=1".to_string()));
    }
}
