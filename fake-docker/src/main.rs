//! `fake-docker`: the fake Docker daemon as a standalone process.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fake_docker::{Config, Listener};

#[derive(Parser, Debug)]
#[command(
    name = "fake-docker",
    about = "Fake Docker Engine API daemon for deterministic tests"
)]
struct Args {
    /// Unix socket to listen on.
    #[arg(long)]
    socket: PathBuf,
    /// Also listen on TCP (loopback only, e.g. 127.0.0.1:2375).
    #[arg(long)]
    tcp: Option<std::net::SocketAddr>,
    /// Daemon architecture.
    #[arg(long, value_parser = ["amd64", "arm64"])]
    arch: Option<String>,
    /// Maximum API version (e.g. 1.41 like Debian's dockerd 20.10).
    #[arg(long)]
    api_version: Option<String>,
    /// Seed for IDs and names.
    #[arg(long)]
    seed: Option<u64>,
    /// JSON configuration file (see README); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<Config>(&text)
                .with_context(|| format!("parsing {}", p.display()))?
        }
        None => Config::default(),
    };
    if let Some(a) = args.arch {
        config.arch = a;
    }
    if let Some(v) = args.api_version {
        config.api_version = v;
    }
    if let Some(s) = args.seed {
        config.seed = s;
    }
    if args.tcp.is_some_and(|a| !a.ip().is_loopback()) {
        anyhow::bail!("--tcp must be a loopback address");
    }
    let _ = std::fs::remove_file(&args.socket);
    let mut listeners = vec![Listener::Unix(
        tokio::net::UnixListener::bind(&args.socket)
            .with_context(|| format!("binding {}", args.socket.display()))?,
    )];
    let mut announce = format!("fake-docker listening on unix://{}", args.socket.display());
    if let Some(addr) = args.tcp {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        // Report the bound port, so `--tcp 127.0.0.1:0` is usable.
        announce.push_str(&format!(" and tcp://{}", tcp.local_addr()?));
        listeners.push(Listener::Tcp(tcp));
    }
    eprintln!("{announce}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    fake_docker::serve(config, listeners, async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
    .await?;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
