#!/usr/bin/env python3
"""Lints, renders and validates helm/wsgate without a helm binary or a cluster.

Helm's own Go SDK (PyPI helm-python-sdk) lints the chart (--strict) and renders it for the
default values and for KEDA (both triggers), the HPA, Ingress and a ServiceMonitor, existing
secrets and an external Redis; values.schema.json must refuse bad values. Every rendered
Kubernetes manifest is validated strictly (PyPI kubernetes-validate), the KEDA objects against
KEDA's CRD schema (PyPI cloudcoil-models-keda, unknown fields forbidden), and the semantics the
deploy issue asks for are asserted: probes, a grace period that covers the drain, the
connections trigger and its authentication, the WebSocket timeouts, a non-root read-only pod.

Run by tests/tests/helm_chart.rs with the virtualenv scripts/test makes (target/chart-venv).
Exits non-zero with one line per problem.
"""

import sys
import tomllib
import typing
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pydantic
import yaml
from cloudcoil.models.keda import v1alpha1 as keda

CHART = Path(__file__).resolve().parent.parent / "helm" / "wsgate"
KUBE_VERSION = "1.30.0"
problems = []


def problem(scenario, what):
    problems.append(f"{scenario}: {what}")


def forbid_unknown_fields(*roots):
    """KEDA's generated models allow extra keys; a typo in a ScaledObject must fail here. Every
    model reachable from the roots forbids them, rebuilt until nested schemas follow."""
    seen, todo = set(), list(roots)
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, pydantic.BaseModel):
                    todo.append(t)
                stack.extend(typing.get_args(t))
    for model in seen:
        model.model_config["extra"] = "forbid"
    # A parent's schema embeds its children's as built at the time: a few passes settle it.
    for _ in range(3):
        for model in seen:
            model.model_rebuild(force=True)


forbid_unknown_fields(keda.ScaledObject, keda.TriggerAuthentication)

SCENARIOS = {
    "default": {},
    "keda-metrics-api": {"keda": {"enabled": True}},
    "keda-prometheus": {"keda": {"enabled": True, "trigger": "prometheus"}},
    "hpa": {"autoscaling": {"enabled": True}},
    "ingress-and-monitor": {
        "ingress": {"enabled": True, "tls": [{"hosts": ["ws.example.com"], "secretName": "ws-tls"}]},
        "serviceMonitor": {"enabled": True},
    },
    "external-redis-and-secrets": {
        "redis": {"existingSecret": "redis", "deploy": False},
        "secrets": {"existingSecret": "wsgate-keys"},
        "podAntiAffinity": "hard",
        "keda": {"enabled": True},
    },
    "redis-url": {"redis": {"url": "rediss://:pw@redis.example.com:6380", "deploy": False}, "secrets": {"jwtSecret": "s3cret"}},
}

BAD_VALUES = [
    {"keda": {"trigger": "cpu"}},
    {"replicaCount": 0},
    {"drain": {"delaySeconds": -1, "periodSeconds": 10}},
    {"config": {"server": {"path": "ws"}}},
    {"unknownKey": True},
]


def manifests(values, scenario):
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="demo", namespace="prod")
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            if "ws://" not in text and "wss://" not in text:
                problem(scenario, "NOTES.txt does not say how to connect")
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def duration_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise ValueError(text)


def check_semantics(scenario, values, docs):
    deployments = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "demo-wsgate"]
    if len(deployments) != 1:
        return problem(scenario, "no wsgate Deployment")
    pod = deployments[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problem(scenario, "liveness probe is not /healthz")
    if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problem(scenario, "readiness probe is not /readyz")
    if "preStop" not in container.get("lifecycle", {}):
        problem(scenario, "no preStop hook")
    config = tomllib.loads(by_kind(docs, "ConfigMap")[0]["data"]["wsgate.toml"])
    drain = duration_seconds(config["server"]["drain_delay"]) + duration_seconds(config["server"]["drain_period"])
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    if pod["terminationGracePeriodSeconds"] < pre_stop + drain + 2:
        problem(scenario, f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop + drain + 2")
    if not pod["securityContext"].get("runAsNonRoot") or not container["securityContext"].get("readOnlyRootFilesystem"):
        problem(scenario, "the pod is not non-root with a read-only root filesystem")
    if "podAntiAffinity" not in pod.get("affinity", {}):
        problem(scenario, "no pod anti-affinity")
    if not container.get("resources", {}).get("requests"):
        problem(scenario, "no resource requests")
    env = {e["name"]: e for e in container["env"]}
    if "secretKeyRef" not in env.get("WSGATE_ADMIN__TOKEN", {}).get("valueFrom", {}):
        problem(scenario, "the admin token does not come from a Secret")
    if config["admin"]["listen"].startswith("127."):
        problem(scenario, "the admin listener is loopback: probes and KEDA cannot reach it")
    if not by_kind(docs, "PodDisruptionBudget"):
        problem(scenario, "no PodDisruptionBudget")
    services = by_kind(docs, "Service")
    if not any({p["name"] for p in s["spec"]["ports"]} >= {"ws", "admin"} for s in services):
        problem(scenario, "no Service with the client and admin ports")

    keda_on = values.get("keda", {}).get("enabled", False)
    scaled = by_kind(docs, "ScaledObject")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    if keda_on:
        if len(scaled) != 1 or hpa:
            problem(scenario, "KEDA on: one ScaledObject and no HPA expected")
        elif "replicas" in deployments[0]["spec"]:
            problem(scenario, "a scaled Deployment must not fix replicas")
        else:
            trigger = scaled[0]["spec"]["triggers"][0]
            meta = trigger["metadata"]
            if trigger["type"] == "metrics-api":
                if meta.get("valueLocation") != "connections_total" or not meta.get("url", "").endswith("/cluster"):
                    problem(scenario, "the metrics-api trigger does not read GET /cluster's connections_total")
                auths = by_kind(docs, "TriggerAuthentication")
                ref = trigger.get("authenticationRef", {}).get("name")
                if meta.get("authMode") != "bearer" or not auths or auths[0]["metadata"]["name"] != ref:
                    problem(scenario, "the metrics-api trigger is not authenticated with a bearer token")
                elif auths[0]["spec"]["secretTargetRef"][0]["key"] != "admin-token":
                    problem(scenario, "the bearer token is not the admin token")
            elif trigger["type"] == "prometheus":
                if "wsgate_connections_active" not in meta.get("query", ""):
                    problem(scenario, "the prometheus trigger does not sum wsgate_connections_active")
            else:
                problem(scenario, f"unexpected trigger {trigger['type']}")
    elif scaled:
        problem(scenario, "a ScaledObject without KEDA")
    if values.get("autoscaling", {}).get("enabled") and not keda_on and len(hpa) != 1:
        problem(scenario, "autoscaling on: an HPA expected")

    for ingress in by_kind(docs, "Ingress"):
        notes = ingress["metadata"].get("annotations", {})
        for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
            if int(notes.get(key, 0)) < 3600:
                problem(scenario, f"{key} under 3600 s: WebSocket sessions would be cut")
    if values.get("ingress", {}).get("enabled") and not by_kind(docs, "Ingress"):
        problem(scenario, "ingress on but no Ingress")


def main():
    for scenario, values in SCENARIOS.items():
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
        for message in report.get("messages", []):
            if message["severity"] >= 2:
                problem(scenario, f"lint: {message['path']}: {message['error']}")
        for error in report.get("errors", []):
            problem(scenario, f"lint: {error}")
        try:
            docs = manifests(values, scenario)
        except helm.HelmError as e:
            problem(scenario, f"render: {e}")
            continue
        for doc in docs:
            kind = doc["kind"]
            name = f"{kind}/{doc['metadata']['name']}"
            if doc["apiVersion"].startswith("keda.sh/"):
                try:
                    getattr(keda, kind).model_validate(doc)
                except pydantic.ValidationError as e:
                    problem(scenario, f"{name} against KEDA's schema: {e}")
            elif doc["apiVersion"].startswith("monitoring.coreos.com/"):
                if doc["spec"]["endpoints"][0]["port"] != "admin":
                    problem(scenario, f"{name} does not scrape the admin port")
            else:
                try:
                    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    problem(scenario, f"{name}: {e.message} at {list(e.path)}")
        check_semantics(scenario, values, docs)
        print(f"check-chart: {scenario}: {len(docs)} manifests")
    with helm.Chart.load(str(CHART)) as chart:
        for bad in BAD_VALUES:
            try:
                chart.validate_schema(bad)
                problem("schema", f"values.schema.json accepts {bad}")
            except helm.HelmError:
                pass
        try:
            chart.render({"redis": {"deploy": False}}, name="demo", namespace="prod")
            problem("no-redis", "renders a multi-replica gateway without Redis")
        except helm.HelmError:
            pass
    for p in problems:
        print(f"check-chart: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
