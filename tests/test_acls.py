"""Kafka's ACLs as ``rendezvous topics acls`` grants them, on a Kafka that enforces them (its StandardAuthorizer,
over SASL_SSL with SCRAM): every component logs in as a principal of its own with only its role's grants, and
the system still answers, archives and serves OIP; a principal that is neither the operators' nor the workers'
cannot write a policy record, and no component meets an authorization error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer

from policies.record import POLICY_KEY
from rendezvous.kernel.client_config import ClientConfig
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.operations.kafka_broker import KafkaBroker, SecureListener
from rendezvous.operations.kafka_dist import kafka_available
from rendezvous.operations.process import ProcessRuntime
from rendezvous.tools.client import RequestSender, ResultCollector
from tests.conftest import CHAIN_POLICY, CHAIN_SCORES, System, eventually, scripted_spec, wait_until, write_policy
from tests.tls import Pki, make_pki

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not kafka_available(), reason="needs Java 17+ for the Kafka engine")]

#: Each principal and the role it plays (one principal for all the models: their scores are told apart by
#: the stack's keys, see test_trust).
ROLES = {"operator": "operator", "worker": "worker", "models": "model:*", "decoy": "decoy", "gateway": "gateway",
         "client": "client"}
AUTHORIZATION_ERRORS = ("AUTHORIZATION_FAILED", "AuthorizationFailed", "AuthorizationError", "not authorized")


def password(user: str) -> str:
    return f"{user}-scram-5f0d"


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaBroker, Pki]]:
    directory = tmp_path_factory.mktemp("acls")
    pki = make_pki(directory)
    broker = KafkaBroker(
        log_path=directory / "broker.log",
        secure=SecureListener(keystore=pki.server_cert.parent / "server-keystore.pem", sasl="SCRAM-SHA-512"),
        properties_extra={
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # the loopback PLAINTEXT listener (and the node's own controller link) is the administrator's side
            "super.users": "User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        })
    broker.start()
    try:
        for user in ROLES:
            broker.add_scram_user(user, password(user))
        yield broker, pki
    finally:
        broker.stop()


def login(broker: KafkaBroker, pki: Pki, user: str) -> KafkaSettings:
    client = ClientConfig.parse({"security.protocol": "SASL_SSL", "ssl.ca.location": str(pki.ca),
                                 "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": password(user)})
    return KafkaSettings(broker.secure_bootstrap, fetch_wait_ms=broker.fetch_wait_ms, client=client)


def write_refused(kafka: KafkaSettings, topic: str, value: bytes, key: bytes) -> str | None:
    """The error of writing one record as ``kafka``'s principal (None: it was written)."""
    errors: list[KafkaError] = []
    producer = Producer(kafka.producer(**{"enable.idempotence": False, "message.timeout.ms": 10_000, "log_level": 0}))
    producer.produce(topic, value, key, on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(15)
    assert errors, "no delivery report within 15 s"
    return errors[0].name() if errors[0] is not None else None


def test_every_component_runs_on_its_roles_grants_and_only_operators_and_workers_write_policies(
        acl_broker: tuple[KafkaBroker, Pki], tmp_path: Path):
    broker, pki = acl_broker
    admin = KafkaSettings(f"127.0.0.1:{broker.port}", fetch_wait_ms=broker.fetch_wait_ms)  # a super user
    system = System(admin, tmp_path)  # makes the deployment's topics
    prefix, topics = system.topics.namespace, system.topics
    granted = subprocess.run(
        [sys.executable, "-m", "rendezvous", "topics", "acls", "--broker", admin.bootstrap, "--topic-prefix", prefix,
         *[arg for user, role in ROLES.items() for arg in ("--grant", f"{role}=User:{user}")], "--apply"],
        capture_output=True, text=True, timeout=60)
    assert granted.returncode == 0, granted.stderr
    assert "applied" in granted.stderr and f"User:models\tALLOW\ttopic {topics.scores} WRITE" in granted.stdout

    runtimes: dict[str, ProcessRuntime] = {}

    def runtime(user: str) -> ProcessRuntime:  # the children of one principal, with its --kafka-config
        runtimes[user] = ProcessRuntime(login(broker, pki, user), tmp_path / user / "logs", prefix)
        return runtimes[user]

    try:
        modelling = runtime("models")
        models = [n for model, score in CHAIN_SCORES.items()
                  for n in modelling.start_model(scripted_spec(tmp_path, model, score), 1)]
        policy = write_policy(tmp_path, CHAIN_POLICY)
        [worker] = runtime("worker").start_rendezvous(policy, 1)
        decoy = runtime("decoy").start_decoy(tmp_path / "archive")
        gateway = runtime("gateway").start_gateway(grpc_port=None)
        for user, names in (("models", models), ("worker", [worker]), ("decoy", [decoy]), ("gateway", [gateway])):
            not_ready = runtimes[user].wait_ready(names, 60)
            assert not not_ready, f"not ready as {user}: {not_ready}; logs in {tmp_path / user / 'logs'}"

        # The client: requests in, results out, as its own principal
        client = login(broker, pki, "client")
        system.collector.stop()
        system.sender = RequestSender(client, topics)
        system.collector = ResultCollector(client, topics, system.partitions).start()
        system.warm_up(60)
        ids = [f"acl-{i}" for i in range(30)]
        system.send([(rid, {}) for rid in ids], rate=50)
        results = system.results_for(ids)
        assert all(len(r) == 1 for r in results.values()), "lost or answered twice"
        assert {r[0].model for r in results.values()} - {None}, "no answer came from a model's score"

        # OIP through the gateway, which makes, reads (and at its stop deletes) its own reply topic
        port = runtimes["gateway"].supervisor.get(gateway).http_port
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/test-chain/infer", method="POST",
                                         data=json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1],
                                                                      "data": [0.5]}]}).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=15) as response:
            assert response.status == 200

        # The decoy archives what it reads as its own principal
        decoy_port = runtimes["decoy"].supervisor.get(decoy).http_port

        def archived() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{decoy_port}/info", timeout=5) as response:
                return json.loads(response.read())["next_seq"] >= len(ids)
        assert eventually(archived, 30), "the decoy did not archive the requests"

        # Neither a model's principal nor a client's may write a policy record, whatever it holds
        forged = policy.read_bytes()
        for user in ("models", "client", "gateway", "decoy"):
            refused = write_refused(login(broker, pki, user), topics.policies, forged, POLICY_KEY)
            assert refused == "TOPIC_AUTHORIZATION_FAILED", f"{user} wrote a policy record ({refused})"

        # The operators' principal applies a policy, and the worker adopts it
        operator_config = tmp_path / "operator.properties"
        login(broker, pki, "operator").client.write(operator_config)
        newer = write_policy(tmp_path, CHAIN_POLICY.replace("version: 1", "version: 2"), "v2.yaml")
        applied = subprocess.run(
            [sys.executable, "-m", "rendezvous", "policy", "apply", str(newer), "--broker", broker.secure_bootstrap,
             "--kafka-config", str(operator_config), "--topic-prefix", prefix, "--allow-missing"],
            capture_output=True, text=True, timeout=60)
        assert applied.returncode == 0, applied.stderr
        worker_port = runtimes["worker"].supervisor.get(worker).http_port

        def adopted() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/stats", timeout=5) as response:
                return json.loads(response.read())["policy"]["version"] == 2
        wait_until(adopted, "the worker adopts the operators' policy", timeout=30)
    finally:
        for rt in runtimes.values():
            rt.stop()
        system.close()
    # Every grant a component needed was there: none logged an authorization error (the gateway's deletion
    # of its reply topic at its stop included)
    for user in runtimes:
        for log in (tmp_path / user / "logs").glob("*.log"):
            text = log.read_text(errors="replace")
            found = [e for e in AUTHORIZATION_ERRORS if e in text]
            assert not found, f"{log.name} ({user}) logged {found}"
