"""The whole pipeline over Apache Kafka's own TLS listener: one-way, mutual, and SASL_SSL with SCRAM.

Models, the decoy, a rendezvous worker (Faust/aiokafka) and the client all get
their security from one set of ``--kafka-config`` properties; a wrong CA, a
missing client certificate or a wrong password fails at start with the setting named.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rendezvous.kernel.client_config import ClientConfig, write_properties
from rendezvous.kernel.errors import BrokerUnavailable, KafkaConfigError
from rendezvous.kernel.kafka import check_connection
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.operations.kafka_dist import kafka_available
from tests.conftest import CHAIN_POLICY, ProcessLines, System, eventually, wait_until, write_policy
from tests.tls import KEY_PASSWORD, SCRAM_PASSWORD, Pki, TlsBroker, make_pki

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not kafka_available(), reason="needs Java 17+ for the Kafka engine (Tansu has no working TLS)"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=["tls", "mtls", "sasl"])
def tls_broker(request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[TlsBroker]:
    """``sasl``: SASL_SSL with a SCRAM-SHA-512 user, over one-way TLS."""
    broker = TlsBroker(pki, tmp_path_factory.mktemp(request.param), mutual=request.param == "mtls",
                       sasl=request.param == "sasl").start()
    yield broker
    broker.stop()


def _secured(broker: TlsBroker, **kwargs: object) -> KafkaSettings:
    return KafkaSettings(broker.bootstrap, client=ClientConfig.parse(broker.client_properties(**kwargs)))


@pytest.mark.parametrize("tls_broker", ["sasl"], indirect=True)  # TLS and a SCRAM login; mutual TLS: `up` below
def test_whole_pipeline_runs_over_sasl_ssl(tls_broker: TlsBroker, tmp_path: Path):
    kafka = _secured(tls_broker)
    system = System(kafka, tmp_path)
    try:
        models = system.start_chain_models()
        decoy = system.runtime.start_decoy(tmp_path / "archive")
        workers = system.start_workers(write_policy(tmp_path, CHAIN_POLICY))
        system.wait_ready(models + [decoy] + workers)
        system.warm_up()
        ids = [f"tls-{i}" for i in range(100)]
        system.send([(rid, {}) for rid in ids], rate=100)
        results = system.results_for(ids)
        assert all(len(r) == 1 for r in results.values()), {k: len(v) for k, v in results.items() if len(v) != 1}
        answered = [r[0] for r in results.values()]
        # (within-the-SLA is the pipeline tests' guarantee; here: every record crossed the TLS hop)
        # every model's scores crossed the TLS hop (and reached the worker through aiokafka's SSL context):
        # in time, as candidates, or late (a runner that stalled for the whole burst; seen once in a full-suite run)
        def reached_the_worker() -> set[str]:
            dropped = system.stats(workers[0])["dropped_scores"]  # late, or after the request was forgotten
            late = {key.split("/", 1)[1] for key in dropped if not key.startswith("unknown_model/")}
            return set().union(*(r.candidates for r in answered)) | late
        wait_until(lambda: reached_the_worker() == {"m1", "m2", "m3"}, "every model's scores reached the worker")
        port = system.runtime.supervisor.get(decoy).http_port

        def archived() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=5) as response:
                return json.loads(response.read())["next_seq"] >= len(ids)
        assert eventually(archived), "the decoy did not archive the requests it read over TLS"
        # Status pages say how the worker and the models connect, never with what secret.
        worker_stats = system.stats(workers[0])
        assert worker_stats["kafka"]["security_protocol"] == "SASL_SSL"
        for name in (workers[0], models[0]):
            port = system.runtime.supervisor.get(name).http_port
            for page in ("/stats", "/info"):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{page}", timeout=5) as response:
                        page_bytes = response.read()
                        assert KEY_PASSWORD.encode() not in page_bytes and SCRAM_PASSWORD.encode() not in page_bytes
                except urllib.error.HTTPError:
                    pass  # a page this service does not serve
        # The secrets reached the children in a private file, not in their arguments or environment.
        for name in models + [decoy] + workers:
            pid = system.pid(name)
            for part in ("cmdline", "environ"):
                seen = Path(f"/proc/{pid}/{part}").read_bytes()
                assert KEY_PASSWORD.encode() not in seen and SCRAM_PASSWORD.encode() not in seen, (name, part)
    finally:
        system.close()


def test_plaintext_client_is_refused_by_the_tls_listener(tls_broker: TlsBroker):
    with pytest.raises((BrokerUnavailable, KafkaConfigError)):
        check_connection(KafkaSettings(tls_broker.bootstrap), timeout=2)


def test_wrong_ca_fails_fast_naming_the_setting(tls_broker: TlsBroker, pki: Pki):
    with pytest.raises(KafkaConfigError) as caught:
        check_connection(_secured(tls_broker, ca=pki.other_ca), timeout=10)
    assert caught.value.setting == "ssl.ca.location"


def test_cli_reports_a_wrong_ca_without_a_traceback(tls_broker: TlsBroker, pki: Pki, tmp_path: Path):
    config = write_properties(tmp_path / "client.properties", tls_broker.client_properties(ca=pki.other_ca))
    done = subprocess.run([sys.executable, "-m", "rendezvous", "topics", "create", "--broker", tls_broker.bootstrap,
                           "--kafka-config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "ssl.ca.location" in done.stderr and "Traceback" not in done.stderr
    assert KEY_PASSWORD not in done.stderr + done.stdout


@pytest.mark.parametrize("tls_broker", ["mtls"], indirect=True)  # only mutual TLS asks for a client certificate
def test_missing_client_certificate_fails_fast_under_mutual_tls(tls_broker: TlsBroker):
    with pytest.raises(KafkaConfigError) as caught:
        check_connection(_secured(tls_broker, with_cert=False), timeout=10)
    assert caught.value.setting == "ssl.certificate.location"


@pytest.mark.parametrize("tls_broker", ["sasl"], indirect=True)
def test_wrong_scram_password_is_refused_naming_the_setting(tls_broker: TlsBroker, tmp_path: Path):
    with pytest.raises(KafkaConfigError) as caught:
        check_connection(_secured(tls_broker, password="not-the-password"), timeout=10)
    assert caught.value.setting == "sasl.password" and "not-the-password" not in str(caught.value)
    config = write_properties(tmp_path / "client.properties", tls_broker.client_properties(password="not-the-password"))
    done = subprocess.run([sys.executable, "-m", "rendezvous", "topics", "create", "--broker", tls_broker.bootstrap,
                           "--kafka-config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "sasl.password" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "not-the-password" not in done.stderr + done.stdout


def test_wrong_key_password_is_refused_before_connecting(pki: Pki):
    with pytest.raises(KafkaConfigError) as caught:
        ClientConfig.parse({"security.protocol": "SSL", "ssl.ca.location": str(pki.ca),
                            "ssl.certificate.location": str(pki.client_cert),
                            "ssl.key.location": str(pki.client_key), "ssl.key.password": "wrong"})
    assert caught.value.setting == "ssl.key.password"
    assert "wrong" not in str(caught.value)


@pytest.mark.parametrize("tls_broker", ["mtls"], indirect=True)  # one-way TLS: the pipeline test above
def test_up_runs_the_whole_stack_over_tls_from_a_properties_file(tls_broker: TlsBroker, tmp_path: Path):
    """`rendezvous up` with a stack file, every child and the gateway over the TLS hop; requests and
    outcomes from a Kafka client and over HTTP; other commands with the same file; then SIGTERM."""
    import signal

    import httpx

    from rendezvous.kernel.topics import Topics
    from rendezvous.tools.client import RequestSender, ResultCollector
    from tests.conftest import REPO

    config = write_properties(tmp_path / "client.properties", tls_broker.client_properties())
    (tmp_path / "policy.yaml").write_text(
        "name: tls\nversion: 1\nsla_ms: 200\nrouting: {strategy: fixed, chain: [{model: trivial}]}\n")
    (tmp_path / "stack.yaml").write_text(
        f"policy: policy.yaml\nmodels: [{{spec: {REPO}/containers/examples/trivial.yaml, replicas: 2}}]\n"
        f"decoy: {{archive: {tmp_path}/archive}}\n")
    prefix = f"tlsup-{tls_broker.tls_port}"
    common = ["--broker", tls_broker.bootstrap, "--kafka-config", str(config), "--topic-prefix", prefix]
    process = subprocess.Popen(
        [sys.executable, "-m", "rendezvous", "up", str(tmp_path / "stack.yaml"), *common, "--workdir",
         str(tmp_path / "work"), "--web-port", "0", "--gateway-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output = ProcessLines(process)
    try:
        output.wait_for("stop with Ctrl-C or SIGTERM", timeout=120)
        kafka = _secured(tls_broker)
        topics = Topics.with_prefix(prefix)
        collector = ResultCollector(kafka, topics, 4).start()
        sender = RequestSender(kafka, topics)
        ids = [f"up-tls-{i}" for i in range(50)]
        sender.send([(rid, {}) for rid in ids], rate=50)
        assert collector.wait_for(ids, 30), "not every request sent over TLS was answered"
        for rid in ids:
            sender.send_outcome(rid, True, collector.results[rid][0].partition)
        sender.flush()
        collector.stop()
        [gateway] = re.findall(r"gateway (http://127\.0\.0\.1:\d+)/v2/models/tls/infer", output.text())
        with httpx.Client(base_url=gateway, timeout=10) as http:
            answer = http.post("/v2/models/tls/infer", json={"id": "up-tls-http", "features": {}})
            assert answer.status_code == 200 and answer.json()["parameters"]["model"] == "trivial", answer.text
            assert http.post("/v2/models/tls/outcome", json={"id": "up-tls-http", "outcome": 1.0}).status_code == 202
        shown = subprocess.run([sys.executable, "-m", "rendezvous", "policy", "show", *common],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "name: tls" in shown.stdout, shown.stderr
        story = subprocess.run([sys.executable, "-m", "rendezvous", "explain", "up-tls-1", *common],
                               capture_output=True, text=True, timeout=60)
        assert story.returncode == 0 and "answered with" in story.stdout and "trivial 1.0.0" in story.stdout, \
            story.stderr
        assert "outcome True" in story.stdout
        for printed in (shown.stdout + shown.stderr, story.stdout + story.stderr, output.text()):
            assert KEY_PASSWORD not in printed
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, output.text()[-2000:]
