"""Models as real containers on a real Docker engine, against the real broker.

The engine is started here when it is missing and can be (root, Debian's
docker.io installed), and stopped by PID afterwards; where none can run, every
test in this module is skipped with the reason. The runner image is built once
and reused while the source tree is unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from containers.spec import load_spec
from rendezvous.kernel.client_config import ClientConfig
from rendezvous.kernel.kafka import read_range, since_offsets
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.kernel.topics import Topics
from rendezvous.kernel.wire import ScoreBatch
from rendezvous.operations.base import RuntimeUnavailable
from rendezvous.operations.docker import CLIENT_MOUNT, DockerRuntime, connect
from rendezvous.operations.images import ImageError, ensure_runner_image
from rendezvous.operations.kafka_dist import kafka_available
from tests.conftest import REPO, System, cli, eventually, late_intake, scripted_spec, wait_until, write_policy
from tests.rule import Chain, check
from tests.tls import KEY_PASSWORD, TlsBroker, make_pki

pytestmark = pytest.mark.slow
EXAMPLES = REPO / "containers" / "examples"
BACKUP_CHAIN = Chain((("m1", 60), ("m2", None)), sla_ms=200)  # chain_policy(first="m1", then="m2")


@pytest.fixture(scope="session")
def docker_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    try:
        yield connect(timeout=5)
        return
    except RuntimeUnavailable as exc:
        reason = str(exc)
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.skip(f"no Docker engine and none can be started here (dockerd {'missing' if dockerd is None else 'needs root'}):"
                    f" {reason}")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = eventually(_try_connect, timeout=30, every=0.5)
    if client is None:
        process.kill()
        pytest.skip(f"dockerd did not come up within 30s; see {log}")
    yield client
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(30)


def _try_connect():  # noqa: ANN202
    try:
        return connect(timeout=5)
    except RuntimeUnavailable:
        return None


@pytest.fixture(scope="session")
def runner_image(docker_client) -> str:
    try:
        return ensure_runner_image(docker_client, progress=lambda line: print(line, flush=True))
    except ImageError as exc:
        pytest.skip(f"cannot build the runner image here: {exc}")


class DockerSystem(System):
    """A System whose models run as containers."""

    def __init__(self, kafka, directory: Path, client, max_restarts: int = 5) -> None:
        super().__init__(kafka, directory)
        directory.chmod(0o755)  # mounted at /model, read by the container's unprivileged user
        self.docker = DockerRuntime(kafka, self.topics.namespace, client, max_restarts=max_restarts)

    def deploy(self, spec: Path, replicas: int | None = None) -> list[str]:
        spec.chmod(0o644)
        names = self.docker.deploy(spec, replicas)
        assert not self.docker.wait_ready(names, 90), self.docker.logs(load_spec(spec).name)
        return names

    def scores(self, timeout: float = 20.0) -> list[ScoreBatch]:
        """Every score record so far (the topic read to its end)."""
        return [msgspec.json.decode(m.value(), type=ScoreBatch) for m in self.read_topic(self.topics.scores, timeout)]

    def close(self) -> None:
        self.docker.stop_all()
        super().close()


@pytest.fixture
def docked(kafka, tmp_path: Path, docker_client, runner_image) -> Iterator[DockerSystem]:
    s = DockerSystem(kafka, tmp_path, docker_client)
    yield s
    s.close()


def answered_once(system: System, ids: list[str], chain: Chain = BACKUP_CHAIN) -> dict:
    """Every request answered exactly once, each by the rule of ``chain`` given the worker's record."""
    results = system.results_for(ids, timeout=60)
    assert Counter(len(r) for r in results.values()) == Counter({1: len(ids)})  # none lost, none doubled
    for [result] in results.values():
        check(result, chain)
    return {rid: r[0] for rid, r in results.items()}


def m1_in_containers_m2_as_backup(docked: DockerSystem, m1_spec: Path, replicas: int, pin: str = "") -> list[str]:
    """Deploy m1 as containers and m2 as a local process behind it, one worker; warm up. Returns m1's replicas."""
    names = docked.deploy(m1_spec, replicas)
    backup = docked.start_models(scripted_spec(docked.directory, "m2", 0.2))
    workers = docked.start_workers(chain_policy(docked.directory, "m1", "m2", pin=pin))
    docked.wait_ready(backup + workers)
    docked.warm_up()
    return names


def running(system: DockerSystem, model: str) -> int:
    return sum(r.health == "running" for r in system.docker.replicas(model))


def chain_policy(directory: Path, first: str, then: str, sla_ms: float = 200, pin: str = "") -> Path:
    return write_policy(directory, f"""\
        name: containers
        version: 1
        sla_ms: {sla_ms}
        default: {{score: 0.0}}
        routing:
          strategy: fixed
          chain: [{{model: {first}, wait_ms: 60}}, {{model: {then}}}]
        {pin}
    """)


def test_two_models_two_replicas_each_score_every_request_once(docked: DockerSystem):
    docked.deploy(EXAMPLES / "baseline.yaml", 2)
    docked.deploy(scripted_spec(docked.directory, "m2", 0.2), 2)
    ids = [f"share-{i}" for i in range(400)]
    docked.send([(rid, {"https": 1.0}) for rid in ids], rate=400)
    per_model: dict[str, Counter] = defaultdict(Counter)
    instances, artifacts = defaultdict(set), defaultdict(set)

    def all_scored() -> bool:
        per_model.clear()
        for batch in docked.scores():
            for score in batch.scores:
                per_model[batch.model][score.request_id] += 1
            instances[batch.model].add(batch.instance)
            artifacts[batch.model].add(batch.artifact_sha256)
        return all(set(ids) <= set(per_model[m]) for m in ("baseline", "m2"))
    eventually(all_scored, timeout=30, every=0.5)
    for model in ("baseline", "m2"):
        counts = per_model[model]
        assert set(counts) == set(ids), f"{model} missed {len(set(ids) - set(counts))} requests"
        assert set(counts.values()) == {1}, f"{model} scored some requests twice"
        assert len(instances[model]) == 2, instances[model]  # both replicas took a share
        assert all(f"{docked.topics.namespace}-{model}-" in i for i in instances[model])  # container names
    assert artifacts["baseline"] == {load_spec(EXAMPLES / "baseline.yaml").artifact_sha256}
    assert {r.model for r in docked.docker.replicas()} == {"baseline", "m2"}


def test_a_killed_container_is_covered_by_the_fallback_and_comes_back(docked: DockerSystem):
    names = m1_in_containers_m2_as_backup(docked, scripted_spec(docked.directory, "m1", 0.1), 2)
    ids = [f"kill-{i}" for i in range(600)]
    sender = docked.send_in_background([(rid, {}) for rid in ids], rate=100)
    assert docked.collector.wait_for(ids[:100], 30), "traffic is not flowing"
    os.kill(docked.docker.pid_of(names[0]), signal.SIGKILL)  # a crash, not an API stop
    sender.join()
    results = answered_once(docked, ids)  # by the rule: m1 where it answered in time, else m2
    by_model = Counter(r.model for r in results.values())
    assert by_model["m1"] > 0 and by_model["m2"] > 0, by_model  # m2 covered the dead replica's partitions
    replica = eventually(lambda: next((r for r in docked.docker.replicas("m1")
                                       if r.name == names[0] and r.health == "running"), None), timeout=60)
    assert replica is not None and replica.restarts >= 1, docked.docker.replicas("m1")
    assert eventually(lambda: all_preferred(docked, "m1"), timeout=30, every=1), "m1 never took every partition back"


def all_preferred(system: System, model: str) -> bool:
    """A probe of 40 requests, one per partition at least, all answered by ``model``: it scores every partition."""
    ids = [f"probe-{time.monotonic_ns()}-{i}" for i in range(40)]
    system.send([(rid, {}) for rid in ids])
    return all(r[0].model == model for r in system.results_for(ids, timeout=10).values())


def test_limits_are_applied_and_a_model_over_its_memory_is_killed_and_reported(docked: DockerSystem, docker_client):
    docked.docker = DockerRuntime(docked.kafka, docked.topics.namespace, docker_client, max_restarts=1)
    spec = docked.directory / "hungry.yaml"
    spec.write_text("name: hungry\nversion: '1'\nentry: containers.examples.synthetic:hungry\n"
                    "options: {megabytes: 400}\nresources: {memory: 160m, cpus: 0.5, pids: 64}\n")
    spec.chmod(0o644)
    names = docked.docker.deploy(spec, 1)
    replica = eventually(lambda: next((r for r in docked.docker.replicas("hungry") if r.health == "failed"), None),
                         timeout=90)
    assert replica is not None, docked.docker.replicas("hungry")
    assert "memory limit (160m)" in replica.detail and replica.restarts == 1
    listed = cli(docked, "models", "hungry", "--json", "--rate-window", "0")
    assert '"health": "failed"' in listed.stdout and "memory limit" in listed.stdout, listed.stderr
    host = docker_client.containers.get(names[0]).attrs["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["NanoCpus"], host["PidsLimit"]) == (160 << 20, 160 << 20, 5 * 10**8, 64)
    assert host["ReadonlyRootfs"] and host["Init"] and not host["Privileged"] and host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert docker_client.containers.get(names[0]).attrs["Config"]["User"] == "65534:65534"


def test_scaling_up_and_down_under_load_loses_no_request(docked: DockerSystem):
    m1_in_containers_m2_as_backup(docked, scripted_spec(docked.directory, "m1", 0.1), 1)
    ids = [f"scale-{i}" for i in range(1000)]
    sender = docked.send_in_background([(rid, {}) for rid in ids], rate=100)
    assert docked.collector.wait_for(ids[:100], 30), "traffic is not flowing"
    assert cli(docked, "scale", "m1", "3").returncode == 0
    wait_until(lambda: running(docked, "m1") == 3, "three m1 replicas running", timeout=30)
    answered = docked.collector.snapshot()
    a_second_later = ids[sum(rid in answered for rid in ids) + 100]  # a second of traffic with three replicas
    assert docked.collector.wait_for([a_second_later], 30), "traffic stopped after scaling up"
    done = cli(docked, "scale", "m1", "1")
    assert done.returncode == 0, done.stderr
    sender.join()
    answered_once(docked, ids)

    def unscored_by_m1() -> set[str]:
        return set(ids) - {s.request_id for b in docked.scores() if b.model == "m1" for s in b.scores}
    wait_until(lambda: not unscored_by_m1(), "m1 scored every request: its group lost none while members changed",
               timeout=30, every=0.5)
    assert [r.index for r in docked.docker.replicas("m1")] == [0]


def test_a_version_swap_loses_no_request(docked: DockerSystem):
    v1 = scripted_spec(docked.directory, "m1", 0.1)
    v2 = docked.directory / "m1-v2.yaml"
    v2.write_text(v1.read_text().replace('version: "1"', 'version: "2"').replace("score: 0.1", "score: 0.9"))
    pin = "models: {m1: {version: '%s'}, m2: {}}"
    m1_in_containers_m2_as_backup(docked, v1, 1, pin=pin % "1")
    ids = [f"swap-{i}" for i in range(1000)]
    sender = docked.send_in_background([(rid, {}) for rid in ids], rate=100)
    docked.deploy(v2, 1)  # its scores flow in and are ignored: the policy pins v1
    policy_v2 = chain_policy(docked.directory, "m1", "m2", pin=pin % "2")
    policy_v2.write_text(policy_v2.read_text().replace("version: 1", "version: 2", 1))
    applied = cli(docked, "policy", "apply", str(policy_v2), "--reason", "m1 v2")
    assert applied.returncode == 0, applied.stderr
    wait_until(lambda: any((x[0].result.model, x[0].result.model_version) == ("m1", "2")
                           for x in docked.collector.snapshot().values()),
               "m1 v2 answers: the policy pinning it is in force and v2 scores", timeout=30)
    assert cli(docked, "stop", "m1", "--version", "1").returncode == 0
    sender.join()
    results = answered_once(docked, ids)  # m2 covers whatever m1 did not answer in time, by the rule
    by_version = Counter((r.model, r.model_version, r.policy_version) for r in results.values())
    assert by_version[("m1", "1", 1)] > 0 and by_version[("m1", "2", 2)] > 0, by_version
    assert not [k for k in by_version if k[0] == "m1" and k[1] != str(k[2])], by_version  # a pin is obeyed
    assert not [r for r in results.values() if "m1" in r.candidates and r.candidates["m1"].model_version
                != str(r.policy_version)], "a score of the version not pinned was used"
    assert [(r.version, r.health) for r in docked.docker.replicas("m1")] == [("2", "running")]


def test_deploy_refuses_what_cannot_run_with_a_clear_message(docked: DockerSystem):
    spec = docked.directory / "ghost.yaml"
    spec.write_text("name: ghost\nversion: '1'\nentry: containers.examples.synthetic:build\nimage: no/such:image\n")
    done = cli(docked, "deploy", str(spec))
    assert done.returncode != 0 and "image no/such:image is not on this machine" in done.stderr
    spec.write_text("name: ghost\nversion: '1'\nentry: containers.examples.synthetic:build\nresources: {memory: lots}\n")
    done = cli(docked, "deploy", str(spec))
    assert done.returncode != 0 and "resources.memory" in done.stderr
    assert "no replicas of ghost" in cli(docked, "scale", "ghost", "2").stderr


def test_up_runs_a_stack_file_with_the_docker_runtime_and_stops_it_cleanly(docked: DockerSystem):
    spec = scripted_spec(docked.directory, "m1", 0.1)
    spec.chmod(0o644)
    policy = write_policy(docked.directory, f"""\
        name: docked
        version: 1
        sla_ms: 200
        default: {{score: 0.0}}
        routing: {{strategy: fixed, chain: [{{model: m1}}]}}
        deploy:
          runtime: docker
          models: [{{spec: {spec}, replicas: 2}}]
          decoy: {{enabled: false}}
    """)
    up = subprocess.Popen([sys.executable, "-m", "rendezvous", "up", str(policy), "--broker", docked.kafka.bootstrap,
                           "--topic-prefix", docked.topics.namespace, "--workdir", str(docked.directory / "up"),
                           "--web-port", "0", "--gateway-port", "0"],  # free ports, bound by each process
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert eventually(lambda: running(docked, "m1") == 2 or up.poll() is not None, timeout=120) and up.poll() is None
        result = eventually(lambda: _answer(docked), timeout=60, every=1)
        # m1's answer, not the default: the replicas signed with the key up mounted for m1, and the worker,
        # given up's secret, verified it (an unsigned or wrongly signed score would be refused)
        assert result is not None and (result.model, result.score) == ("m1", 0.1)
        assert (docked.directory / "up" / "secret").stat().st_mode & 0o777 == 0o600
    finally:
        up.send_signal(signal.SIGTERM)
        _, stderr = up.communicate(timeout=90)
    assert up.returncode == 0, stderr[-3000:]
    assert docked.docker.replicas() == []  # its containers went with it


def _answer(system: System):  # noqa: ANN202
    """The answer to one request, or None if none came or it reached the worker past its due time.

    A late intake is answered by the default whatever the models do (the worker's own record says so: the request
    was made more than the SLA before the worker read it, as while the stack is still starting), so it says nothing
    about the models and is asked again.
    """
    rid = f"up-{time.monotonic_ns()}"
    system.send([(rid, {})])
    if not system.collector.wait_for([rid], 5):
        return None
    result = system.collector.results[rid][0].result
    return None if late_intake(result) else result


@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    if not kafka_available():
        pytest.skip("needs Java 17+ for the Kafka engine (Tansu has no working TLS)")
    broker = TlsBroker(make_pki(tmp_path_factory.mktemp("pki")), tmp_path_factory.mktemp("mtls"), mutual=True).start()
    yield broker
    broker.stop()


def test_containers_get_the_kafka_config_mounted_read_only_and_score_over_mutual_tls(
        mtls_broker: TlsBroker, tmp_path: Path, docker_client, runner_image):
    kafka = KafkaSettings(mtls_broker.bootstrap, client=ClientConfig.parse(mtls_broker.client_properties()))
    s = DockerSystem(kafka, tmp_path, docker_client)
    try:
        names = s.deploy(scripted_spec(tmp_path, "m1", 0.1), 1)
        backup = s.start_models(scripted_spec(tmp_path, "m2", 0.2))
        workers = s.start_workers(chain_policy(tmp_path, "m1", "m2"))
        s.wait_ready(backup + workers)
        s.warm_up()
        wait_until(lambda: s.ask(f"mtls-{time.monotonic_ns()}", {}).model == "m1", "m1 answers over mutual TLS",
                   timeout=30)
        container = docker_client.containers.get(names[0])
        config = container.attrs["Config"]
        seen = repr((config.get("Env"), config.get("Cmd"), config.get("Labels")))
        assert KEY_PASSWORD not in seen and "ssl.key.password" not in seen
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        assert mounts[CLIENT_MOUNT]["RW"] is False
    finally:
        s.close()


def test_the_prometheus_image_is_built_offline_and_loads_the_compose_rules(docker_client, runner_image):
    """`rendezvous image prometheus` (what compose runs where nothing can be pulled): it serves, with the alert
    rules of compose/prometheus mounted as compose mounts them."""
    if shutil.which("prometheus") is None:
        pytest.skip("needs Debian's prometheus package")
    from rendezvous.operations.broker import free_port
    from rendezvous.operations.images import PROMETHEUS_IMAGE

    done = subprocess.run([sys.executable, "-m", "rendezvous", "image", "prometheus"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and f"built {PROMETHEUS_IMAGE}" in done.stderr, done.stderr[-2000:]
    port, compose = free_port(), REPO / "compose" / "prometheus"
    container = docker_client.containers.run(
        PROMETHEUS_IMAGE, ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                           f"--web.listen-address=127.0.0.1:{port}"], detach=True, network_mode="host",
        volumes={str(compose / "prometheus.yml"): {"bind": "/etc/prometheus/prometheus.yml", "mode": "ro"},
                 str(compose / "alerts.yml"): {"bind": "/etc/prometheus/alerts.yml", "mode": "ro"}})
    try:
        def rules() -> list | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=2) as reply:
                    return json.loads(reply.read())["data"]["groups"] or None
            except OSError:
                return None
        groups = wait_until(rules, "Prometheus in its container serves the compose rules", timeout=60)
        assert any(r["name"] == "RendezvousChampionDrift" for g in groups for r in g["rules"])
    finally:
        container.remove(force=True)


def test_the_kafka_image_runs_the_embedded_broker_and_keeps_its_data(docker_client, runner_image, tmp_path: Path):
    """`rendezvous image kafka` (what compose runs): the broker serves, creates the system's topics, stops on
    SIGTERM, and a new container on the same volume still has every acknowledged record."""
    if not kafka_available():
        pytest.skip("needs a JDK 17+ (jlink) and the Kafka jars")
    from rendezvous.operations.broker import free_port
    from rendezvous.operations.images import KAFKA_IMAGE, build_kafka_image

    build_kafka_image(docker_client, runner_image, KAFKA_IMAGE, progress=lambda line: print(line, flush=True))
    volume = docker_client.volumes.create(f"rendezvous-test-kafka-{os.getpid()}")
    port = free_port()

    def run():  # noqa: ANN202 - on the host's network, so that the host's clients reach it as advertised
        return docker_client.containers.run(KAFKA_IMAGE, ["--port", str(port), "--listen", "127.0.0.1"], detach=True,
                                            network_mode="host", volumes={volume.name: {"bind": "/var/lib/kafka"}})
    container = run()
    try:
        kafka = KafkaSettings(f"127.0.0.1:{port}")
        wait_until(lambda: "broker listening" in container.logs().decode(), "the broker in the container serves", 90)
        topics = Topics.with_prefix("rendezvous")
        assert set(topics.all()) <= set(AdminClient(kafka.admin()).list_topics(timeout=10).topics)
        producer, acked = Producer(kafka.producer(acks="all")), []
        for i in range(100):
            producer.produce(topics.requests, b"%d" % i, partition=i % 4, on_delivery=lambda e, m: acked.append(e is None))
        assert producer.flush(30) == 0 and all(acked) and len(acked) == 100
        container.stop(timeout=30)  # SIGTERM
        assert container.wait(timeout=30)["StatusCode"] == 0, container.logs().decode()[-2000:]
        container.remove()
        container = run()
        wait_until(lambda: "broker listening" in container.logs().decode(), "the broker serves again", 90)
        consumer = Consumer(kafka.consumer(f"reader-{time.monotonic_ns()}", **{"enable.auto.commit": False}))
        try:
            kept = list(read_range(consumer, topics.requests, since_offsets(consumer, topics.requests, None, 20), 20))
        finally:
            consumer.close()
        assert sorted(int(m.value()) for m in kept) == list(range(100))
    finally:
        container.remove(force=True)
        volume.remove(force=True)


def _image_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rendezvous", "image", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_image_build_leaves_a_current_image_and_refuses_a_missing_base_or_mirror_clearly(docker_client, runner_image):
    base = docker_client.images.get(runner_image).labels["io.rendezvous.base"]
    current = _image_command("build", "--base", base, "--tag", runner_image)
    assert current.returncode == 0 and "is current with this source tree" in current.stderr, current.stderr

    missing = _image_command("build", "--base", "nothere/python:0", "--tag", "rendezvous/test-unbuilt:0", "--force")
    assert missing.returncode == 4, missing.stderr
    assert "base image nothere/python:0 is not on this machine" in missing.stderr and "Traceback" not in missing.stderr

    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        return  # `image base` refuses at once here: it needs root and debootstrap
    unreachable = _image_command("base", "--tag", "rendezvous/test-base:0", "--mirror", "http://127.0.0.1:9/debian")
    assert unreachable.returncode == 4, unreachable.stderr
    assert "debootstrap failed" in unreachable.stderr and "Traceback" not in unreachable.stderr
    assert not any("rendezvous/test-base:0" in tag for image in docker_client.images.list() for tag in image.tags)
