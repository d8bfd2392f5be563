"""deploy/: the dashboard's PromQL is valid (promtool) and uses only metrics streamer exports;
the compose stack, Prometheus and Alertmanager configs, Kubernetes manifests, Dockerfile and
IAM policies hold together."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamer.aggregate.anomaly import Settings
from streamer.aggregate.context import merge
from streamer.aggregate.detection import Detection
from streamer.aggregate.state import FlowState
from streamer.aggregate.windows import window_batch
from streamer.config import AlertsConfig, parse_config
from streamer.export.alerts import Alerter
from streamer.export.metrics import DetectionCollector, FlowCollector, InsightsCollector, InterfaceInfoCollector
from streamer.export.telemetry import Telemetry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamer.json"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/test.sh installs Debian's prometheus and prometheus-alertmanager)")
    return path


def exported_names() -> set[str]:
    """Every sample name streamer's registry can expose (built from the real collectors)."""
    registry = CollectorRegistry()
    Telemetry(registry)
    Alerter(AlertsConfig(), registry)
    registry.register(FlowCollector(FlowState))
    registry.register(InsightsCollector(FlowState, 0.045, nacl_pairing=True))  # every name it can expose
    batch = window_batch(
        pa.table(
            {
                "interface-id": ["eni-a"],
                "action": ["REJECT"],
                "end": pa.array([100], pa.int64()),
                "vpc-id": ["vpc-1"],
                "subnet-id": ["s-1"],
            }
        ),
        60,
    )
    detection, _ = Detection.create(Settings(), 900).advance([batch])
    registry.register(DetectionCollector(lambda: detection))
    registry.register(InterfaceInfoCollector(lambda eni: merge(eni, {"vpc_id": "vpc-1"}, None), lambda: ["eni-a"]))
    names: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
    return names


METRIC = re.compile(r"(?<![:\w])((?:vpcflow|streamer)_[a-z0-9_]+)\b")


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_dashboard_is_well_formed_with_unique_panel_ids() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert doc["uid"]
    assert doc["title"]
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for topic in ("rejected", "accepted", "top 10", "bytes", "anomaly score", "delivery delay", "errors", "lag", "inputs"):
        assert topic in titles, topic


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 12
    rules = {"groups": [{"name": "dashboard", "rules": []}]}
    for i, expr in enumerate(exprs):
        concrete = expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$interface", ".*")
        rules["groups"][0]["rules"].append({"record": f"dashboard:expr_{i}", "expr": concrete})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_and_rules_use_only_metrics_streamer_exports() -> None:
    exported = exported_names()
    texts = [*dashboard_exprs(), *(p.read_text() for p in (DEPLOY / "prometheus" / "rules").glob("*.yml"))]
    used = {m for text in texts for m in METRIC.findall(text)}
    assert used
    unknown = {m for m in used - exported if not m.startswith(("vpcflow:", "interface_id:"))}
    assert unknown == set()


def test_compose_stack_parses_and_mounts_files_that_exist() -> None:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"streamer", "prometheus", "alertmanager", "grafana"} <= set(services)
    assert "demo" in services["streamer"]["command"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume).split(":")[0]  # ${VAR:-default} -> default
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules" / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [tool("promtool"), "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(job["job_name"] == "streamer" for job in config["scrape_configs"])


def test_alertmanager_config_is_valid() -> None:
    proc = subprocess.run(
        [tool("amtool"), "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    doc = json.loads(DASHBOARD.read_text())
    assert all(p["datasource"]["uid"] == uid for p in doc["panels"] if p["type"] != "row")
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "streamer.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(m.endswith(":" + provider["providers"][0]["options"]["path"] + ":ro") for m in mounts)


def k8s_docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "streamer.yaml").read_text()) if d}


def test_kubernetes_manifests_hold_together() -> None:
    docs = k8s_docs()
    assert {"ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"} <= set(docs)
    config = parse_config(yaml.safe_load(docs["ConfigMap"]["data"]["streamer.yaml"]), {})
    pod = docs["Deployment"]["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(config.http.port)
    container = pod["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == str(config.checkpoint.path.parent)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_kubernetes_fleet_variant_is_three_stateless_replicas_over_the_secret_database() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "streamer-fleet.yaml").read_text()) if d}
    assert "PersistentVolumeClaim" not in docs
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    secret = env["STREAMER__CHECKPOINT__URL"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] == docs["Secret"]["metadata"]["name"]
    assert secret["key"] in docs["Secret"]["stringData"]
    assert env["STREAMER__FLEET__REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert all("persistentVolumeClaim" not in v for v in pod["spec"]["volumes"])
    pdb = docs["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    raw = yaml.safe_load(docs["ConfigMap"]["data"]["streamer.yaml"])
    environ = {"STREAMER__CHECKPOINT__URL": docs["Secret"]["stringData"]["url"], "STREAMER__FLEET__REPLICA_ID": "pod-a"}
    config = parse_config(raw, environ)
    assert config.checkpoint.url is not None
    assert config.fleet.replica_id == "pod-a"
    assert "change-me" not in repr(config)  # the URL's password never shows
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(config.http.port)


def test_compose_fleet_profile_is_postgres_and_three_replicas_scraped_by_prometheus() -> None:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    fleet = {name for name, s in services.items() if "fleet" in s.get("profiles", [])}
    assert fleet == {"postgres", "streamer-1", "streamer-2", "streamer-3"}
    replicas = [services[f"streamer-{i}"] for i in (1, 2, 3)]
    ids = [r["environment"]["STREAMER__FLEET__REPLICA_ID"] for r in replicas]
    assert ids == ["streamer-1", "streamer-2", "streamer-3"]
    urls = {r["environment"]["STREAMER__CHECKPOINT__URL"] for r in replicas}
    assert len(urls) == 1
    assert "@postgres:5432/" in urls.pop()
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-fleet.yml").read_text())
    targets = next(j for j in scrape["scrape_configs"] if j["job_name"] == "streamer")["static_configs"][0]["targets"]
    assert targets == [f"streamer-{i}:9108" for i in (1, 2, 3)]


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user
    assert user[-1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), src


#: What each source's code calls, as IAM actions.
#: SQS's batch calls have no IAM action of their own: they are authorized by their one-message action
API_TO_ACTION = {
    "list_objects_v2": "s3:ListBucket",
    "get_object": "s3:GetObject",
    "change_message_visibility_batch": "sqs:ChangeMessageVisibility",
    "delete_message_batch": "sqs:DeleteMessage",
}
CALL = re.compile(r"\b(s3|sqs|kinesis|logs|ec2)\.(?!get_paginator)(\w+)\(|get_paginator\(\"(\w+)\"\)")
SERVICE_OF_PAGINATOR = {"list_objects_v2": "s3", "filter_log_events": "logs"}
POLICY_FOR_SOURCE = {
    "s3_poll.py": "s3.json",
    "s3_sqs.py": "s3_sqs.json",
    "kinesis.py": "kinesis.json",
    "cloudwatch.py": "cloudwatch.json",
    "s3_poll.py (layout: firehose)": "s3-firehose.json",
}
#: What AWS documents a Firehose delivery role needs to write objects to a bucket.
FIREHOSE_S3_ACTIONS = {
    "s3:AbortMultipartUpload",
    "s3:GetBucketLocation",
    "s3:GetObject",
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:PutObject",
}


def action(service: str, api: str) -> str:
    if api in API_TO_ACTION:
        return API_TO_ACTION[api]
    return f"{service}:{''.join(part.capitalize() for part in api.split('_'))}"


def actions_called(module: str) -> set[str]:
    """The IAM actions a source module's AWS calls need (read from its code)."""
    sources = ROOT / "streamer" / "sources"
    code = (sources / module).read_text()
    if module in ("s3_poll.py", "s3_sqs.py"):
        code += (sources / "s3_objects.py").read_text()  # both read objects through stream_object
    needed = set()
    for m in CALL.finditer(code):
        if m.group(1):
            needed.add(action(m.group(1), m.group(2)))
        else:
            needed.add(action(SERVICE_OF_PAGINATOR[m.group(3)], m.group(3)))
    return {a for a in needed if not a.endswith(":GetPaginator")}


def granted_actions(doc: dict[str, Any]) -> set[str]:
    return {a for s in doc["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}


@pytest.mark.parametrize(("module", "policy"), sorted(POLICY_FOR_SOURCE.items()))
def test_iam_policies_grant_exactly_what_each_source_calls(module: str, policy: str) -> None:
    doc = json.loads((DEPLOY / "iam" / policy).read_text())
    assert doc["Version"] == "2012-10-17"
    granted = granted_actions(doc)
    needed = actions_called(module.split()[0])
    assert needed == granted, (sorted(needed), sorted(granted))


def test_firehose_source_calls_no_aws_api() -> None:
    """firehose_http only listens: it needs no policy of its own (Firehose's role needs one, below)."""
    code = (ROOT / "streamer" / "sources" / "firehose_http.py").read_text()
    assert not CALL.search(code)
    assert "clients.get" not in code


@pytest.mark.parametrize(
    ("policy", "bucket"),
    [("firehose-to-s3.json", "my-firehose-destination"), ("firehose-http-endpoint.json", "my-firehose-failed-deliveries")],
)
def test_firehose_delivery_roles_write_exactly_their_bucket(policy: str, bucket: str) -> None:
    """The S3 destination, and the HTTP endpoint's bucket for failed records: AWS's documented actions, one bucket."""
    doc = json.loads((DEPLOY / "iam" / policy).read_text())
    (statement,) = doc["Statement"]
    assert set(statement["Action"]) == FIREHOSE_S3_ACTIONS
    assert statement["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    trust = json.loads((DEPLOY / "iam" / "firehose-role-trust.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "firehose.amazonaws.com"}


def test_every_iam_document_is_valid_json_with_alphanumeric_sids() -> None:
    for path in (DEPLOY / "iam").glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["Version"] == "2012-10-17", path.name
        for statement in doc["Statement"]:
            assert re.fullmatch(r"[A-Za-z0-9]*", statement.get("Sid", "")), path.name


def test_dashboard_joins_on_the_info_metric_hold_when_fleet_replicas_disagree(tmp_path: Path) -> None:
    """Two replicas export vpcflow_interface_info for the same ENI with different labels for a while (the leader
    described it, the other reads the shared cache up to 30 s later): the join still gives one row per ENI,
    named when a replica knows the name (a right side with two series for one interface_id fails the whole
    query in Prometheus)."""
    joins = [e for e in dashboard_exprs() if "vpcflow_interface_info" in e]
    assert joins
    series = [
        {"series": f'{name}{{instance="{r}",interface_id="eni-1",action="REJECT"}}', "values": "0+60x20"}
        for name in ("vpcflow_records_total", "vpcflow_ipv6_internet_inbound_records_total")
        for r in ("a:9108", "b:9108")
    ] + [
        {
            "series": 'vpcflow_interface_info{instance="a:9108",interface_id="eni-1",name="web-1",interface_type="interface"}',
            "values": "1x20",
        },
        {"series": 'vpcflow_interface_info{instance="b:9108",interface_id="eni-1",interface_type="interface"}', "values": "1x20"},
    ]
    tests = [
        {
            "expr": "count by (interface_id, name) ("
            + expr.replace("$__rate_interval", "5m").replace("$__range", "5m").replace("$interface", ".*")
            + ")",
            "eval_time": "10m",
            "exp_samples": [{"labels": '{interface_id="eni-1",name="web-1"}', "value": 1}],
        }
        for expr in joins
    ]
    path = tmp_path / "join.test.yml"
    path.write_text(yaml.safe_dump({"tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}]}))
    proc = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
