//! `gateway-node`: run a node, check a config or a node's health, or mint a development token.
//!
//! Run one node in embedded mode: `cargo run --release -p gateway-node`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use gateway_node::cli::{Cli, Command};
use gateway_node::config::{Config, FlagOverrides};
use gateway_node::{auth, telemetry, Listeners};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckConfig { ref file }) => check_config(file),
        Some(Command::Healthcheck { ref url }) => {
            // A container runtime reads 1 as unhealthy (2 is reserved there).
            return match gateway_node::healthcheck::check(url) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gateway-node: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        Some(Command::Token {
            ref config,
            ref sub,
            ref rooms,
            ttl,
        }) => token(config.as_deref(), sub, rooms.as_deref(), ttl.into()),
        None => run_node(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-node: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check_config(file: &Path) -> anyhow::Result<()> {
    let config = Config::load(Some(file), &FlagOverrides::default())
        .with_context(|| format!("invalid configuration {}", file.display()))?;
    gateway_node::preflight(&config)
        .with_context(|| format!("invalid configuration {}", file.display()))?;
    print!("{}", toml::to_string(&config.redacted())?);
    Ok(())
}

fn token(
    file: Option<&Path>,
    sub: &str,
    rooms: Option<&[String]>,
    ttl: std::time::Duration,
) -> anyhow::Result<()> {
    let config = Config::load(file, &FlagOverrides::default()).context("invalid configuration")?;
    let auth = config
        .auth
        .context("no [auth] configured: set auth.jwt_secret (or WSGATE_AUTH__JWT_SECRET)")?;
    println!("{}", auth::mint(&auth, sub, rooms, ttl)?);
    Ok(())
}

fn run_node(cli: &Cli) -> anyhow::Result<()> {
    let flags = FlagOverrides {
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        redis_url: cli.redis_url.clone(),
        node_id: cli.node_id.clone(),
    };
    let config =
        Arc::new(Config::load(cli.config.as_deref(), &flags).context("invalid configuration")?);
    let telemetry = telemetry::init(&config.telemetry)?;
    let runtime = runtime().context("starting the runtime")?;
    let result = runtime.block_on(async move {
        let client = bind(config.server.listen)
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        let admin = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        let mut signals = Signals::new().context("installing the SIGTERM and SIGINT handlers")?;
        tokio::spawn(async move {
            signals.next().await;
            tracing::info!("signal received: draining");
            on_signal.cancel();
            // SPEC section 8: a second signal during the drain exits at once.
            signals.next().await;
            tracing::warn!("second signal during the drain: exiting now");
            std::process::exit(1);
        });
        // SIGHUP reloads the wss:// certificate.
        let reload = Arc::new(tokio::sync::Notify::new());
        let on_hangup = reload.clone();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                on_hangup.notify_one();
            }
        });
        gateway_node::run(config, Listeners { client, admin }, shutdown, reload).await
    });
    telemetry.shutdown();
    result
}

/// Accept backlog of the client listener. Reconnect storms (a drained or failed node's clients
/// arriving at once) overflow tokio's default of 1,024, and every overflowing client then
/// waits a full second for its SYN to be retried. The kernel caps it at `net.core.somaxconn`.
const CLIENT_BACKLOG: u32 = 16_384;

/// Binds the client listener with a deep backlog.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(CLIENT_BACKLOG)
}

/// A multi-threaded runtime with a worker per CPU the process may use; on a single CPU (a
/// pinned process, a one-core container) a current-thread runtime instead: the same work
/// without cross-thread wake-ups, and a single-threaded process whose file table the kernel
/// reads without atomics on every socket write.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
}

/// SIGTERM and SIGINT, installed once so that no signal falls between two waits.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
