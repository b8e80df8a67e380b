//! `wsgate-loadtest`: the load harness behind `loadtest/RESULTS.md`.
//!
//! Scenarios: `idle` (many held connections: connect rate, node RSS per connection) and
//! `broadcast` (room members, publishers at a fixed rate: deliveries/s, loss, latency, node
//! CPU per 1,000 deliveries), and `floor` (the same fan-out as bare loopback TCP sends, no
//! gateway: what the machine itself allows, measured in the same session), `proxy` (clients
//! echoing through a WebSocket reverse proxy, wsgate's or nginx's, or straight to the
//! `echo-upstream` server: latency and the proxy's CPU per relayed message), `resume` (members
//! of a retained room losing their connections under load and rejoining with `since`: gaps,
//! duplicates, time until all are back), `direct` (sends to random connection ids across
//! the nodes); `idle` and `broadcast` also measure peers (`--dialect`: Pusher for Soketi and
//! Sockudo, Socket.IO) with the same workers and clock; `certs` writes a
//! test CA and certificate for wss:// runs. Client sockets are spread over worker processes (one process may
//! hold only 20,000 files here) and over source addresses in 127.0.0.0/8. Meant for local
//! nodes; every run is bounded in time. Exits non-zero only on harness errors (nothing could
//! connect, bad arguments); loss and refusals are reported, not errors.

mod broadcast;
mod certs;
mod cli;
mod client;
mod dialect;
mod direct;
mod floor;
mod idle;
mod plot;
mod probe;
mod procstat;
mod proxy;
mod publishers;
mod pusher_http;
mod redis_stats;
mod report;
mod resume;
mod resumer;
mod table;
mod timeline;
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Worker => worker::main(),
        cli::Command::Idle(args) => runtime().and_then(|rt| rt.block_on(idle::run(args))),
        cli::Command::Broadcast(args) => runtime().and_then(|rt| rt.block_on(broadcast::run(args))),
        cli::Command::Resume(args) => runtime().and_then(|rt| rt.block_on(resume::run(args))),
        cli::Command::Direct(args) => runtime().and_then(|rt| rt.block_on(direct::run(args))),
        cli::Command::Floor(args) => floor::run(args),
        cli::Command::Proxy(args) => runtime().and_then(|rt| rt.block_on(proxy::run(args))),
        cli::Command::EchoUpstream(args) => runtime().and_then(|rt| rt.block_on(proxy::echo(args))),
        cli::Command::Certs { out } => certs::write(&out),
        cli::Command::Table { files } => table::run(&files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the causes; no backtrace even when RUST_BACKTRACE is set.
            eprintln!("wsgate-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One thread: the harness is pinned to one CPU (`taskset -c 1`), and a current-thread
/// runtime has no cross-thread wake-ups to add to the latency it measures.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
