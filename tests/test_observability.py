"""Metrics, dashboards and alerts against a real Prometheus scraping a live system.

The live system: a champion ``ch``, its canary ``ca`` and a decoy, as processes,
with one rendezvous worker. The scripted models score as each request says, so
the test shifts the champion's scores part way through and the canary's drift
test must notice; Prometheus (Debian's package, started here on a free
loopback port, stopped by PID) scrapes everything and evaluates the shipped
alert rules. Every panel of every shipped dashboard must return data.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rendezvous.operations.broker import free_port
from tests.browser import CHART_NAMES, empty_charts, rendered_charts
from tests.conftest import REPO, System, eventually, scripted_spec, settings_for, wait_until, write_policy

pytestmark = pytest.mark.slow
COMPOSE = REPO / "compose"
POLICY = """\
    name: observed
    version: 1
    sla_ms: 100
    default: {score: 0.0}
    routing:
      strategy: fixed
      chain: [{model: ch, wait_ms: 30}, {model: ca}]
    canary: {model: ca, reference: 150, window: 100}
"""


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Prometheus is not installed (Debian: apt-get install prometheus; scripts/test does it as root)")
    return binary


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


class Prometheus:
    def __init__(self, directory: Path, targets: dict[str, list[int]]) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(COMPOSE / "prometheus" / "alerts.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}
                               for job, ports in targets.items()],
        }
        path = directory / "prometheus.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.log = directory / "prometheus.log"
        for _ in range(3):  # Prometheus cannot bind port 0 and say which: if the free port is taken first, retry
            self.port = free_port()
            with open(self.log, "ab") as out:
                self.process = subprocess.Popen(
                    [prometheus_binary(), f"--config.file={path}", f"--storage.tsdb.path={directory / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.port}"], stdout=out, stderr=subprocess.STDOUT)
            self.url = f"http://127.0.0.1:{self.port}"
            if eventually(lambda: self.process.poll() is not None or self._ready(), timeout=30) \
                    and self.process.poll() is None:
                return
        pytest.fail(f"Prometheus did not start: {self.log.read_text()[-2000:]}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list:
        reply = get_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]
                if a["state"] == "firing"}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture(scope="module")
def observed(broker, tmp_path_factory) -> Iterator[tuple[System, Prometheus, dict[str, int]]]:

    directory = tmp_path_factory.mktemp("observed")
    system = System(settings_for(broker), directory)
    prometheus = None
    try:  # a setup that fails still stops what it started (no Prometheus or model left running)
        models = system.start_models(scripted_spec(directory, "ch", 0.5), scripted_spec(directory, "ca", 0.5))
        decoy = system.runtime.start_decoy(directory / "archive")
        workers = system.start_workers(write_policy(directory, POLICY))
        system.wait_ready(models + [decoy] + workers)
        ports = {c.spec.name: c.http_port for c in system.runtime.supervisor.children()}
        prometheus = Prometheus(directory, {"rendezvous": [ports[w] for w in workers],
                                            "models": [ports[m] for m in models], "decoy": [ports[decoy]]})
        # every target scraped once before traffic: counters are seen at 0, so increase() sees them grow
        assert eventually(lambda: len(prometheus.query("up == 1")) == 4, timeout=30), prometheus.query("up")
        system.warm_up()
        rng = random.Random(5)

        def request(shift: float) -> dict:
            x = rng.random()
            return {"ca_score": x, "ch_score": min(x + rng.gauss(0, 0.02) + shift, 1.5)}

        calm = [(f"calm-{i}", request(0.0)) for i in range(400)]
        system.send(calm, rate=200)
        system.produce_raw(system.topics.requests, b"this is not JSON", b"bad-1")  # one dead letter
        system.send([(f"shifted-{i}", request(0.3)) for i in range(400)], rate=200)
        system.results_for([f"shifted-{i}" for i in range(400)])
        for rid, features in calm:  # the truth, later: a page is bad when the canary scored it over 0.5
            system.sender.send_outcome(rid, features["ca_score"] > 0.5, system.collector.results[rid][0].partition)
        system.sender.flush()
        wait_until(lambda: len(prometheus.query('rendezvous_model_quality{measure="roc_auc"}')) == 2,
                   "Prometheus scraped both models' quality on the outcomes (late scores' versions included)",
                   timeout=30)
        written = system.stats(workers[0])["results_written"]
        wait_until(lambda: prometheus.query(f"sum(rendezvous_results_total) >= {written}"),
                   "Prometheus scraped the worker after the last result", timeout=30)
        system.worker = workers[0]
        yield system, prometheus, {"worker": ports[workers[0]], "model": ports[models[0]], "decoy": ports[decoy]}
    finally:
        if prometheus is not None:
            prometheus.stop()
        system.close()


def families(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        return {f.name: f for f in text_string_to_metric_families(reply.read().decode())}


def labels_of(family) -> set[str]:  # noqa: ANN001
    return {k for s in family.samples for k in s.labels if k not in ("le", "quantile")}


@pytest.mark.parametrize(("component", "name", "kind", "labels"), [
    ("worker", "rendezvous_results", "counter", {"model", "reason"}),
    ("worker", "rendezvous_sla_misses", "counter", {"cause"}),
    ("worker", "rendezvous_decision_lateness_seconds", "histogram", set()),
    ("worker", "rendezvous_result_write_seconds", "histogram", set()),
    ("worker", "rendezvous_scores_dropped", "counter", {"kind", "model"}),
    ("worker", "rendezvous_deadletters", "counter", {"reason"}),
    ("worker", "rendezvous_result_latency_seconds", "histogram", {"reason"}),
    ("worker", "rendezvous_prediction_latency_seconds", "histogram", set()),
    ("worker", "rendezvous_score_arrival_seconds", "histogram", {"model"}),
    ("worker", "rendezvous_model_score", "histogram", {"model"}),
    ("worker", "rendezvous_pending_requests", "gauge", set()),
    ("worker", "rendezvous_oldest_pending_age_seconds", "gauge", set()),
    ("worker", "rendezvous_consumer_lag_records", "gauge", {"topic"}),
    ("worker", "rendezvous_posterior_mean", "gauge", {"model"}),
    ("worker", "rendezvous_reward_changes", "counter", {"model"}),
    ("worker", "rendezvous_traffic_share", "gauge", {"model"}),
    ("worker", "rendezvous_policy_sla_seconds", "gauge", set()),
    ("worker", "rendezvous_model_roc_auc", "gauge", {"model"}),
    ("worker", "rendezvous_model_quality", "gauge", {"model", "version", "measure"}),
    ("worker", "rendezvous_drift_detected", "gauge", {"champion", "canary"}),
    ("worker", "rendezvous_drift_ks", "gauge", {"champion", "canary", "against"}),
    ("worker", "rendezvous_drift_psi", "gauge", {"champion", "canary", "against"}),
    ("worker", "rendezvous_drift_wasserstein", "gauge", {"champion", "canary", "against"}),
    ("worker", "rendezvous_drift_paired_mean_difference", "gauge", {"champion", "canary"}),
    ("worker", "rendezvous_drift_alarms", "counter", {"champion", "canary"}),
    ("model", "rendezvous_model_scoring_seconds", "histogram", {"model", "version"}),
    ("model", "rendezvous_model_request_to_score_seconds", "histogram", {"model", "version"}),
    ("model", "rendezvous_model_scores", "counter", {"model", "version", "outcome"}),
    ("model", "rendezvous_model_consumer_lag_records", "gauge", {"model", "version"}),
    ("decoy", "rendezvous_decoy_records", "counter", set()),
    ("decoy", "rendezvous_decoy_bytes", "counter", set()),
])
def test_metric_names_types_and_labels_on_a_live_run(observed, component, name, kind, labels):
    _, _, ports = observed
    family = families(ports[component]).get(name)
    assert family is not None, f"{name} missing from the {component}'s /metrics"
    assert (family.type, labels_of(family)) == (kind, labels)


def test_the_worker_counts_what_happened(observed):
    system, _, ports = observed
    found = families(ports["worker"])
    results = {(s.labels["model"], s.labels["reason"]): s.value for s in found["rendezvous_results"].samples}
    assert sum(results.values()) >= 801 and results[("ch", "preferred")] > 0  # 800 and the warm-up
    dead = {s.labels["reason"]: s.value for s in found["rendezvous_deadletters"].samples}
    assert dead["invalid_request"] == 1 and dead["too_large"] == 0
    detected = found["rendezvous_drift_detected"].samples[0]
    assert (detected.labels["champion"], detected.labels["canary"], detected.value) == ("ch", "ca", 1.0)
    paired = found["rendezvous_drift_paired_mean_difference"].samples[0].value
    assert 0.2 < paired < 0.4  # the shift was +0.3 on the champion alone


def test_the_drift_alarm_came_after_the_shift_and_soon(observed):
    system, _, _ = observed
    canary = system.stats(system.worker)["canary"]
    calm = 400 + 1  # warm-up included: the champion's scores before the shift
    assert canary["alarms"] == 1 and canary["first_alarm_at"] > calm, canary
    # A 15-sd paired shift maps to the largest normal score a 150-score reference has (~2.7 sd),
    # and the threshold of so small a reference is high (~150): a few dozen scores.
    assert canary["first_alarm_at"] - calm <= 80, canary


def test_every_dashboard_panel_query_returns_data(observed):
    _, prometheus, _ = observed
    empty = []
    for path in sorted((COMPOSE / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                if not prometheus.query(target["expr"]):
                    empty.append(f"{path.name}: {panel['title']}: {target['expr']}")
    assert not empty, "\n".join(empty)


def test_the_report_draws_every_chart_from_prometheus_and_a_browser_renders_them(observed, tmp_path: Path):
    """`rendezvous report` over the live run: every chart has data, and headless Chromium decodes each one."""
    _, prometheus, _ = observed
    wait_until(lambda: len(prometheus.query("rendezvous_model_roc_auc")) == 2, "Prometheus has both models' ROC AUC",
               timeout=30)
    done = subprocess.run([sys.executable, "-m", "rendezvous", "report", "--prometheus", prometheus.url, "--since", "5m",
                           "--out", str(tmp_path / "report")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    page = Path(done.stdout.strip())
    assert page == tmp_path / "report" / "index.html" and not empty_charts(page), empty_charts(page)
    assert rendered_charts(page) == set(CHART_NAMES)
    assert "<th>SLA</th><td>100 ms</td>" in page.read_text()  # from rendezvous_policy_sla_seconds: the latency chart's line


def test_the_drift_and_dead_letter_alerts_fire(observed):
    _, prometheus, _ = observed
    wait_until(lambda: {"RendezvousChampionDrift", "RendezvousDeadLetters"} <= prometheus.firing(),
               "the drift and dead-letter alerts fire", timeout=30)
    # (whether the SLA alert fires depends on the machine's load: alerts.test.yml unit-tests its rule)


def _read_back(dashboard: dict) -> dict:
    """A dashboard as Grafana's own generated types (grafana-foundation-sdk) read it and write it again."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    return json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))


def test_every_dashboard_is_what_grafanas_schema_types_read_back():
    """Each file, read by the types generated from Grafana's dashboard schema, comes back unchanged: no field
    Grafana does not know, none of the wrong shape. (A misspelt field, or a grid position that is not one, fails.)"""
    files = sorted((COMPOSE / "grafana" / "dashboards").glob("*.json"))
    assert len(files) == 4
    for path in files:
        dashboard = json.loads(path.read_text())
        assert _read_back(dashboard) == dashboard, path.name
        assert {p["type"] for p in dashboard["panels"]} <= {"timeseries", "stat", "heatmap"}
    misspelt = {**dashboard, "refersh": "10s"}
    assert _read_back(misspelt) != misspelt
    misshapen = {**dashboard, "panels": [{**dashboard["panels"][0], "gridPos": "top left"}]}
    assert _read_back(misshapen) != misshapen


def test_rules_dashboards_and_compose_files_check_out(tmp_path: Path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    rules = COMPOSE / "prometheus"
    for argv in ([promtool, "check", "rules", str(rules / "alerts.yml")], [promtool, "test", "rules", "alerts.test.yml"]):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=rules)
        assert done.returncode == 0, done.stdout + done.stderr
    config = tmp_path / "prometheus.yml"
    config.write_text((rules / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", str(rules / "alerts.yml")))
    done = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert subprocess.run([sys.executable, str(COMPOSE / "dashboards.py"), "--check"]).returncode == 0


def test_the_compose_file_mounts_what_exists_and_runs_every_role():
    import yaml

    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "rendezvous", "model-boosted", "model-forest", "model-baseline", "decoy", "prometheus",
            "grafana"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name} mounts {source}, which does not exist"
    scrape = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    targets = {t.split(":")[0] for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets <= set(services), targets - set(services)
    from policies import load_policy

    policy = load_policy(REPO / "policies" / "example.yaml")
    assert policy.canary is not None and policy.canary.model == "baseline"  # the canary the dashboards watch
    assert "model-baseline" in services
    from rendezvous.operations.images import KAFKA_IMAGE

    assert services["kafka"]["image"] == KAFKA_IMAGE  # the embedded Kafka, built by `rendezvous image kafka`
    from rendezvous.operations.images import PROMETHEUS_IMAGE

    assert services["prometheus"]["image"] == f"${{PROMETHEUS_IMAGE:-{PROMETHEUS_IMAGE}}}"  # `image prometheus`


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose (Debian: apt-get install "
                                                                   "docker-compose)")
def test_debians_docker_compose_accepts_the_compose_file():
    done = subprocess.run(["docker-compose", "-f", str(COMPOSE / "docker-compose.yml"), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


