//! Command-line interface. `serve` runs the backend; `pool` works on the data dir directly
//! (or through a running backend); the rest call the running backend's admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use fake_backend::{BackendConfig, BrokerMode, FakeBackend, PoolCredentials};
use protocol::api::RunType;
use protocol::Arch;
use serde_json::{json, Value};

use crate::admin_client;

#[derive(Debug, Parser)]
#[command(
    name = "fake-backend",
    version,
    about = "Fake Spacelift backend for tests and local sandboxes"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Dir {
    /// The backend's data directory (CA, pools, workers, runs, binaries, events).
    #[arg(
        long,
        env = "FAKE_BACKEND_DATA_DIR",
        default_value = "fake-backend-data"
    )]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the MQTT broker, HTTPS API and admin API.
    Serve(Serve),
    /// Create or reset worker pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Schedule, cancel or show runs (needs a running backend).
    #[command(subcommand)]
    Run(RunCmd),
    /// Publish worker binaries (needs a running backend).
    #[command(subcommand)]
    Version(VersionCmd),
    /// Drain, undrain, cycle or list workers (needs a running backend).
    #[command(subcommand)]
    Worker(WorkerCmd),
    /// Inject faults (needs a running backend).
    #[command(subcommand)]
    Fault(FaultCmd),
    /// Print events as JSON lines (from the running backend, or events.jsonl).
    Events {
        #[command(flatten)]
        dir: Dir,
        /// Only events with a sequence number above this.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Only events whose kind starts with this (e.g. `run.`).
        #[arg(long)]
        kind: Option<String>,
    },
    /// Write a Mosquitto config (TLS, client certificates, ACL) signed by this CA.
    MosquittoConfig {
        #[command(flatten)]
        dir: Dir,
        /// Directory for mosquitto.conf, acl and certificates.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 8883)]
        port: u16,
    },
}

#[derive(Debug, Args)]
struct Serve {
    #[command(flatten)]
    dir: Dir,
    #[arg(long, default_value = fake_backend::DEFAULT_MQTT_BIND)]
    mqtt_bind: SocketAddr,
    #[arg(long, default_value = fake_backend::DEFAULT_HTTPS_BIND)]
    https_bind: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    admin_bind: SocketAddr,
    /// Use an external broker (e.g. Mosquitto) instead of the embedded one.
    #[arg(long, value_name = "mqtts://HOST:PORT")]
    broker: Option<String>,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease_ttl: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// RSA size of keys the backend generates.
    #[arg(long, default_value_t = 4096)]
    key_bits: u32,
    /// Don't create (and print credentials for) a pool when the data dir has none.
    #[arg(long)]
    no_default_pool: bool,
}

#[derive(Debug, Args)]
struct KeySource {
    /// A PEM CSR, e.g. from `openssl req -new -newkey rsa:4096 -nodes -keyout spacelift.key -out spacelift.csr`.
    #[arg(
        long,
        conflicts_with = "generate_key",
        required_unless_present = "generate_key"
    )]
    csr: Option<PathBuf>,
    /// Make the key too, and print it as SPACELIFT_POOL_PRIVATE_KEY.
    #[arg(long)]
    generate_key: bool,
    #[arg(long, default_value_t = 4096)]
    key_bits: u32,
    /// Print the credentials as JSON instead of KEY=VALUE lines.
    #[arg(long)]
    json: bool,
    /// Also write spacelift.crt / spacelift.key (when generated) into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum PoolCmd {
    /// Sign a CSR (or generate a key) and print SPACELIFT_TOKEN.
    Create {
        #[command(flatten)]
        dir: Dir,
        #[command(flatten)]
        key: KeySource,
    },
    /// Issue a new certificate; the old one stops working.
    Reset {
        #[command(flatten)]
        dir: Dir,
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        key: KeySource,
    },
    /// List pools.
    List {
        #[command(flatten)]
        dir: Dir,
    },
}

#[derive(Debug, Subcommand)]
enum RunCmd {
    Schedule {
        #[command(flatten)]
        dir: Dir,
        #[arg(long)]
        pool: String,
        #[arg(long)]
        image: Option<String>,
        /// KEY=VALUE, repeatable: the run's environment (picks its behaviour in tests).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        #[arg(long, default_value = "stack")]
        stack: String,
        /// proposed, tracked, task, destroy or module.
        #[arg(long = "type", default_value = "tracked")]
        run_type: String,
    },
    Cancel {
        #[command(flatten)]
        dir: Dir,
        run: String,
        #[arg(long)]
        reason: Option<String>,
    },
    Show {
        #[command(flatten)]
        dir: Dir,
        run: String,
    },
    List {
        #[command(flatten)]
        dir: Dir,
    },
}

#[derive(Debug, Subcommand)]
enum VersionCmd {
    Publish {
        #[command(flatten)]
        dir: Dir,
        #[arg(long)]
        arch: Arch,
        #[arg(long)]
        version: Option<String>,
        /// Publish the busybox-compatible shell test worker.
        #[arg(long, conflicts_with = "file")]
        shell: bool,
        /// Publish this file's bytes (default: a small ELF stub for the arch).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    List {
        #[command(flatten)]
        dir: Dir,
    },
}

#[derive(Debug, Subcommand)]
enum WorkerCmd {
    Drain {
        #[command(flatten)]
        dir: Dir,
        worker: String,
    },
    Undrain {
        #[command(flatten)]
        dir: Dir,
        worker: String,
    },
    Cycle {
        #[command(flatten)]
        dir: Dir,
        worker: String,
    },
    List {
        #[command(flatten)]
        dir: Dir,
    },
}

#[derive(Debug, Subcommand)]
enum FaultCmd {
    /// Close a worker's MQTT connection (its Last Will fires unless --no-will).
    DropConnection {
        #[command(flatten)]
        dir: Dir,
        worker: String,
        #[arg(long)]
        no_will: bool,
    },
    /// Take the embedded broker down, for --for or until `broker-up`.
    BrokerDown {
        #[command(flatten)]
        dir: Dir,
        #[arg(long = "for", value_parser = parse_duration)]
        for_: Option<Duration>,
    },
    BrokerUp {
        #[command(flatten)]
        dir: Dir,
    },
    /// Send the next N messages to a worker twice.
    Duplicate {
        #[command(flatten)]
        dir: Dir,
        worker: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Delay the next N messages to a worker.
    Delay {
        #[command(flatten)]
        dir: Dir,
        worker: String,
        #[arg(long, value_parser = parse_duration)]
        by: Duration,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Send the next message to a worker after the one that follows it.
    Reorder {
        #[command(flatten)]
        dir: Dir,
        worker: String,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        hold: Duration,
    },
    /// Answer the next N HTTPS calls (matching --path-prefix) with a status.
    Http {
        #[command(flatten)]
        dir: Dir,
        #[arg(long)]
        status: u16,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long)]
        path_prefix: Option<String>,
        #[arg(long)]
        retry_after: Option<u64>,
    },
    /// Flip bytes in the next N downloads.
    CorruptDownload {
        #[command(flatten)]
        dir: Dir,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Serve the next N downloads slowly.
    SlowDownload {
        #[command(flatten)]
        dir: Dir,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value_t = 1024)]
        chunk_bytes: usize,
        #[arg(long, value_parser = parse_duration)]
        chunk_delay: Duration,
    },
    /// Remove every pending fault.
    Clear {
        #[command(flatten)]
        dir: Dir,
    },
}

/// A Go duration (`500ms`, `30s`, `5m`, `1h30m`: `protocol::duration`), or bare seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let not_a_duration = || format!("{s:?} is not a duration (e.g. 500ms, 30s, 5m)");
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| not_a_duration());
    }
    protocol::duration::parse_go_duration(s).map_err(|_| not_a_duration())
}

fn print_credentials(c: &PoolCredentials, json_out: bool) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(c)?);
        return Ok(());
    }
    println!("SPACELIFT_POOL_ULID={}", c.pool_ulid);
    println!("SPACELIFT_TOKEN={}", c.token);
    if let Some(k) = &c.private_key_b64 {
        println!("SPACELIFT_POOL_PRIVATE_KEY={k}");
    }
    Ok(())
}

fn write_out(out: &Option<PathBuf>, c: &PoolCredentials) -> Result<()> {
    let Some(dir) = out else { return Ok(()) };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("spacelift.crt"), &c.certificate_pem)?;
    if let Some(k) = &c.private_key_pem {
        std::fs::write(dir.join("spacelift.key"), k)?;
    }
    Ok(())
}

fn read_csr(key: &KeySource) -> Result<Option<String>> {
    match &key.csr {
        Some(p) => Ok(Some(
            std::fs::read_to_string(p).with_context(|| format!("reading CSR {}", p.display()))?,
        )),
        None => Ok(None),
    }
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn admin(dir: &Dir, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let addr = admin_client::require(&dir.data_dir).await?;
    admin_client::call(addr, method, path, body.as_ref()).await
}

async fn fault(dir: &Dir, body: Value) -> Result<()> {
    print_json(&admin(dir, "POST", "/faults", Some(body)).await?)
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(s) => serve(s).await,
        Command::Pool(PoolCmd::Create { dir, key }) => {
            let csr = read_csr(&key)?;
            let creds = match admin_client::running(&dir.data_dir).await {
                Some(addr) => {
                    let v = admin_client::call(addr, "POST", "/pools", Some(&json!({ "csr_pem": csr }))).await?;
                    serde_json::from_value(v)?
                }
                None => {
                    let data_dir = dir.data_dir.clone();
                    tokio::task::spawn_blocking(move || {
                        fake_backend::create_pool_offline(&data_dir, csr.as_deref(), key.key_bits)
                    })
                    .await??
                }
            };
            write_out(&key.out, &creds)?;
            print_credentials(&creds, key.json)
        }
        Command::Pool(PoolCmd::Reset { dir, pool, key }) => {
            let csr = read_csr(&key)?;
            let creds = match admin_client::running(&dir.data_dir).await {
                Some(addr) => {
                    let path = format!("/pools/{pool}/reset");
                    let v = admin_client::call(addr, "POST", &path, Some(&json!({ "csr_pem": csr }))).await?;
                    serde_json::from_value(v)?
                }
                None => {
                    let data_dir = dir.data_dir.clone();
                    tokio::task::spawn_blocking(move || {
                        fake_backend::reset_pool_offline(&data_dir, &pool, csr.as_deref(), key.key_bits)
                    })
                    .await??
                }
            };
            write_out(&key.out, &creds)?;
            print_credentials(&creds, key.json)
        }
        Command::Pool(PoolCmd::List { dir }) => print_json(&admin(&dir, "GET", "/pools", None).await?),
        Command::Run(RunCmd::Schedule { dir, pool, image, env, stack, run_type }) => {
            let mut envs = serde_json::Map::new();
            for kv in env {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--env {kv:?} is not KEY=VALUE");
                };
                envs.insert(k.to_string(), Value::String(v.to_string()));
            }
            let run_type: RunType = serde_json::from_value(Value::String(run_type.clone()))
                .with_context(|| format!("--type {run_type:?} (proposed, tracked, task, destroy, module)"))?;
            let body = json!({ "pool": pool, "image": image, "env": envs, "stack_id": stack, "run_type": run_type });
            print_json(&admin(&dir, "POST", "/runs", Some(body)).await?)
        }
        Command::Run(RunCmd::Cancel { dir, run, reason }) => print_json(
            &admin(&dir, "POST", &format!("/runs/{run}/cancel"), Some(json!({ "reason": reason }))).await?,
        ),
        Command::Run(RunCmd::Show { dir, run }) => {
            print_json(&admin(&dir, "GET", &format!("/runs/{run}"), None).await?)
        }
        Command::Run(RunCmd::List { dir }) => print_json(&admin(&dir, "GET", "/runs", None).await?),
        Command::Version(VersionCmd::Publish { dir, arch, version, shell, file }) => {
            let mut body = json!({ "arch": arch, "version": version, "kind": if shell { "shell" } else { "elf" } });
            if let Some(f) = file {
                let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                body["kind"] = json!("bytes");
                body["content_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            print_json(&admin(&dir, "POST", "/versions", Some(body)).await?)
        }
        Command::Version(VersionCmd::List { dir }) => print_json(&admin(&dir, "GET", "/versions", None).await?),
        Command::Worker(cmd) => {
            let (dir, path) = match cmd {
                WorkerCmd::Drain { dir, worker } => (dir, format!("/workers/{worker}/drain")),
                WorkerCmd::Undrain { dir, worker } => (dir, format!("/workers/{worker}/undrain")),
                WorkerCmd::Cycle { dir, worker } => (dir, format!("/workers/{worker}/cycle")),
                WorkerCmd::List { dir } => {
                    return print_json(&admin(&dir, "GET", "/workers", None).await?);
                }
            };
            print_json(&admin(&dir, "POST", &path, None).await?)
        }
        Command::Fault(f) => match f {
            FaultCmd::DropConnection { dir, worker, no_will } => {
                fault(&dir, json!({ "type": "drop_connection", "worker": worker, "fire_will": !no_will })).await
            }
            FaultCmd::BrokerDown { dir, for_ } => {
                fault(&dir, json!({ "type": "broker_down", "for_ms": for_.map(|d| d.as_millis() as u64) })).await
            }
            FaultCmd::BrokerUp { dir } => fault(&dir, json!({ "type": "broker_up" })).await,
            FaultCmd::Duplicate { dir, worker, count } => {
                fault(&dir, json!({ "type": "duplicate_message", "worker": worker, "count": count })).await
            }
            FaultCmd::Delay { dir, worker, by, count } => {
                fault(&dir, json!({ "type": "delay_message", "worker": worker, "delay_ms": by.as_millis() as u64, "count": count })).await
            }
            FaultCmd::Reorder { dir, worker, hold } => {
                fault(&dir, json!({ "type": "reorder_message", "worker": worker, "hold_ms": hold.as_millis() as u64 })).await
            }
            FaultCmd::Http { dir, status, count, path_prefix, retry_after } => {
                fault(&dir, json!({ "type": "http_error", "status": status, "count": count, "path_prefix": path_prefix, "retry_after_s": retry_after })).await
            }
            FaultCmd::CorruptDownload { dir, count } => {
                fault(&dir, json!({ "type": "corrupt_download", "count": count })).await
            }
            FaultCmd::SlowDownload { dir, count, chunk_bytes, chunk_delay } => {
                fault(&dir, json!({ "type": "slow_download", "count": count, "chunk_bytes": chunk_bytes, "chunk_delay_ms": chunk_delay.as_millis() as u64 })).await
            }
            FaultCmd::Clear { dir } => print_json(&admin(&dir, "DELETE", "/faults", None).await?),
        },
        Command::Events { dir, since, kind } => events(&dir, since, kind).await,
        Command::MosquittoConfig { dir, out, port } => {
            let pki = fake_backend::pki::Pki::load_or_create(&dir.data_dir)?;
            let files = fake_backend::mosquitto::write_config(&pki, &out, port)?;
            println!("config: {}", files.config.display());
            println!("run:    mosquitto -c {}", files.config.display());
            println!("then:   fake-backend serve --data-dir {} --broker {}", dir.data_dir.display(), files.url);
            Ok(())
        }
    }
}

async fn events(dir: &Dir, since: u64, kind: Option<String>) -> Result<()> {
    let list: Vec<Value> = match admin_client::running(&dir.data_dir).await {
        Some(addr) => {
            let mut path = format!("/events?since={since}");
            if let Some(k) = &kind {
                path.push_str(&format!("&kind={k}"));
            }
            serde_json::from_value(admin_client::call(addr, "GET", &path, None).await?)?
        }
        None => {
            let path = dir.data_dir.join("events.jsonl");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["seq"].as_u64().is_some_and(|s| s > since))
                .filter(|v| {
                    kind.as_deref()
                        .is_none_or(|k| v["kind"].as_str().is_some_and(|x| x.starts_with(k)))
                })
                .collect()
        }
    };
    for ev in list {
        println!("{ev}");
    }
    Ok(())
}

async fn serve(s: Serve) -> Result<()> {
    init_tracing();
    let data_dir = s.dir.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let config = BackendConfig {
        data_dir: data_dir.clone(),
        mqtt_bind: s.mqtt_bind,
        https_bind: s.https_bind,
        admin_bind: s.admin_bind,
        lease_ttl: s.lease_ttl,
        heartbeat_interval: s.heartbeat_interval,
        seed: s.seed,
        broker: match s.broker {
            Some(url) => BrokerMode::External(url),
            None => BrokerMode::Embedded,
        },
        pool_key_bits: s.key_bits,
        admin: true,
    };
    let handle = FakeBackend::start(config).await?;
    println!("fake-backend serving from {}", data_dir.display());
    println!("  broker: {}", handle.broker_endpoint());
    println!("  api:    {}", handle.api_endpoint());
    if let Some(a) = handle.admin_addr() {
        println!(
            "  admin:  http://{a} (also in {})",
            data_dir.join("admin.addr").display()
        );
    }
    if handle.pools().is_empty() && !s.no_default_pool {
        let h = handle.clone();
        let creds = tokio::task::spawn_blocking(move || h.create_pool()).await??;
        let env_file = data_dir.join(format!("pool-{}.env", creds.pool_ulid));
        std::fs::write(
            &env_file,
            format!(
                "SPACELIFT_TOKEN={}\nSPACELIFT_POOL_PRIVATE_KEY={}\n",
                creds.token,
                creds.private_key_b64.clone().unwrap_or_default()
            ),
        )?;
        write_pem_pair(&data_dir, &creds)?;
        println!(
            "created pool {} (credentials also in {})",
            creds.pool_ulid,
            env_file.display()
        );
        print_credentials(&creds, false)?;
    } else {
        for pool in handle.pools() {
            println!("pool {pool}: SPACELIFT_TOKEN={}", handle.token_for(&pool)?);
        }
    }
    wait_for_signal().await;
    println!("fake-backend stopping");
    handle.shutdown().await;
    Ok(())
}

fn write_pem_pair(dir: &Path, c: &PoolCredentials) -> Result<()> {
    let base = dir.join(format!("pool-{}", c.pool_ulid));
    std::fs::write(base.with_extension("crt"), &c.certificate_pem)?;
    if let Some(k) = &c.private_key_pem {
        std::fs::write(base.with_extension("key"), k)?;
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FAKE_BACKEND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rustls=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
