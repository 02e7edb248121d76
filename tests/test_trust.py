"""Only trusted writers steer a stack that has a secret: a policy, a score or a bandit record written
by anyone else (a plain producer with the same JSON) is refused, counted and has no effect.

Live: real model runners (each signing with its own key), a worker given the secret, the broker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from policies import load_policy
from policies.record import POLICY_KEY
from rendezvous.kernel.trust import SIGNATURE_HEADER, StackSecret, load_key, sign, write_key
from rendezvous.kernel.wire import DLQ_REASON, Score, ScoreBatch, encode
from rendezvous.service.control import BanditRecord
from rendezvous.service.policies import policy_record
from tests.conftest import CHAIN_POLICY, System, cli, late_intake, scripted_spec, settings_for, wait_until, write_policy
from tests.rule import Chain, check

SCORES = {"m1": 0.1, "m2": 0.2, "m3": 0.3}
CHAIN = Chain((("m3", 30), ("m2", 30), ("m1", None)), sla_ms=100)  # CHAIN_POLICY, restated


@pytest.fixture(scope="module")
def signed(broker, tmp_path_factory) -> System:
    directory = tmp_path_factory.mktemp("signed")
    secret_file = write_key(directory / "secret", bytes(range(32)))
    with System(settings_for(broker), directory, secret_file=secret_file) as s:  # closed even if the setup fails
        s.secret, s.secret_file = StackSecret.load(secret_file), secret_file
        models = s.start_models(*(scripted_spec(directory, m, score) for m, score in SCORES.items()))
        [s.worker] = s.start_workers(write_policy(directory, CHAIN_POLICY), extra=["--orphan-ttl-ms", "5000"])
        s.wait_ready([*models, s.worker])
        s.warm_up()
        yield s


def _produce(system: System, topic: str, value: bytes, key: bytes | None = None, partition: int = 0,
             headers: list | None = None) -> None:
    producer = Producer(system.kafka.producer())
    producer.produce(topic, value, key, partition=partition, headers=headers)
    assert producer.flush(10) == 0


def test_the_runners_sign_their_scores_and_the_worker_uses_them(signed: System):
    """Signed scores are taken: the answer is a model's, by the chain's rule on the arrivals the worker recorded
    (which model won the race is the machine's business), and none was refused as forged."""
    result = signed.ask_in_time("signed", {})  # a request read past its deadline is the default's, whatever the models do
    check(result, CHAIN)
    assert result.model in SCORES and result.score == SCORES[result.model], result  # not the default: scores taken
    assert all(c.score == SCORES[m] for m, c in result.candidates.items()), result.candidates
    assert signed.stats(signed.worker)["forged_scores"] == 0


def test_a_policy_without_the_policy_key_is_refused_and_the_old_one_stays(signed: System, tmp_path: Path):
    stats = signed.stats(signed.worker)["policy"]
    version, refused = stats["version"], stats["refused_records"]
    forged = load_policy(write_policy(tmp_path, CHAIN_POLICY.replace("version: 1", "version: 99")
                                      .replace("m3, wait_ms: 30", "ghost, wait_ms: 30")))
    value = policy_record(forged, reason="forged", by="intruder")
    _produce(signed, signed.topics.policies, value, POLICY_KEY)  # the same JSON as policy apply writes, unsigned
    _produce(signed, signed.topics.policies, value, POLICY_KEY, headers=[(SIGNATURE_HEADER, sign(b"guess" * 8, value))])
    wait_until(lambda: signed.stats(signed.worker)["policy"]["refused_records"] == refused + 2,
               "the worker refused both forged policies")
    assert signed.stats(signed.worker)["policy"]["version"] == version
    assert signed.ask(f"after-forged-policy-{time.monotonic_ns()}", {}).policy_version == version

    newer = write_policy(tmp_path, CHAIN_POLICY.replace("version: 1", f"version: {version + 1}"), "newer.yaml")
    applied = cli(signed, "policy", "apply", str(newer), "--secret-file", str(signed.secret_file))
    assert applied.returncode == 0, applied.stderr
    wait_until(lambda: signed.stats(signed.worker)["policy"]["version"] == version + 1, "the signed policy in force")
    shown = cli(signed, "policy", "show", "--json", "--secret-file", str(signed.secret_file))
    assert json.loads(shown.stdout)["version"] == version + 1  # not the forged v99, as the workers see it
    assert str(signed.secret_file) not in applied.stdout + applied.stderr and "secret" not in shown.stdout


def test_a_forged_score_is_refused_dead_lettered_and_never_returned(signed: System):
    refused = signed.stats(signed.worker)["forged_scores"]
    for _ in range(5):  # a request read past its deadline is the default's whatever arrived: forged anew, asked again
        rid = f"forge-{time.monotonic_ns()}"
        forged = encode(ScoreBatch("m3", "1", "h", [Score(rid, 1.0, 1.0, 2.0, score=0.999)]))
        for headers in (None, [(SIGNATURE_HEADER, sign(signed.secret.model_key("m2"), forged))]):  # unsigned; m2's key
            _produce(signed, signed.topics.scores, forged, rid.encode(), 0, headers)  # one worker: any partition
        # Sent first, the forged scores would wait as orphans and answer the request the moment it comes.
        refused += 2
        wait_until(lambda n=refused: signed.stats(signed.worker)["forged_scores"] >= n, "both forged scores refused")
        result = signed.ask(rid, {})
        check(result, CHAIN)  # by the chain's rule on the worker's recorded arrivals: m3 may be late on a busy machine
        assert result.score != 0.999, result
        if not late_intake(result):
            break
    assert not late_intake(result), f"5 requests in a row reached the worker past their deadline: {result.detail}"
    assert result.model in SCORES and result.score == SCORES[result.model], result
    assert all(c.score == SCORES[m] for m, c in result.candidates.items()), result.candidates  # never a candidate
    reasons = [dict(m.headers())[DLQ_REASON].decode() for m in signed.read_topic(signed.topics.deadletter)]
    assert any("'m3' is not signed" in r for r in reasons) and any("not signed with 'm3''s key" in r for r in reasons)


def test_a_bandit_record_without_the_worker_key_is_refused(signed: System):
    record = BanditRecord("intruder", [("r-1", "m1", 1.0, time.time() * 1000)] * 50)
    _produce(signed, signed.topics.bandit, encode(record))
    wait_until(lambda: signed.stats(signed.worker)["policy"]["unsigned_bandit_records"] >= 1,
               "the worker refused the unsigned bandit record")


def test_the_cli_makes_a_secret_and_a_model_key_the_workers_derive_alike(tmp_path: Path):
    """For stacks run without `up` (Compose, Kubernetes): the secret for workers, one key per model for runners."""
    run = [sys.executable, "-m", "rendezvous", "secret"]
    made = subprocess.run([*run, "create", str(tmp_path / "secret")], capture_output=True, text=True, timeout=60)
    keyed = subprocess.run([*run, "model-key", "boosted", "--secret-file", str(tmp_path / "secret"),
                            "--out", str(tmp_path / "boosted.key")], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and keyed.returncode == 0, made.stderr + keyed.stderr
    secret = StackSecret.load(tmp_path / "secret")
    assert load_key(tmp_path / "boosted.key") == secret.model_key("boosted") != secret.model_key("forest")
    for path in (tmp_path / "secret", tmp_path / "boosted.key"):
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().strip() not in made.stdout + keyed.stdout + made.stderr + keyed.stderr
    (tmp_path / "secret").chmod(0o644)
    refused = subprocess.run([*run, "model-key", "x", "--secret-file", str(tmp_path / "secret"), "--out",
                              str(tmp_path / "x.key")], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "chmod 600" in refused.stderr and "Traceback" not in refused.stderr
