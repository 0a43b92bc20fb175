"""deploy/grafana and deploy/prometheus: the dashboard imports anywhere, the alert rules pass
promtool and fire when they should, every series they query is one a live server exports,
and a real Prometheus with the example config scrapes a live server."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from del_client import Client, ClientConfig

SERIES = re.compile(r"\b(del_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(del_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds when it scrapes (job, instance) or the Operator's relabelling adds
# (namespace), and histograms' le.
TARGET_LABELS = {"job", "instance", "namespace", "le"}
# What the issue asks the dashboard to show, by the series that carry it.
DASHBOARD_MUST_SHOW = {
    "del_time_to_first_token_seconds_bucket", "del_inter_token_latency_seconds_bucket",
    "del_e2e_request_latency_seconds_bucket", "del_generation_tokens_total", "del_requests_total",
    "del_num_requests_running", "del_num_requests_waiting", "del_wire_received_bytes_total",
    "del_wire_sent_bytes_total", "del_payload_bits_per_token_sum", "del_compression_ratio_sum",
    "del_requests_by_privacy_level_total", "del_epsilon_per_prompt_bucket",
}  # fmt: skip


def dashboard(deploy_dir: Path) -> dict:
    return json.loads((deploy_dir / "grafana" / "del-dashboard.json").read_text())


def dashboard_queries(deploy_dir: Path) -> list[str]:
    board = dashboard(deploy_dir)
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return queries + [v["definition"] for v in board["templating"]["list"] if "definition" in v]


def alert_rules(deploy_dir: Path) -> list[dict]:
    groups = yaml.safe_load((deploy_dir / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def generate_once(server, cache_dir: Path) -> None:
    config = ClientConfig(target=server.target, bundle_cache_dir=cache_dir)
    with Client(config) as client:
        client.generate("Once upon a time", mu=20, max_new_tokens=4).collect()


def test_dashboard_imports_anywhere_with_the_data_source_as_a_variable(deploy_dir):
    board = dashboard(deploy_dir)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    shown = {name for query in dashboard_queries(deploy_dir) for name in SERIES.findall(query)}
    assert shown >= DASHBOARD_MUST_SHOW, f"missing: {DASHBOARD_MUST_SHOW - shown}"


def test_every_series_the_dashboard_alerts_and_autoscaler_query_is_exported(
    server, rendered, deploy_dir, tmp_path
):
    generate_once(server, tmp_path)
    exposition = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    queries = dashboard_queries(deploy_dir) + [rule["expr"] for rule in alert_rules(deploy_dir)]
    hpa = next(o for o in rendered["k8s/overlays/gpu"] if o["kind"] == "HorizontalPodAutoscaler")
    queries += [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    for query in queries:
        names = SERIES.findall(query)
        missing = [name for name in names if name not in labels]
        assert not missing, f"{query!r} reads series no server exports: {missing}"
        for name, matchers in SELECTOR.findall(query):
            unknown = set(MATCHER.findall(matchers)) - labels[name] - TARGET_LABELS
            assert not unknown, f"{query!r}: {name} has no label {unknown}"
        known = set().union(TARGET_LABELS, *(labels[name] for name in names))
        for grouping in GROUPING.findall(query):
            unknown = {label.strip() for label in grouping.split(",")} - known
            assert not unknown, f"{query!r} groups by labels no series has: {unknown}"


def test_alert_rules_pass_promtool_and_fire_when_they_should(tool, deploy_dir):
    promtool = tool("promtool")
    rules_dir = deploy_dir / "prometheus"
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        out = subprocess.run([promtool, *command], cwd=rules_dir, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert out.returncode == 0, f"promtool {' '.join(command)}:\n{out.stdout}{out.stderr}"


def test_alert_tests_cover_every_alert(deploy_dir):
    tests = yaml.safe_load((deploy_dir / "prometheus" / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alert_rules(deploy_dir)}


def test_operator_rules_are_the_rules_promtool_checks(rendered, kustomization, deploy_dir):
    rule = next(o for o in rendered[kustomization] if o["kind"] == "PrometheusRule")
    alerts = yaml.safe_load((deploy_dir / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def test_example_scrape_config_passes_promtool(tool, deploy_dir):
    out = subprocess.run([tool("promtool"), "check", "config", "prometheus.yml"],
                         cwd=deploy_dir / "prometheus", capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_with_the_example_config_scrapes_a_live_server(
    tool, server, deploy_dir, tmp_path
):
    config = yaml.safe_load((deploy_dir / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(deploy_dir / "prometheus" / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [urllib.parse.urlsplit(server.metrics_url).netloc]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    api = f"http://127.0.0.1:{free_port()}/api/v1"
    command = [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
               f"--storage.tsdb.path={tmp_path / 'data'}", "--log.level=warn",
               f"--web.listen-address={api.split('/')[2]}"]  # fmt: skip
    log = tmp_path / "prometheus.log"
    with log.open("w") as out:
        prometheus = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        generate_once(server, tmp_path / "bundles")
        query = "del_generation_tokens_total" + '{job="del-server"}'
        deadline = time.monotonic() + 60
        while True:
            assert prometheus.poll() is None, log.read_text()
            try:
                rules = get_json(f"{api}/rules")["data"]["groups"][0]["rules"]
                result = get_json(f"{api}/query?" + urllib.parse.urlencode({"query": query}))
            except OSError:  # not listening yet
                rules, result = [], {"data": {"result": []}}
            series = result["data"]["result"]
            evaluated = rules and all(rule.get("lastEvaluation", "0001").startswith("2")
                                      for rule in rules)  # fmt: skip
            if series and evaluated:
                break
            assert time.monotonic() < deadline, f"no DEL series after 60 s: {result}, {rules}"
            time.sleep(0.5)
        assert float(series[0]["value"][1]) >= 4  # the generation's tokens, at least
        assert {rule["health"] for rule in rules} == {"ok"}, rules
        assert "DELServerDown" not in {
            rule["name"] for rule in rules if rule["state"] != "inactive"
        }
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
