"""`rendezvous status` and `policy apply`: every service says where it is and what it has in force.

Each service keeps a record on the presence topic (rendezvous.kernel.presence); these tests run real
processes against the real broker and read what they announce, as a user's shell would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

from rendezvous.kernel.presence import read_presence
from tests.conftest import CHAIN_POLICY, System, cli, wait_until, write_policy


def _announced(system: System) -> dict[str, list]:
    at = {}
    for p in read_presence(system.kafka, system.topics):
        at.setdefault(p.role, []).append(p)
    return at


def test_status_lists_every_service_with_its_urls_and_the_policy_each_worker_has(system: System):
    models = system.start_chain_models()
    [worker] = system.start_workers(write_policy(system.directory, CHAIN_POLICY))
    system.runtime.start_gateway()
    system.wait_ready([*models, worker, "gateway"])

    def everyone() -> dict[str, list] | None:
        found = _announced(system)
        complete = len(found.get("model", [])) == 3 and found.get("rendezvous") and found.get("gateway")
        ready = all(p.details.get("ready") and p.urls for ps in found.values() for p in ps)
        return found if complete and ready else None
    found = wait_until(everyone, "every service announced itself, ready and with its URLs", timeout=20)
    [announced] = found["rendezvous"]
    with urllib.request.urlopen(announced.urls["metrics"], timeout=5) as response:  # the URL works, as given
        assert b"rendezvous_policy_version 1.0" in response.read()
    assert announced.details["policy_version"] == 1 and announced.details["partitions"] == [0, 1, 2, 3]
    assert sorted(p.name for p in found["model"]) == ["m1", "m2", "m3"]
    assert {"http", "grpc", "metrics"} <= set(found["gateway"][0].urls)

    shown = cli(system, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["policy"]["version"] == 1 and status["workers_behind"] == []
    assert {(i["role"], i["alive"]) for i in status["instances"]} == {
        ("rendezvous", True), ("model", True), ("gateway", True)}

    newer = write_policy(system.directory, CHAIN_POLICY.replace("version: 1", "version: 2"), "v2.yaml")
    applied = cli(system, "policy", "apply", str(newer))
    assert applied.returncode == 0, applied.stderr
    assert "in force on 1 worker(s)" in applied.stdout and announced.instance in applied.stdout
    # the worker says so itself, and `status` shows it (a table a person reads)
    assert system.stats(worker)["policy"]["version"] == 2
    table = cli(system, "status")
    assert table.returncode == 0 and "test-chain v2" in table.stdout and announced.urls["metrics"] in table.stdout

    # without a Docker engine, `models` and `logs` show the replicas `up` runs as processes (from their records)
    no_docker = {**os.environ, "DOCKER_HOST": f"unix://{system.directory}/no-docker.sock"}
    where = ["--broker", system.kafka.bootstrap, "--topic-prefix", system.topics.namespace]
    listed = subprocess.run([sys.executable, "-m", "rendezvous", "models", "--json", *where], capture_output=True,
                            text=True, timeout=60, env=no_docker)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted((r["model"], r["health"]) for r in rows) == [("m1", "running"), ("m2", "running"), ("m3", "running")]
    logged = subprocess.run([sys.executable, "-m", "rendezvous", "logs", "m3", *where], capture_output=True, text=True,
                            timeout=60, env=no_docker)
    assert logged.returncode == 0 and "==> " in logged.stdout and "m3" in logged.stdout, logged.stderr

    # a service stopped on purpose deletes its record (one killed is shown as gone when its heartbeats stop)
    system.signal(models[0], signal.SIGTERM)
    wait_until(lambda: len(_announced(system).get("model", [])) == 2, "the stopped model's record deleted", timeout=20)
