//! Seconds-long runs of every scenario against real nodes (and a real redis-server, a real
//! echo upstream): the harness works end to end, and what it counts is right on this scale
//! (no loss, no gap, no duplicate). The figures in RESULTS.md come from `loadtest/bench.sh`.

use std::process::Command;

use serde_json::Value;
use wsgate_tests::{cluster_name, Node, Redis};

const HISTORY: &str = "[server]\ndrain_delay = \"0s\"\ndrain_period = \"0s\"\n\
                       [[history]]\nrooms = [\"chat:*\"]\nsize = 1000\nttl = \"10m\"\n";

/// A seconds-long `resume` run (members drop or are drained at 1 s) with `args` added.
async fn resume(args: Vec<String>) -> Value {
    let mut all = strings(&[
        "resume",
        "--members",
        "60",
        "--rate",
        "40",
        "--duration",
        "3s",
        "--drop-at",
        "1s",
        "--grace",
        "1s",
        "--timeout",
        "60s",
    ]);
    all.extend(args);
    harness(all).await.0["figures"].clone()
}

fn assert_recovered(f: &Value) {
    assert_eq!(f["members"], 60, "{f}");
    assert_eq!(f["reconnects"], 60, "every member came back: {f}");
    assert_eq!(f["recovered"], 60, "{f}");
    assert_eq!(
        (f["gaps"].as_u64(), f["duplicates"].as_u64()),
        (Some(0), Some(0)),
        "{f}"
    );
    assert_eq!(f["members_behind"], 0, "{f}");
    assert!(f["final_offset"].as_u64().unwrap() >= 100, "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_nodes_members_resume_on_the_other() {
    let redis = Redis::start().await;
    let name = cluster_name();
    let config = format!(
        "{HISTORY}[cluster]\nname = \"{name}\"\nredis_url = \"{}\"\nnode_heartbeat = \"200ms\"\n",
        redis.url()
    );
    let a = Node::start(&config).await;
    let b = Node::start(&config).await;
    let args = vec![
        "--url".into(),
        a.ws_url(),
        "--url".into(),
        b.ws_url(),
        "--drain-pid".into(),
        a.pid().to_string(),
    ];
    assert_recovered(&resume(args).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_members_resume_on_an_embedded_node() {
    let node = Node::start(HISTORY).await;
    let args = vec!["--url".into(), node.ws_url()];
    assert_recovered(&resume(args).await);
}

/// A seconds-long `direct` run on an embedded node: every send reaches its target once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_sends_reach_their_targets() {
    let node = Node::start("[limits]\nmessages_per_second = 1000\nmessages_burst = 2000\n").await;
    let args = strings(&[
        "direct",
        "--url",
        &node.ws_url(),
        "--members",
        "50",
        "--rate",
        "400",
        "--duration",
        "2s",
        "--grace",
        "1s",
        "--timeout",
        "60s",
    ]);
    let (r, _dir) = harness(args).await;
    let f = &r["figures"];
    assert_eq!(f["members"], 50, "{f}");
    assert_eq!(f["sends"], 800, "{f}");
    assert_eq!(
        (f["delivered"].as_u64(), f["lost"].as_u64()),
        (Some(800), Some(0)),
        "{f}"
    );
    assert_eq!(
        (f["duplicates"].as_u64(), f["sends_refused"].as_u64()),
        (Some(0), Some(0)),
        "{f}"
    );
}

/// Runs the harness with `args` and `--out` (off the runtime: it takes seconds), and returns
/// the result file's JSON and the directory holding it (with any plots).
async fn harness(args: Vec<String>) -> (Value, tempfile::TempDir) {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run.json");
        let status = Command::new(env!("CARGO_BIN_EXE_wsgate-loadtest"))
            .args(&args)
            .arg("--out")
            .arg(&out)
            .status()
            .expect("running wsgate-loadtest");
        assert!(status.success(), "{args:?}");
        let result = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        (result, dir)
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `idle`: every connection opens and stays; the node's RSS per connection is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_held_and_measured() {
    let node = Node::start("").await;
    let mut args = strings(&[
        "idle",
        "--connections",
        "300",
        "--hold",
        "1s",
        "--workers",
        "2",
        "--timeout",
        "60s",
    ]);
    args.extend([
        "--url".into(),
        node.ws_url(),
        "--node-pid".into(),
        node.pid().to_string(),
    ]);
    let (r, _dir) = harness(args).await;
    let f = &r["figures"];
    assert_eq!(f["connections_established"], 300, "{f}");
    assert_eq!(f["connections_dropped_during_hold"], 0, "{f}");
    assert!(
        f["rss_growth_kib_per_connection"].as_f64().unwrap() > 0.0,
        "{f}"
    );
}

/// `broadcast` across two nodes through Redis: every member gets every publish once, the
/// latency and the node CPU are measured, one PUBLISH per publish, a plot is drawn, and
/// `table` renders the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_across_two_nodes_reaches_every_member_and_plots() {
    let redis = Redis::start().await;
    let config = format!(
        "[cluster]\nname = \"{}\"\nredis_url = \"{}\"\n",
        cluster_name(),
        redis.url()
    );
    let a = Node::start(&config).await;
    let b = Node::start(&config).await;
    let mut args = strings(&[
        "broadcast",
        "--members",
        "200",
        "--rate",
        "20",
        "--duration",
        "2s",
    ]);
    args.extend(strings(&[
        "--grace",
        "1s",
        "--timeout",
        "60s",
        "--redis-url",
    ]));
    args.push(redis.url());
    for n in [&a, &b] {
        args.extend([
            "--url".into(),
            n.ws_url(),
            "--node-pid".into(),
            n.pid().to_string(),
        ]);
    }
    let (r, dir) = harness(args).await;
    let f = &r["figures"];
    assert_eq!(
        (f["members"].as_u64(), f["publishes"].as_u64()),
        (Some(200), Some(40)),
        "{f}"
    );
    assert_eq!(f["delivered"], 8000, "{f}");
    assert_eq!(
        (f["lost"].as_u64(), f["duplicates"].as_u64()),
        (Some(0), Some(0)),
        "{f}"
    );
    assert_eq!(f["publish_acks"], 40, "{f}");
    assert_eq!(f["redis_publish_commands_per_publish"], 1.0, "{f}");
    assert!(f["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{f}");
    assert!(
        f["node_cpu_seconds_per_1000_deliveries"].as_f64().unwrap() > 0.0,
        "{f}"
    );
    let plots: Vec<String> = serde_json::from_value(r["plots"].clone()).unwrap();
    assert_eq!(plots.len(), 2, "PNG and SVG: {r}");
    for p in &plots {
        assert!(std::fs::metadata(p).unwrap().len() > 1000, "{p}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate-loadtest"))
        .arg("table")
        .arg(dir.path().join("run.json"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| run | 200 | 4000 |"), "{table}");
    assert!(
        f["deliveries_per_second_sustained"].as_f64().unwrap() > 0.0,
        "{f}"
    );
}

/// `floor`: the same fan-out as bare TCP sends arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_delivers_every_record() {
    let args = strings(&[
        "floor",
        "--members",
        "200",
        "--rate",
        "20",
        "--duration",
        "1s",
    ]);
    // `floor` and `proxy` have no --timeout: each is bounded by its own duration.
    let (r, _dir) = harness(args).await;
    let f = &r["figures"];
    assert_eq!(f["sends"], 4000, "{f}");
    assert_eq!(
        (f["received"].as_u64(), f["lost"].as_u64()),
        (Some(4000), Some(0)),
        "{f}"
    );
}

/// A child process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `proxy`: clients echo through wsgate's `[[proxy]]` to the harness's own echo upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_echo_through_the_proxy() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _upstream = Killed(
        Command::new(env!("CARGO_BIN_EXE_wsgate-loadtest"))
            .args(["echo-upstream", "--listen", &format!("127.0.0.1:{port}")])
            .spawn()
            .unwrap(),
    );
    let node = Node::start(&format!(
        "[[proxy]]\npath = \"/ws/echo\"\nupstreams = [\"ws://127.0.0.1:{port}/\"]\n"
    ))
    .await;
    let url = node.ws_url().replace("/ws", "/ws/echo");
    let mut args = strings(&[
        "proxy",
        "--clients",
        "20",
        "--rate",
        "10",
        "--duration",
        "2s",
    ]);
    args.extend([
        "--url".into(),
        url,
        "--node-pid".into(),
        node.pid().to_string(),
    ]);
    let (r, _dir) = harness(args).await;
    // `proxy` writes its figures flat.
    assert!(r["sent"].as_u64().unwrap() >= 380, "{r}");
    assert_eq!(r["echoed"], r["sent"], "{r}");
    assert_eq!(r["failed_connections"], 0, "{r}");
}
