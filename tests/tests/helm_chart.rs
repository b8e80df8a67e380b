//! The Helm chart, checked without a cluster: `scripts/check-chart.py` lints it strictly and
//! renders it with Helm's own Go SDK for the default values and for KEDA (both triggers), the
//! HPA, Ingress and a ServiceMonitor; validates every manifest against Kubernetes' schemas and
//! the KEDA objects against KEDA's CRD models with unknown fields forbidden; checks that
//! values.schema.json refuses bad values; and asserts probes, a grace period covering the
//! drain, and the connections trigger. It runs in the virtualenv scripts/test makes.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_chart_lints_renders_and_validates() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join("target/chart-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test makes it (helm-python-sdk, kubernetes-validate, cloudcoil-models-keda)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("scripts/check-chart.py"))
        .output()
        .expect("running scripts/check-chart.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    for scenario in [
        "default",
        "keda-metrics-api",
        "keda-prometheus",
        "hpa",
        "ingress-and-monitor",
    ] {
        assert!(
            stdout.contains(&format!("check-chart: {scenario}: ")),
            "{scenario} not checked:\n{stdout}"
        );
    }
}
