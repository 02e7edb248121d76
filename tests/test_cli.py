"""The command line, run as a user runs it: as a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from rendezvous.kernel.admin import TopicError, create_topic, ensure_topics
from rendezvous.kernel.topics import Topics
from rendezvous.operations.kafka_dist import kafka_available
from tests.browser import CHART_NAMES, empty_charts, rendered_charts
from tests.conftest import REPO, ProcessLines, wait_until

pytestmark = pytest.mark.slow


def rendezvous(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rendezvous", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_demo_runs_everything_embedded_and_prints_a_json_summary(tmp_path: Path):
    done = rendezvous("demo", "--requests", "600", "--rate", "100", "--shift-at", "0.6", "--json", "--workdir", str(tmp_path),
                      "--report", str(tmp_path / "report"),
                      "--max-late-share", "1",  # how many were on time is the benchmarks' figure, not this test's
                      env={"RENDEZVOUS_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("sent", "answered", "within_sla", "lost", "duplicated", "by_model", "by_reason", "latency_ms"):
        assert key in summary
    assert {"p50", "p99", "max"} <= set(summary["latency_ms"])
    assert (summary["sent"], summary["answered"], summary["lost"], summary["duplicated"]) == (600, 600, 0, 0)
    assert sum(summary["by_model"].values()) == 600 and sum(summary["by_reason"].values()) == 600
    assert sum(summary["late"].values()) == 600 - summary["within_sla"]  # every late answer has its cause
    assert set(summary["late"]) <= {"intake", "worker_busy"} and summary["broker"].startswith(
        "Apache Kafka" if kafka_available() else "Tansu")
    assert set(summary["by_model"]) <= {"boosted", "forest", "baseline", "(default)"}
    assert summary["decoy_archived"] == 600
    assert summary["accuracy_of_models"] > 0.85  # defaults, given when no model answered in time, are not judged
    drift = summary["drift"]  # the input shifts at request 360; the canary must see it, and not before
    assert (drift["canary"], drift["shift_at_request"], drift["detected"], drift["alarm_before_shift"]) == \
        ("baseline", 360, True, False)
    assert 0 < drift["requests_after_shift"] <= 240, drift
    assert "answered" in done.stderr  # the progress display went to stderr
    auc = summary["learned"]["roc_auc"]  # each model judged on the labels sent back as outcomes
    assert set(auc) == {"boosted", "forest", "baseline"} and all(0.8 < v <= 1 for v in auc.values()), auc
    quality = summary["learned"]["quality"]  # and the other measures, the policy's threshold deciding accuracy
    assert all(0.8 < q["accuracy"] <= 1 and 0 < q["brier"] < 0.2 and q["log_loss"] > 0 for q in quality.values()), quality
    page = Path(summary["report"])  # the run in pictures: every chart drawn with data, and decoded by a browser
    assert page == tmp_path / "report" / "index.html" and not empty_charts(page), empty_charts(page)
    assert rendered_charts(page) == set(CHART_NAMES)
    gateway = summary["gateway"]  # one OIP call through the HTTP gateway
    assert "error" not in gateway and gateway["model"] in {"boosted", "forest", "baseline", None}, gateway
    assert (gateway["model"] is None) == (gateway["reason"] == "default") and 0 <= gateway["score"] <= 1, gateway


def test_a_bad_policy_is_refused_at_start_naming_file_line_and_field(broker, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: p\nversion: 1\nsla_ms: 100\nrouting:\n  strategy: fixed\n  chain:\n"
                   "    - model: m1\n      wait_ms: -3\n    - model: m2\n")
    done = rendezvous("serve", "--policy", str(bad), "--broker", broker.bootstrap, timeout=60)
    assert done.returncode != 0
    assert f"{bad}:8: routing.chain[0].wait_ms: Input should be greater than or equal to 0" in done.stderr


def test_up_runs_the_declared_stack_until_sigterm_and_other_commands_find_its_broker(tmp_path: Path):
    """`up` without --broker starts the embedded broker and records it: `policy show` and `policy apply`
    find it, a second `rendezvous broker` is refused; if the broker dies, up starts it again and the stack
    answers again; SIGTERM stops every child and forgets the broker;
    started again on the same workdir, the policy applied before is still in force (the broker's data
    persists in WORKDIR/kafka)."""
    env = {"RENDEZVOUS_HOME": str(tmp_path / "home"), "RENDEZVOUS_STOP_GRACE_S": "5"}
    policy = tmp_path / "stack.yaml"
    policy.write_text(f"""\
name: stack
version: 1
sla_ms: 100
routing:
  strategy: fixed
  chain: [{{model: trivial}}]
deploy:
  models:
    - spec: {REPO}/containers/examples/trivial.yaml
      replicas: 2
  decoy: {{archive: {tmp_path}/archive}}
""")
    process = subprocess.Popen(
        [sys.executable, "-m", "rendezvous", "up", str(policy), "--workdir", str(tmp_path / "work"), "--broker-port", "0",
         "--web-port", "0", "--gateway-port", "0"],  # free ports (the defaults, 9092, 6066 and 8080: test_help)
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    output = ProcessLines(process)
    try:
        output.wait_for("stop with Ctrl-C or SIGTERM")
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                                   text=True).stdout.split()]
        assert len(children) == 6  # the broker, two replicas, the decoy, one worker, the gateway
        [metrics] = re.findall(r"metrics (http://127\.0\.0\.1:\d+/metrics)", output.text())  # as up announces it
        with urllib.request.urlopen(metrics, timeout=5) as response:
            assert b"rendezvous_" in response.read()
        [gateway] = re.findall(r"gateway (http://127\.0\.0\.1:\d+)/v2/models/stack/infer", output.text())
        with urllib.request.urlopen(f"{gateway}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        shown = rendezvous("policy", "show", timeout=60, env=env)
        assert shown.returncode == 0 and "name: stack" in shown.stdout, shown.stderr
        second = rendezvous("broker", "--port", "1", timeout=60, env=env)  # refused before it binds anything
        assert second.returncode == 3 and "already running" in second.stderr
        newer = tmp_path / "v2.yaml"
        newer.write_text("name: stack\nversion: 2\nsla_ms: 120\nrouting:\n  strategy: fixed\n  chain: [{model: trivial}]\n")
        applied = rendezvous("policy", "apply", str(newer), timeout=60, env=env)
        assert applied.returncode == 0, applied.stderr
        assert "in force on 1 worker(s)" in applied.stdout  # the worker took it, not only the topic
        status = rendezvous("status", timeout=60, env=env)  # every port and version, with one command
        assert status.returncode == 0 and metrics in status.stdout and "stack v2" in status.stdout, status.stdout
        assert status.stdout.count("model ") >= 2 and "gateway" in status.stdout, status.stdout

        # the embedded broker dies: up starts it again on its data, and every service reconnects by itself
        os.kill(json.loads((tmp_path / "home" / "broker.json").read_text())["pid"], signal.SIGKILL)
        output.wait_for("started again on")

        def answered() -> bool:
            call = urllib.request.Request(f"{gateway}/v2/models/stack/infer", data=b'{"features": {}}',
                                          headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(call, timeout=5) as response:
                    return json.loads(response.read())["parameters"]["model"] == "trivial"
            except OSError:  # 503 or 504 while the services reconnect
                return False
        wait_until(answered, "a call through the gateway answered by the model after the broker's restart", 30)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, output.text()[-2000:]
    assert "deprecated" in output.text()  # its deploy: section belongs in a stack file now
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not (tmp_path / "home" / "broker.json").exists()  # forgotten when up stopped its broker

    again = subprocess.Popen(
        [sys.executable, "-m", "rendezvous", "up", str(policy), "--workdir", str(tmp_path / "work"), "--broker-port", "0",
         "--web-port", "0", "--no-gateway"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    output = ProcessLines(again)
    try:
        output.wait_for("stop with Ctrl-C or SIGTERM")
        assert "policy stack v2 in force (from rendezvous.policies)" in output.text(), output.text()[-2000:]
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(again.pid)], capture_output=True,
                                                   text=True).stdout.split()]
    finally:
        again.kill()  # up itself killed: its children must not consume on as orphans
        again.wait(timeout=60)

    def orphans() -> list[int]:
        return [pid for pid in children if Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:1]]
    assert children and wait_until(lambda: not orphans(), "up's children ended after up was killed", timeout=25)


def test_topics_are_created_co_partitioned_and_a_mismatch_is_refused(kafka):
    topics = Topics.with_prefix(f"cli-{os.getpid()}")
    done = rendezvous("topics", "create", "--broker", kafka.bootstrap, "--topic-prefix", topics.namespace,
                      "--partitions", "3", timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{topics.requests}\t3 partitions" in done.stdout
    create_topic(kafka, f"odd-{os.getpid()}.requests", 2)  # made by hand, with the wrong count
    with pytest.raises(TopicError, match="same partition count"):
        ensure_topics(kafka, Topics.with_prefix(f"odd-{os.getpid()}"), 5)


def test_commands_without_a_broker_say_what_to_do(tmp_path: Path):
    done = rendezvous("topics", "create", env={"RENDEZVOUS_HOME": str(tmp_path)}, timeout=60)
    assert done.returncode != 0
    assert "pass --broker HOST:PORT, or start one with `rendezvous broker`" in done.stderr


@pytest.mark.parametrize(("change", "message"), [
    (("model: forest", "model: forrest"), "names forrest, which the stack's models do not start"),
    (("sla_ms: 100", 'sla_ms: "100"'), "sla_ms: Input should be a valid number"),
])
def test_validate_refuses_typos_and_quoted_numbers(tmp_path: Path, change: tuple[str, str], message: str):
    text = (REPO / "policies" / "example.yaml").read_text()
    assert change[0] in text
    (tmp_path / "example.yaml").write_text(text.replace(*change))
    stack = (REPO / "policies" / "example.stack.yaml").read_text().replace("../containers", f"{REPO}/containers")
    (tmp_path / "stack.yaml").write_text(stack)
    done = rendezvous("policy", "validate", str(tmp_path / "stack.yaml"), timeout=60)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr

