//! Command line of the harness.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::dialect::Dialect;

/// How long a run may take beyond its own duration (connecting, collecting) when `--timeout`
/// is not given.
pub const TIMEOUT_MARGIN: Duration = Duration::from_secs(120);

/// wsgate load harness.
///
/// Meant for nodes on this machine (loopback or a local address): client sockets on loopback
/// are spread over source addresses 127.0.0.2-250 so ephemeral ports never run out, and the
/// node's RSS and CPU are read from /proc (`--node-pid`). Every run stops by itself at
/// `--timeout` and reports what it has.
#[derive(Debug, Parser)]
#[command(name = "wsgate-loadtest", version, about, long_about)]
pub struct Cli {
    /// The scenario.
    #[command(subcommand)]
    pub command: Command,
}

/// Scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Writes a test CA and a certificate for localhost and 127.0.0.1 (`ca.pem`, `cert.pem`,
    /// `key.pem`) into a directory, for a node serving wss:// and `--ca`.
    Certs {
        /// The directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Hold many idle connections: connect rate and the node's RSS per connection.
    Idle(IdleArgs),
    /// Members in one room and publishers at a fixed rate: throughput, loss, latency, CPU.
    Broadcast(BroadcastArgs),
    /// Members of a retained room lose their connections under load (a drained node, or a
    /// drop) and rejoin with `since`: gaps, duplicates, time until all are back.
    Resume(ResumeArgs),
    /// `send`s to random connection ids across the nodes: sends/s, loss, latency.
    Direct(DirectArgs),
    /// The kernel's own cost of the same fan-out with no gateway: the floor that `broadcast`
    /// figures are read against (run both in one session; the machine's speed varies).
    Floor(FloorArgs),
    /// Clients each sending `--rate` messages/s to an echo server and timing the echoes:
    /// through wsgate's `[[proxy]]`, through nginx, or to the upstream directly.
    Proxy(ProxyArgs),
    /// A WebSocket echo server (the upstream of `proxy`), on one thread.
    EchoUpstream(EchoArgs),
    /// Prints the `--out` results of several runs as Markdown tables, one per scenario and
    /// load, one row per file (named by its file stem).
    Table {
        /// The result files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Internal: one worker process of a scenario; reads its job as JSON on stdin.
    #[command(hide = true)]
    Worker,
}

/// Options every scenario shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Node WebSocket URL (`ws://` or `wss://`, a node on this machine); repeat for several nodes
    /// (connections are spread round robin).
    #[arg(long = "url", default_value = "ws://127.0.0.1:8080/ws")]
    pub urls: Vec<String>,
    /// JWT sent as `Authorization: Bearer` by every connection (nodes with auth on).
    #[arg(long)]
    pub token: Option<String>,
    /// PEM CA certificate trusted for `wss://` URLs (`wsgate-loadtest certs` makes one).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// PID of a node process to measure (RSS, CPU); repeat for several nodes.
    #[arg(long = "node-pid")]
    pub node_pids: Vec<u32>,
    /// Worker processes holding the client sockets (default: one per 6,000 connections).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: Option<u64>,
    /// Connections being opened at once, per worker.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_concurrency: u64,
    /// Hard limit on the whole run [default: the scenario's own time + 120s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// What the gateway speaks: wsgate, or a peer measured side by side with it (`idle` and
    /// `broadcast` only). URLs are then the peer's socket URLs: Pusher
    /// `ws://HOST:PORT/app/KEY?protocol=7`, Socket.IO
    /// `ws://HOST:PORT/socket.io/?EIO=4&transport=websocket`.
    #[arg(long, value_enum, default_value_t = Dialect::Wsgate)]
    pub dialect: Dialect,
}

impl Common {
    /// Refuses a peer's dialect in a scenario that uses wsgate-only features.
    pub fn wsgate_only(&self, scenario: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.dialect == Dialect::Wsgate,
            "{scenario} uses wsgate's own features; --dialect {:?} works with idle and broadcast",
            self.dialect
        );
        Ok(())
    }
}

/// `idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 18_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// How long to hold them open before measuring the node's RSS.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub hold: Duration,
}

impl IdleArgs {
    /// `--timeout`, or the hold plus [`TIMEOUT_MARGIN`].
    pub fn timeout(&self) -> Duration {
        self.common.timeout.unwrap_or(self.hold + TIMEOUT_MARGIN)
    }
}

/// `broadcast`.
#[derive(Debug, Clone, Args)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Room members.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub members: u64,
    /// Publishes per second (all publishers together).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Publishing time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Approximate size of each message's `data`, in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// The room.
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// Publisher's node URL (default: the first --url).
    #[arg(long)]
    pub publisher_url: Option<String>,
    /// Publisher connections taking turns (default: one per 50 publishes/s, well under the
    /// node's 100 messages/s per connection).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub publishers: Option<u32>,
    /// Wait after the last publish for stragglers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub grace: Duration,
    /// Redis (`redis://HOST:PORT`, no password) to read `INFO commandstats` from before and
    /// after the run: Redis commands per publish in cluster runs.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// While publishing, one more connection (in no room) pings the publisher's node this
    /// often and times each pong: does the fan-out stall unrelated connections?
    #[arg(long, value_parser = humantime::parse_duration)]
    pub probe_interval: Option<Duration>,
    /// While publishing, this many connections join and leave the room back to back, each
    /// timing its joins: do joins wait for the fan-out?
    #[arg(long, default_value_t = 0)]
    pub churn: u32,
    /// Before publishing, hold every member idle this long and report what idleness costs:
    /// node CPU, node RSS per connection and, with `--redis-url`, Redis commands per second
    /// (affinity upkeep) and Redis memory.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub hold_idle: Option<Duration>,
    /// `--dialect pusher`: the app as `ID:KEY:SECRET`, for the signed events API the
    /// publishes go through.
    #[arg(long, default_value = "app-id:app-key:app-secret")]
    pub pusher_app: crate::pusher_http::App,
}

impl BroadcastArgs {
    /// `--timeout`, or idle hold, duration and grace plus [`TIMEOUT_MARGIN`].
    pub fn timeout(&self) -> Duration {
        self.common.timeout.unwrap_or(
            self.hold_idle.unwrap_or_default() + self.duration + self.grace + TIMEOUT_MARGIN,
        )
    }

    /// Publisher connections: `--publishers`, or one per 50 publishes per second.
    pub fn publishers(&self) -> u32 {
        self.publishers.unwrap_or(self.rate.div_ceil(50)).max(1)
    }
}

/// `resume`.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Members of the room.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub members: u64,
    /// Publishes per second.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Publishing time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// When, from the start of publishing, the members lose their connections.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub drop_at: Duration,
    /// Drain this node (SIGTERM) at `--drop-at` instead of dropping every member's
    /// connection: it must be the first `--url`, where every member then starts; they
    /// reconnect to the other `--url`s.
    #[arg(long)]
    pub drain_pid: Option<u32>,
    /// Approximate size of each message's `data`, in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// The room (it must be retained: `[[history]]` on the nodes).
    #[arg(long, default_value = "chat:resume")]
    pub room: String,
    /// Publisher's node URL (default: the last --url, which a drain of the first spares).
    #[arg(long)]
    pub publisher_url: Option<String>,
    /// Wait after the last publish for stragglers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub grace: Duration,
    /// Redis to read `INFO commandstats` from before and after (commands per publish).
    #[arg(long)]
    pub redis_url: Option<String>,
}

impl ResumeArgs {
    /// `--timeout`, or duration plus grace plus [`TIMEOUT_MARGIN`].
    pub fn timeout(&self) -> Duration {
        self.common
            .timeout
            .unwrap_or(self.duration + self.grace + TIMEOUT_MARGIN)
    }
}

/// `direct`.
#[derive(Debug, Clone, Args)]
pub struct DirectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Members (the targets), spread over the `--url`s.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub members: u64,
    /// Sends per second, all senders together.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Sending time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Approximate size of each send's `data`, in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Sender connections, spread over the `--url`s (default: one per 1,000 sends/s; the
    /// nodes' `limits.messages_per_second` must allow rate / senders).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub senders: Option<u32>,
    /// Wait after the last send for stragglers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub grace: Duration,
    /// Redis to read `INFO commandstats` from before and after (commands per send).
    #[arg(long)]
    pub redis_url: Option<String>,
}

impl DirectArgs {
    /// `--timeout`, or duration plus grace plus [`TIMEOUT_MARGIN`].
    pub fn timeout(&self) -> Duration {
        self.common
            .timeout
            .unwrap_or(self.duration + self.grace + TIMEOUT_MARGIN)
    }

    /// Sender connections: `--senders`, or one per 1,000 sends per second.
    pub fn senders(&self) -> u32 {
        self.senders.unwrap_or(self.rate.div_ceil(1000)).max(1)
    }
}

/// `floor`.
#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Loopback TCP connections (two sockets each in this one process).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub members: u64,
    /// Bursts per second (one record to every member per burst).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Sending time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Bytes per record: what the node writes per delivery in `broadcast` (a 100-byte
    /// `data` makes a frame of about 150 bytes).
    #[arg(long, default_value_t = 150)]
    pub size: usize,
    /// CPU of the sending thread (where the node runs in `broadcast`).
    #[arg(long, default_value_t = 0)]
    pub sender_cpu: usize,
    /// CPU of the receiving thread (where the harness runs).
    #[arg(long, default_value_t = 1)]
    pub receiver_cpu: usize,
    /// Wait after the last burst for stragglers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub grace: Duration,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `proxy`.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// WebSocket URL of the echo service (a proxy path, or the upstream itself).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws/echo")]
    pub url: String,
    /// Client connections.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub clients: u64,
    /// Messages per second per client.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Sending time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Bytes per message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// PID of the proxy process to measure (its CPU per relayed message); repeat for several.
    #[arg(long = "node-pid")]
    pub common_pids: Vec<u32>,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `echo-upstream`.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: std::net::SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_derived_values() {
        let cli = Cli::try_parse_from([
            "wsgate-loadtest",
            "broadcast",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--url",
            "ws://127.0.0.1:2/ws",
            "--rate",
            "120",
            "--duration",
            "10s",
        ])
        .unwrap();
        let Command::Broadcast(b) = cli.command else {
            panic!("not broadcast")
        };
        assert_eq!(b.common.urls.len(), 2);
        assert_eq!(b.publishers(), 3);
        assert_eq!(b.timeout(), Duration::from_secs(10 + 5 + 120));
        assert!(Cli::try_parse_from(["wsgate-loadtest", "broadcast", "--rate", "0"]).is_err());
        let cli = Cli::try_parse_from(["wsgate-loadtest", "idle", "--hold", "1m"]).unwrap();
        let Command::Idle(i) = cli.command else {
            panic!("not idle")
        };
        assert_eq!(i.connections, 18_000);
        assert_eq!(i.timeout(), Duration::from_secs(180));
    }
}
