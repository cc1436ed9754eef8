"""The container and Kubernetes files, checked offline.

- ``deploy/kubernetes/*.yaml``: every built-in resource validates against the Kubernetes JSON
  schemas shipped by ``kubernetes-validate`` (strict: no unknown fields); the two Prometheus
  Operator resources (ServiceMonitor, PrometheusRule) are checked field by field here; then the
  pieces must fit together: selectors match pod labels, named ports exist, probes hit the
  node's real endpoints, the grace period covers the drain, every ``PUSHSVC_*`` variable is a
  setting, the PrometheusRule is the rules file (and passes ``promtool check rules``).
- ``Containerfile``: a multi-stage build whose final stage is a slim Python running as a
  non-root user with a HEALTHCHECK on ``/healthz``, installing prebuilt wheels only, with no
  compilers or package manager installs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cli.export import RUNBOOK_PLACEHOLDER, prometheus_rule
from pushsvc import __version__
from pushsvc.settings import MonitorSettings, NodeSettings, Settings
from tests.support import ROOT, UNIT

KUBE = ROOT / "deploy" / "kubernetes"
KUBE_VERSION = "1.30"
CONTAINERFILE = ROOT / "Containerfile"
RULES = ROOT / "alerts" / "pushsvc.rules.yml"
CRDS = {"ServiceMonitor", "PrometheusRule"}


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(KUBE.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def test_the_manifests_hold_what_a_cluster_needs() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in documents())
    assert kinds == [
        ("Deployment", "pushsvc"),
        ("Deployment", "pushsvc-monitor"),
        ("PodDisruptionBudget", "pushsvc"),
        ("PrometheusRule", "pushsvc"),
        ("Service", "pushsvc"),
        ("Service", "pushsvc-client"),
        ("Service", "pushsvc-monitor"),
        ("ServiceMonitor", "pushsvc"),
    ]


@pytest.mark.parametrize(
    ("name", "doc"),
    [(f, d) for f, d in documents() if d["kind"] not in CRDS],
    ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}",
)
def test_built_in_resources_validate_against_the_kubernetes_schemas(
    name: str, doc: dict[str, Any]
) -> None:
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_the_schema_validation_catches_a_mistake() -> None:
    deployment = by_kind("Deployment")["pushsvc"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container(broken)["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


# -- the nodes --------------------------------------------------------------------------------


def named_ports(deployment: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}


def test_the_node_deployment_probes_drains_and_runs_unprivileged() -> None:
    node = by_kind("Deployment")["pushsvc"]
    defaults = Settings(api_keys=["k"], token_secret="s" * 32)
    ports = named_ports(node)
    assert ports == {"client": defaults.port, "internal": defaults.internal_port}
    main = container(node)
    assert main["args"] == ["serve"]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "internal"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "client"}

    env = env_of(node)
    assert env["PUSHSVC_NODE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    drain_timeout = float(env["PUSHSVC_DRAIN_TIMEOUT"])
    command = " ".join(main["lifecycle"]["preStop"]["exec"]["command"])
    assert "pushsvc drain" in command and "--wait" in command, command
    assert f"--api-url http://127.0.0.1:{defaults.internal_port}" in command, command
    timeout = re.search(r"--timeout (\d+)", command)
    assert timeout, command
    hook = float(timeout.group(1))
    grace = node["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > hook + drain_timeout, (grace, hook, drain_timeout)

    pod = node["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]  # writable scratch
    spread = pod["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"] == node["spec"]["selector"]["matchLabels"]


def test_the_monitor_runs_as_its_own_deployment() -> None:
    monitor = by_kind("Deployment")["pushsvc-monitor"]
    main = container(monitor)
    assert main["args"] == ["monitor"]
    port = MonitorSettings(api_keys=["k"], token_secret="s" * 32).monitor_port
    assert named_ports(monitor) == {"metrics": port}
    assert main["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert monitor["spec"]["replicas"] >= 2  # the lease makes one active, the other waits
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]


def test_every_environment_variable_is_a_setting() -> None:
    names = NodeSettings.model_fields.keys() | MonitorSettings.model_fields.keys()
    fields = {f"PUSHSVC_{name.upper()}" for name in names}
    for deployment in by_kind("Deployment").values():
        unknown = set(env_of(deployment)) - fields
        assert unknown == set(), unknown
    readme = (KUBE / "README.md").read_text()
    unknown = set(re.findall(r"PUSHSVC_[A-Z_]+", readme)) - fields
    assert unknown == set(), unknown


def test_selectors_match_the_pods_and_target_ports_exist() -> None:
    deployments = by_kind("Deployment")
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = by_kind("PodDisruptionBudget")["pushsvc"]
    node_labels = deployments["pushsvc"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= node_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    for name, service in by_kind("Service").items():
        targets = [
            d
            for d in deployments.values()
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, name
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named_ports(targets[0]), (name, port)


# -- the Prometheus Operator resources ----------------------------------------------------------


def test_the_service_monitor_scrapes_both_jobs_the_rules_use() -> None:
    monitor = by_kind("ServiceMonitor")["pushsvc"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    selected = {
        name: service
        for name, service in by_kind("Service").items()
        if monitor["spec"]["selector"]["matchLabels"].items()
        <= service["metadata"]["labels"].items()
    }
    jobs = set(re.findall(r'job="([\w-]+)"', RULES.read_text()))
    assert set(selected) == jobs == {"pushsvc", "pushsvc-monitor"}  # job = the Service's name
    ports = {p["name"] for s in selected.values() for p in s["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "relabelings"}, endpoint
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
        for relabel in endpoint.get("relabelings", []):
            assert set(relabel) <= {"sourceLabels", "targetLabel", "action", "regex"}
    internal = next(e for e in monitor["spec"]["endpoints"] if e["port"] == "internal")
    assert {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "node"} in internal[
        "relabelings"
    ]


def test_the_prometheus_rule_is_the_rules_file() -> None:
    resource = by_kind("PrometheusRule")["pushsvc"]
    assert resource == prometheus_rule(RULES.read_text())
    assert RUNBOOK_PLACEHOLDER in (KUBE / "prometheusrule.yaml").read_text()
    for group in resource["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}


def test_the_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install prometheus)"
    groups = tmp_path / "groups.yml"
    groups.write_text(
        yaml.safe_dump({"groups": by_kind("PrometheusRule")["pushsvc"]["spec"]["groups"]})
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(groups)], capture_output=True, text=True,
        timeout=60 * UNIT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# -- the Containerfile ----------------------------------------------------------------------------


def stages() -> list[list[str]]:
    """The Containerfile's instructions (continuations joined), split by stage."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    found: list[list[str]] = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            found.append([])
        found[-1].append(line)
    return found


def test_the_container_builds_in_one_stage_and_runs_slim_in_another() -> None:
    build, final = stages()
    assert re.fullmatch(r"FROM \S+python:3\.11-slim AS build", build[0]), build[0]
    assert any("pip wheel" in line for line in build)
    for line in build:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line
    assert re.fullmatch(r"FROM \S+python:3\.11-slim", final[0]), final[0]
    final_text = "\n".join(final)
    assert "COPY --from=build /wheels" in final_text
    install = next(line for line in final if "pip install" in line)
    assert "--no-index" in install  # prebuilt wheels only: nothing is compiled or downloaded
    for forbidden in ("apt-get", "apk ", "gcc", "build-essential", "pip wheel", "COPY . "):
        assert forbidden not in final_text, forbidden


def test_the_container_runs_as_a_user_and_checks_its_health() -> None:
    _, final = stages()
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    health = next(line for line in final if line.startswith("HEALTHCHECK "))
    assert "CMD" in health
    env = " ".join(line for line in final if line.startswith("ENV "))
    assert "HEALTHCHECK_URL=http://127.0.0.1:8080/healthz" in env
    defaults = Settings(api_keys=["k"], token_secret="s" * 32)
    exposed = {int(p) for line in final if line.startswith("EXPOSE ") for p in line.split()[1:]}
    monitor_port = MonitorSettings(api_keys=["k"], token_secret="s" * 32).monitor_port
    assert exposed == {defaults.port, defaults.internal_port, monitor_port}
    assert "PUSHSVC_HOST=0.0.0.0" in env and "PUSHSVC_INTERNAL_HOST=0.0.0.0" in env
    assert final[-1] == 'CMD ["serve"]' and 'ENTRYPOINT ["pushsvc"]' in final


def test_the_image_tag_is_the_version() -> None:
    for name, deployment in by_kind("Deployment").items():
        assert container(deployment)["image"] == f"pushsvc:{__version__}", name
