//! The deploy assets say what the node does: every metric the Grafana dashboard queries is
//! one the node exports, the compose topology mounts files that exist, and the Dockerfile
//! runs as a non-root user, stops with SIGTERM and checks health with the node's own binary.
//! (deploy/local-cluster.sh is run for real by its own test; the image by
//! deploy/podman-check.sh.)

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use wsgate_tests::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `wsgate_…` names in a PromQL expression, without the histogram suffixes.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("wsgate_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_owned();
        out.push(base);
    }
    out
}

#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_node_exports() {
    let node = Node::start("").await;
    let text = reqwest::get(node.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.strip_suffix("_total").unwrap_or(n).to_owned())
        .collect();
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/wsgate.json")).unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    for name in &queried {
        let base = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            exported.contains(base),
            "the dashboard queries {name}, not exported: {exported:?}"
        );
    }
    // What the deploy issue asks the dashboard to show.
    for needed in [
        "wsgate_connections_active",
        "wsgate_messages_in_total",
        "wsgate_messages_delivered_total",
        "wsgate_publish_to_delivery_seconds",
        "wsgate_slow_consumer_closes_total",
        "wsgate_auth_failures_total",
        "wsgate_redis_up",
    ] {
        assert!(queried.contains(needed), "no panel shows {needed}");
    }
}

#[test]
fn compose_mounts_files_that_exist_and_the_image_is_non_root() {
    let compose = read("deploy/compose.yaml");
    for line in compose.lines() {
        let line = line.trim().trim_start_matches("- ");
        if let Some(src) = line.strip_prefix("./") {
            let file = src.split(':').next().unwrap();
            assert!(
                root().join("deploy").join(file).exists(),
                "compose mounts deploy/{file}"
            );
        }
    }
    for service in [
        "redis:",
        "wsgate-1:",
        "wsgate-2:",
        "wsgate-3:",
        "lb:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(
            compose.contains(&format!("\n  {service}")),
            "compose has {service}"
        );
    }
    let dockerfile = read("deploy/Dockerfile");
    for needed in [
        "USER 10001:10001",
        "STOPSIGNAL SIGTERM",
        "HEALTHCHECK",
        "healthcheck",
        "ARG RUNTIME_IMAGE=debian:bookworm-slim",
        "AS prebuilt",
        "AS runtime",
    ] {
        assert!(dockerfile.contains(needed), "the Dockerfile has {needed}");
    }
    // The default target (the last stage) builds from source.
    let last = dockerfile
        .lines()
        .rev()
        .find(|l| l.starts_with("FROM "))
        .unwrap();
    assert!(last.ends_with("AS runtime"), "{last}");
}
