//! Seconds-long runs of the `resume` and `direct` scenarios against real nodes: the harness works end to
//! end, and the recovery it measures has no gap and no duplicate (on this scale; the figures
//! in RESULTS.md come from `loadtest/bench.sh resume`).

use std::process::Command;

use serde_json::Value;
use wsgate_tests::{cluster_name, Node, Redis};

const HISTORY: &str = "[server]\ndrain_delay = \"0s\"\ndrain_period = \"0s\"\n\
                       [[history]]\nrooms = [\"chat:*\"]\nsize = 1000\nttl = \"10m\"\n";

fn run(args: &[String]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("resume.json");
    let status = Command::new(env!("CARGO_BIN_EXE_wsgate-loadtest"))
        .arg("resume")
        .args(args)
        .args([
            "--members",
            "60",
            "--rate",
            "40",
            "--duration",
            "3s",
            "--drop-at",
            "1s",
        ])
        .args(["--grace", "1s", "--timeout", "60s", "--out"])
        .arg(&out)
        .status()
        .expect("running wsgate-loadtest");
    assert!(status.success());
    let result: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    result["figures"].clone()
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
    let f = tokio::task::spawn_blocking(move || run(&args))
        .await
        .unwrap();
    assert_recovered(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_members_resume_on_an_embedded_node() {
    let node = Node::start(HISTORY).await;
    let args = vec!["--url".into(), node.ws_url()];
    let f = tokio::task::spawn_blocking(move || run(&args))
        .await
        .unwrap();
    assert_recovered(&f);
}

/// A seconds-long `direct` run on an embedded node: every send reaches its target once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_sends_reach_their_targets() {
    let node = Node::start("[limits]\nmessages_per_second = 1000\nmessages_burst = 2000\n").await;
    let url = node.ws_url();
    let f = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("direct.json");
        let status = Command::new(env!("CARGO_BIN_EXE_wsgate-loadtest"))
            .args(["direct", "--url", &url, "--members", "50", "--rate", "400"])
            .args([
                "--duration",
                "2s",
                "--grace",
                "1s",
                "--timeout",
                "60s",
                "--out",
            ])
            .arg(&out)
            .status()
            .expect("running wsgate-loadtest");
        assert!(status.success());
        let result: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        result["figures"].clone()
    })
    .await
    .unwrap();
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
