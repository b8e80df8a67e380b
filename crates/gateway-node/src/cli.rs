//! Command line (SPEC section 2).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// wsgate node: a horizontally scalable WebSocket gateway.
///
/// With no Redis URL the node runs alone (embedded mode). Settings come from the TOML file,
/// then `WSGATE_<SECTION>__<KEY>` environment variables, then these flags.
#[derive(Debug, Parser)]
#[command(name = "gateway-node", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Client listener address (server.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Admin listener address (admin.listen).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Redis URL (cluster.redis_url); none runs in embedded mode.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Node id (cluster.node_id).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// A tool instead of running the node.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config and print the effective settings (secrets redacted).
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Exit 0 when a node's health endpoint answers 200 (a container's HEALTHCHECK).
    Healthcheck {
        /// The URL to GET.
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// Mint a development token signed with the configured HS* secret.
    Token {
        /// TOML configuration file (its [auth] secret, issuer and audience are used).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The `sub` claim.
        #[arg(long)]
        sub: String,
        /// Room patterns for the `rooms` claim, comma-separated.
        #[arg(long, value_delimiter = ',')]
        rooms: Option<Vec<String>>,
        /// Lifetime of the token.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
}
