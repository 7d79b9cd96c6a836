//! The one table of the launcher's environment variables: each one's name, what happens
//! when it is unset, its `--help` text and how its value is read. `--help`, the loader's
//! defaults and the docs check (docs/operations.md) all come from here.

use crate::container_spec::{PRIVATEVCS_ENDPOINT_PREFIX, PRIVATEVCS_NAME_PREFIX};
use crate::credentials::{KEY_VAR, TOKEN_VAR};

/// One variable (or, for [`Kind::Family`], a family of variables sharing a prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// The variable's name; for a family, the prefix its members share.
    pub name: &'static str,
    /// What `--help` shows after the name for a family (`<n>`, `<key>=<value>`).
    pub suffix: &'static str,
    pub unset: WhenUnset,
    /// More words for the parenthesis after the name (`--capacity overrides`).
    pub note: &'static str,
    /// The help text, one line per line. Empty: this variable shares the heading line and
    /// help of the entry after it (`SPACELIFT_WORKER_RO_EXTRA_MOUNTS, ..._WO_...`).
    pub help: &'static str,
    pub kind: Kind,
}

/// What an unset (or empty) variable means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnset {
    /// The launcher refuses to start.
    Required,
    /// Nothing: the feature is off, the list empty.
    Nothing,
    /// This value, written as an operator would write it (parsed by the loader).
    Value(&'static str),
    /// What happens, in words (no value stands for it).
    Described(&'static str),
}

/// How the loader reads the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Base64 credentials (`credentials`).
    Credential,
    /// Go's `strconv.ParseBool` spellings.
    Bool,
    /// A positive Go duration (`protocol::duration`).
    Duration,
    /// A whole number at least `min`.
    Number { min: u64 },
    /// Free text (an image, a network, a runtime, a list of hosts).
    Text,
    /// A path (the data directory must be absolute).
    Path,
    /// A comma list of variable names.
    Names,
    /// A comma list of `/host:/container[:ro]` bind mounts.
    Mounts,
    /// Every variable whose name starts with `name`.
    Family,
    /// A URL (a proxy, with its credentials never quoted).
    Url,
    /// `ip:port`.
    SocketAddr,
    /// An unsigned 64-bit integer, decimal or `0x` hex.
    Seed,
    /// One of a few words.
    Choice,
    /// `uid[:gid]`, numeric (`settings::RunUser`).
    User,
    /// `unix:///path` or `tcp://host:port`.
    DockerHost,
    /// base64 JSON of PEM certificates.
    Certificates,
}

const fn var(name: &'static str, unset: WhenUnset, kind: Kind, help: &'static str) -> Var {
    Var {
        name,
        suffix: "",
        unset,
        note: "",
        help,
        kind,
    }
}

use Kind::*;
use WhenUnset::{Described, Nothing, Required, Value};

pub const TOKEN: Var = var(
    TOKEN_VAR,
    Required,
    Credential,
    "The worker pool's token (base64 of the worker-pool-<id>.config file).",
);
pub const POOL_PRIVATE_KEY: Var = var(
    KEY_VAR,
    Required,
    Credential,
    "The pool's private key: the whole PEM file base64-encoded on one line\n\
     (base64 -w0 spacelift.key). PKCS#8 or PKCS#1 RSA, or an EC key. Must match\n\
     the certificate in SPACELIFT_TOKEN.",
);
pub const MASK_ENVS: Var = var(
    "SPACELIFT_MASK_ENVS",
    Nothing,
    Names,
    "Comma list of whitelisted variables whose values are masked (*****) in run logs.",
);
pub const SENSITIVE_OUTPUT_UPLOAD: Var = var(
    "SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED",
    Value("false"),
    Bool,
    "Let the worker upload sensitive outputs; passed to the worker (true or false), over\n\
     any value a stack sets.",
);
pub const DEBUG: Var = var(
    "SPACELIFT_DEBUG",
    Value("false"),
    Bool,
    "Log the launcher's own debug events (Docker calls and their results, run state\n\
     changes, MQTT messages by id). Never values: dependencies (bollard, hyper, reqwest,\n\
     rustls, rumqttc) stay at info, even under RUST_LOG, as they log whole requests.\n\
     Also passed to the worker (true or false).",
);
pub const RUN_LOGS_ON_STDOUT: Var = var(
    "SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED",
    Value("false"),
    Bool,
    "Also print run logs on standard output, structured (run_ulid, stack_id, ts, msg).",
);
pub const RUN_INITIALIZATION_POLICY: Var = var(
    "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY",
    Nothing,
    Path,
    "Path of a Rego initialization policy (package spacelift with deny[msg] and/or sample\n\
     rules; Rego v0 or v1), compiled at startup: an unreadable or invalid policy, or one\n\
     with neither rule, stops the launcher. Before each run's image is pulled,\n\
     data.spacelift.deny and data.spacelift.sample are evaluated with input\n\
     {run: {id, type}, static_run_environment: {run_ulid, run_type, stack_slug},\n\
     docker_image, worker_version} (type: PROPOSED, TRACKED, TASK, DESTROY, TESTING).\n\
     Any deny message (or an evaluation error) fails the run, reason\n\
     initialization_policy_denied; no container is created. No deny rule: every run is\n\
     allowed. sample true: that input and the deny messages are sent to the backend (the\n\
     input holds no environment values or credentials). exec() is not available.",
);
pub const LOGS_TIMEOUT: Var = var(
    "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
    Value("7m"),
    Duration,
    "Go duration: a run that prints nothing for this long is killed.",
);
pub const RUN_TIMEOUT: Var = var(
    "SPACELIFT_LAUNCHER_RUN_TIMEOUT",
    Value("70m"),
    Duration,
    "Go duration: the longest a run may take.",
);
pub const PREPARE_TIMEOUT: Var = var(
    "SPACELIFT_LAUNCHER_PREPARE_TIMEOUT",
    Value("15m"),
    Duration,
    "Go duration: the longest a run may spend preparing (worker binary download,\n\
     initialization policy, image pull) before its container is created; past it the\n\
     run ends timed_out, reason prepare_timeout, and no container is created.",
);
pub const RUN_OUTPUT_BUFFER_MIB: Var = var(
    "SPACELIFT_LAUNCHER_RUN_OUTPUT_BUFFER_MIB",
    Value("64"),
    Number { min: 1 },
    "Run output (MiB, per run) held while the backend is slow or away; beyond it the\n\
     launcher stops reading the run's output (Docker keeps it) until room frees.",
);
pub const DOCKER_CONFIG_DIR: Var = var(
    "SPACELIFT_DOCKER_CONFIG_DIR",
    Nothing,
    Path,
    "Directory holding a Docker config.json (from docker login) with registry credentials.\n\
     As the docker CLI: credHelpers[registry], else credsStore, names a helper\n\
     docker-credential-<name> run from the launcher's PATH (30s limit, output never\n\
     logged); else the auths entry. A missing or failing helper fails the pull.",
);
pub const WHITELIST_ENVS: Var = var(
    "SPACELIFT_WHITELIST_ENVS",
    Nothing,
    Names,
    "Comma list of launcher variables passed to runs. An entry ro_NAME (wo_NAME) is passed\n\
     as NAME to read-only (write) runs only; its value is the launcher's variable ro_NAME\n\
     (wo_NAME) if set, else NAME. Read-only runs are proposed runs and module tests.",
);
pub const EXTRA_MOUNTS: Var = var(
    "SPACELIFT_WORKER_EXTRA_MOUNTS",
    Nothing,
    Mounts,
    "Comma list of /host:/container[:ro] bind mounts for every run. Host paths are on\n\
     the Docker daemon's filesystem. Both paths must be absolute.",
);
pub const RO_EXTRA_MOUNTS: Var = var("SPACELIFT_WORKER_RO_EXTRA_MOUNTS", Nothing, Mounts, "");
pub const WO_EXTRA_MOUNTS: Var = var(
    "SPACELIFT_WORKER_WO_EXTRA_MOUNTS",
    Nothing,
    Mounts,
    "The same, for read-only runs only / write runs only.",
);
pub const NETWORK: Var = var(
    "SPACELIFT_WORKER_NETWORK",
    Value("bridge"),
    Text,
    "Docker network of run containers.",
);
pub const RUNTIME: Var = var(
    "SPACELIFT_WORKER_RUNTIME",
    Described("the daemon's default runtime"),
    Text,
    "OCI runtime of run containers, e.g. runsc.",
);
pub const RUN_USER: Var = var(
    "SPACELIFT_LAUNCHER_RUN_USER",
    Value("1983:1983"),
    User,
    "uid[:gid] (numbers) the worker runs as in run containers, and owner of the run's\n\
     workspace (/mnt/workspace). Spacelift's: user spacelift, 1983. Unless the launcher\n\
     runs as root, it must be the launcher's own uid (it cannot chown).",
);
pub const DEFAULT_RUNNER_IMAGE: Var = var(
    "SPACELIFT_DEFAULT_RUNNER_IMAGE",
    Value(crate::DEFAULT_RUNNER_IMAGE),
    Text,
    "Runner image for stacks that set none.",
);
pub const DEFAULT_ANSIBLE_RUNNER_IMAGE: Var = var(
    "SPACELIFT_DEFAULT_ANSIBLE_RUNNER_IMAGE",
    Value(super::DEFAULT_ANSIBLE_RUNNER_IMAGE),
    Text,
    "Runner image for Ansible stacks that set none (the backend says a run's stack is \
     Ansible with the run spec's vendor).",
);
pub const METADATA: Var = Var {
    suffix: "<key>=<value>",
    ..var(
        "SPACELIFT_METADATA_",
        Nothing,
        Family,
        "Worker metadata {<key>: <value>} shown in the Workers tab (key keeps its case).",
    )
};
pub const PRIVATEVCS_NAME: Var = Var {
    suffix: "<n>",
    ..var(PRIVATEVCS_NAME_PREFIX, Nothing, Family, "")
};
pub const PRIVATEVCS_ENDPOINT: Var = Var {
    suffix: "<n>",
    ..var(
        PRIVATEVCS_ENDPOINT_PREFIX,
        Nothing,
        Family,
        "(n = 0, 1, ...) Map a VCS-agent pool name to a URL (http:// or https://) the worker\n\
         reaches the VCS at directly. Each NAME_<n> needs its BASE_ENDPOINT_<n> and vice\n\
         versa. Passed to every run, renumbered from 0 in the order of <n>.",
    )
};
pub const DOCKER_HOST: Var = var(
    "DOCKER_HOST",
    // Not parsed by the loader: the Docker adapter's own default when unset.
    Value("unix:///var/run/docker.sock"),
    DockerHost,
    "Docker daemon: unix:///path/to/docker.sock or tcp://host:port (plain HTTP).",
);
/// The proxies: the upper-case spelling wins over the lower-case one.
pub const HTTP_PROXY: Var = var("HTTP_PROXY", Nothing, Url, "");
pub const HTTPS_PROXY: Var = var("HTTPS_PROXY", Nothing, Url, "");
pub const NO_PROXY: Var = Var {
    note: "or lower case",
    ..var(
        "NO_PROXY",
        Nothing,
        Text,
        "Proxies for the launcher's HTTPS calls (not for MQTT).",
    )
};
pub const ADDITIONAL_ROOT_CAS: Var = var(
    "ADDITIONAL_ROOT_CAS",
    Nothing,
    Certificates,
    "base64 of {\"caCertificates\":[\"<base64 PEM>\", ...]}: extra CAs trusted for the\n\
     backend's HTTPS and MQTT servers.",
);
pub const CAPACITY: Var = Var {
    note: "--capacity overrides",
    ..var(
        "SPACELIFT_LAUNCHER_CAPACITY",
        Value("1"),
        Number { min: 1 },
        "Runs this launcher takes at once.",
    )
};
pub const STOP_GRACE: Var = var(
    "SPACELIFT_LAUNCHER_STOP_GRACE",
    Value("10s"),
    Duration,
    "Go duration between SIGTERM and SIGKILL when stopping a run's container.",
);
pub const INTERRUPTION_WATCH: Var = var(
    "SPACELIFT_LAUNCHER_INTERRUPTION_WATCH",
    Value("off"),
    Choice,
    "off, aws, gcp or azure: poll that cloud's metadata service for a spot / preemptible\n\
     interruption notice. On one: take no new runs, report it in heartbeats, stop runs\n\
     still going a stop grace + 10s before the deadline (failed, spot_interruption),\n\
     exit 0 when idle. No auto-detection: name the cloud the pool's machines run on.",
);
pub const INTERRUPTION_POLL_INTERVAL: Var = var(
    "SPACELIFT_LAUNCHER_INTERRUPTION_POLL_INTERVAL",
    Value("5s"),
    Duration,
    "Go duration between two reads of the interruption notice.",
);
pub const INTERRUPTION_METADATA_URL: Var = var(
    "SPACELIFT_LAUNCHER_INTERRUPTION_METADATA_URL",
    Value("http://169.254.169.254"),
    Text,
    "The metadata service's http:// address (tests point it at a fake one).",
);
pub const DATA_DIR: Var = var(
    "SPACELIFT_LAUNCHER_DATA_DIR",
    Value("/opt/spacelift"),
    Path,
    "Worker-binary cache and launcher state. The Docker daemon must see the same path.",
);
pub const BINARY_CACHE_KEEP: Var = var(
    "SPACELIFT_LAUNCHER_BINARY_CACHE_KEEP",
    Value("3"),
    Number { min: 1 },
    "Worker-binary versions kept in the cache (plus any in use).",
);
pub const SEED: Var = var(
    "SPACELIFT_LAUNCHER_SEED",
    Described("random"),
    Seed,
    "Seed of the launcher's RNG (backoff jitter), so simulations replay.",
);
pub const METRICS_ADDR: Var = var(
    "SPACELIFT_LAUNCHER_METRICS_ADDR",
    Described("off"),
    SocketAddr,
    "host:port serving /metrics and /healthz.",
);
pub const LOG_FORMAT: Var = var(
    "SPACELIFT_LAUNCHER_LOG_FORMAT",
    Value("auto"),
    Choice,
    "auto, text or json. auto: text when standard error is a terminal, JSON lines\n\
     otherwise. JSON lines: ts (RFC 3339 UTC), level (debug, info, warn, error), msg,\n\
     caller (file:line), then the event's own fields (run_ulid, ...). In every format\n\
     warn and error go to standard error, info and debug to standard output. Text is\n\
     coloured only when both standard streams are terminals. RUST_LOG\n\
     (e.g. launcher::run=trace) overrides levels.",
);

/// Every variable, in `--help` order.
pub const ALL: &[Var] = &[
    TOKEN,
    POOL_PRIVATE_KEY,
    MASK_ENVS,
    SENSITIVE_OUTPUT_UPLOAD,
    DEBUG,
    RUN_LOGS_ON_STDOUT,
    RUN_INITIALIZATION_POLICY,
    LOGS_TIMEOUT,
    RUN_TIMEOUT,
    PREPARE_TIMEOUT,
    RUN_OUTPUT_BUFFER_MIB,
    DOCKER_CONFIG_DIR,
    WHITELIST_ENVS,
    EXTRA_MOUNTS,
    RO_EXTRA_MOUNTS,
    WO_EXTRA_MOUNTS,
    NETWORK,
    RUNTIME,
    RUN_USER,
    DEFAULT_RUNNER_IMAGE,
    DEFAULT_ANSIBLE_RUNNER_IMAGE,
    METADATA,
    PRIVATEVCS_NAME,
    PRIVATEVCS_ENDPOINT,
    DOCKER_HOST,
    HTTP_PROXY,
    HTTPS_PROXY,
    NO_PROXY,
    ADDITIONAL_ROOT_CAS,
    CAPACITY,
    STOP_GRACE,
    INTERRUPTION_WATCH,
    INTERRUPTION_POLL_INTERVAL,
    INTERRUPTION_METADATA_URL,
    DATA_DIR,
    BINARY_CACHE_KEEP,
    SEED,
    METRICS_ADDR,
    LOG_FORMAT,
];

impl Var {
    /// The value used when unset. Only for variables with a [`WhenUnset::Value`]: the
    /// table's defaults are checked by the config tests, so a miss is a programming error.
    pub(crate) fn default_value(&self) -> &'static str {
        match self.unset {
            Value(v) => v,
            other => unreachable!("{} has no default value ({other:?})", self.name),
        }
    }

    /// The name as `--help` and the docs show it (`SPACELIFT_METADATA_<key>=<value>`).
    pub fn shown_name(&self) -> String {
        format!("{}{}", self.name, self.suffix)
    }

    /// The words in the parenthesis after the name: `required`, `default 7m`, `default:
    /// random`, plus the note; empty when there are none.
    pub fn unset_text(&self) -> String {
        let unset = match self.unset {
            Required => "required".to_string(),
            Nothing => String::new(),
            Value(v) => format!("default {v}"),
            Described(d) => format!("default: {d}"),
        };
        [unset.as_str(), self.note]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The `ENVIRONMENT` section of `--help`, rendered from [`ALL`].
pub fn render_help() -> String {
    let mut out = String::from("ENVIRONMENT\n");
    let mut names: Vec<String> = Vec::new();
    for v in ALL {
        names.push(v.shown_name());
        if v.help.is_empty() {
            continue;
        }
        let paren = v.unset_text();
        out.push_str("  ");
        out.push_str(&names.join(", "));
        if !paren.is_empty() {
            out.push_str(&format!(" ({paren})"));
        }
        out.push('\n');
        for line in v.help.lines() {
            out.push_str("      ");
            out.push_str(line);
            out.push('\n');
        }
        names.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::super::{load, EnvSource, MapEnv};
    use super::*;
    use crate::credentials::testing::{b64, TestPool};

    /// An environment that records which variables were asked for.
    struct Recording {
        env: MapEnv,
        asked: RefCell<BTreeSet<String>>,
    }

    impl EnvSource for Recording {
        fn var(&self, name: &str) -> Option<String> {
            self.asked.borrow_mut().insert(name.to_string());
            self.env.var(name)
        }
        fn vars(&self) -> Vec<(String, String)> {
            self.env.vars()
        }
    }

    #[test]
    fn help_lists_every_variable() {
        let help = crate::config::env_help();
        for v in ALL {
            assert!(
                help.contains(&v.shown_name()),
                "{} missing from --help",
                v.name
            );
        }
        assert!(help.contains("HTTP_PROXY, HTTPS_PROXY, NO_PROXY (or lower case)"));
        assert!(help.contains("SPACELIFT_LAUNCHER_CAPACITY (default 1; --capacity overrides)"));
    }

    /// The table is the whole list: the loader asks for no variable outside it (but the
    /// proxies' lower-case spellings) and for every variable in it (families are scanned).
    #[test]
    fn the_loader_reads_exactly_the_table() {
        let pool = TestPool::new();
        let env = Recording {
            env: MapEnv::new([
                (
                    TOKEN.name,
                    pool.token("mqtts://127.0.0.1:8883", "https://127.0.0.1:8443"),
                ),
                (POOL_PRIVATE_KEY.name, b64(&pool.key_pem)),
            ]),
            asked: RefCell::default(),
        };
        load(&env).unwrap();
        let asked = env.asked.into_inner();
        let table: BTreeSet<String> = ALL
            .iter()
            .filter(|v| v.kind != Kind::Family)
            .map(|v| v.name.to_string())
            .collect();
        let lower_case: BTreeSet<String> = [HTTP_PROXY, HTTPS_PROXY, NO_PROXY]
            .iter()
            .map(|v| v.name.to_ascii_lowercase())
            .collect();
        let outside: Vec<&String> = asked
            .iter()
            .filter(|n| !table.contains(*n) && !lower_case.contains(*n))
            .collect();
        assert!(outside.is_empty(), "read but not in vars::ALL: {outside:?}");
        let unread: Vec<&String> = table.difference(&asked).collect();
        assert!(unread.is_empty(), "in vars::ALL but never read: {unread:?}");
    }

    #[test]
    fn names_are_unique_and_defaults_parse() {
        let mut names = BTreeSet::new();
        for v in ALL {
            assert!(names.insert(v.name), "{} twice", v.name);
            let WhenUnset::Value(d) = v.unset else {
                continue;
            };
            match v.kind {
                Kind::Duration => assert!(protocol::duration::parse_go_duration(d).is_ok()),
                Kind::Number { min } => assert!(d.parse::<u64>().unwrap() >= min),
                Kind::Bool => assert!(super::super::parse_bool(d).is_some()),
                Kind::User => assert!(crate::settings::RunUser::parse(d).is_ok()),
                _ => {}
            }
        }
        // The last entry carries the help its group shares.
        assert!(!ALL.last().unwrap().help.is_empty());
    }

    /// The row of docs/operations.md's variable table for `v`.
    fn doc_row(v: &Var) -> String {
        let unset = match v.unset {
            Required => "required".to_string(),
            Nothing => "-".to_string(),
            Value(d) => format!("`{d}`"),
            Described(d) => d.to_string(),
        };
        let note = if v.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", v.note)
        };
        format!("| `{}` | {unset}{note} |", v.shown_name())
    }

    /// docs/operations.md lists exactly the table's variables, in its order, with the same
    /// defaults; on a mismatch the expected rows are printed, ready to paste.
    #[test]
    fn operations_doc_lists_exactly_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let section = doc
            .split("\n## Environment variables\n")
            .nth(1)
            .expect("docs/operations.md has an `## Environment variables` section");
        let section = section.split("\n## ").next().unwrap();
        let documented: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
        let expected: Vec<String> = ALL.iter().map(doc_row).collect();
        assert_eq!(
            documented,
            expected,
            "docs/operations.md drifted from config::vars::ALL; the rows should be:\n{}",
            expected.join("\n")
        );
    }
}
