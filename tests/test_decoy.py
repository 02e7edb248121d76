"""The decoy end to end: it archives every request byte for byte, survives a kill, and replays."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from confluent_kafka import Producer

from decoy.archive import ArchiveReader
from rendezvous.kernel.admin import create_topic, delete_topic, end_offsets
from tests.conftest import System, fresh_topics, settings_for, wait_until

pytestmark = pytest.mark.slow


def records(n: int, start: int = 0) -> list[tuple[bytes | None, bytes | None, list | None]]:
    """Requests as clients may send them, including ones the rendezvous will dead-letter."""
    out = []
    for i in range(start, start + n):
        if i % 50 == 7:
            out.append((None, os.urandom(40), None))  # not even JSON
        else:
            value = b'{"request_id": "r%d", "features": {"x": %d, "s": "\\u00e9"}}' % (i, i)
            out.append((b"r%d" % i, value, [("trace-id", os.urandom(8)), ("empty", None)] if i % 3 == 0 else None))
    return out


def produce(system: System, batch) -> None:
    producer = Producer(system.kafka.producer())
    start_ms = int(time.time() * 1000) - len(batch)
    for i, (key, value, headers) in enumerate(batch):  # a timestamp each, so time ranges can cut between them
        producer.produce(system.topics.requests, value, key, headers=headers, timestamp=start_ms + i)
        producer.poll(0)
    assert producer.flush(10) == 0


def archived(directory) -> list:
    return [r for _, r in ArchiveReader(directory).read()]


def archived_to_the_end(system: System, directory, sent: int, timeout: float = 30.0) -> list:
    """The archive, once the decoy has archived the ``sent`` records of the requests topic and read it to its
    end (bounded wait). Anything read twice would be in it by then."""
    ends = dict(enumerate(end_offsets(system.kafka, system.topics.requests, system.partitions)))

    def done() -> list | None:
        got = archived(directory)  # raises while the decoy has not created it yet: tried again
        last = {}
        for r in got:
            last[r.partition] = max(last.get(r.partition, -1), r.offset)
        return got if len(got) >= sent and all(last.get(p, -1) >= end - 1 for p, end in ends.items()) else None
    return wait_until(done, f"the decoy archived {sent} records and {system.topics.requests} to its end", timeout)


def as_sent(r) -> tuple:
    return r.key, r.value, [tuple(h) for h in r.headers] if r.headers else None


@pytest.fixture(scope="module")
def archived_across_a_kill(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A decoy that archived 600 requests, killed (and restarted by its supervisor) half way through the first 300."""
    system = System(settings_for(broker), tmp_path_factory.mktemp("decoy"))
    try:
        archive = system.directory / "archive"
        decoy = system.runtime.start_decoy(archive)
        system.wait_ready([decoy])
        first, second = records(300), records(300, start=300)
        produce(system, first)
        wait_until(lambda: len(archived(archive)) >= 150, "half the first batch archived")
        system.signal(decoy, signal.SIGKILL)  # the supervisor restarts it
        produce(system, second)
        got = archived_to_the_end(system, archive, 600)
        yield system, decoy, archive, first + second, got
    finally:
        system.close()


def test_the_archive_equals_the_inputs_byte_for_byte_even_across_a_kill(archived_across_a_kill):
    system, decoy, archive, sent, got = archived_across_a_kill
    assert sorted(map(as_sent, got), key=repr) == sorted(((k, v, h) for k, v, h in sent), key=repr)
    assert ArchiveReader(archive).verify().ok
    assert system.runtime.supervisor.get(decoy).restarts == 1

    # replay the archive onto a fresh topic, through the CLI, and read it back
    target = fresh_topics(system.kafka)
    done = subprocess.run(
        [sys.executable, "-m", "rendezvous", "replay", "--archive", str(archive), "--broker",
         system.kafka.bootstrap, "--topic", target.requests, "--keep-timestamps"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "replayed 600 records" in done.stdout
    back = system.read_topic(target.requests)
    replayed = sorted(((m.key(), m.value(), m.headers()) for m in back), key=repr)
    assert replayed == sorted(map(as_sent, got), key=repr)
    assert sorted(m.timestamp()[1] for m in back) == sorted(r.timestamp for r in got)


def test_replay_selects_a_range(archived_across_a_kill):
    system, _, archive, _, _ = archived_across_a_kill
    target = fresh_topics(system.kafka)
    done = subprocess.run(
        [sys.executable, "-m", "rendezvous", "replay", "--archive", str(archive), "--broker",
         system.kafka.bootstrap, "--topic", target.requests, "--from-seq", "10", "--to-seq", "19"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = [r.value for seq, r in ArchiveReader(archive).read(10, 19)]
    assert len(expected) == 10
    assert sorted(m.value() for m in system.read_topic(target.requests)) == sorted(expected)
    assert "10/10" in done.stderr, done.stderr  # the progress counts the range, not the whole archive


def test_replay_selects_a_time_range_and_refuses_a_time_it_cannot_read(archived_across_a_kill):
    system, _, archive, _, got = archived_across_a_kill
    stamps = sorted({r.timestamp for r in got})
    assert len(stamps) >= 3, "the archive's records need distinct timestamps for a range inside them"
    since, until = stamps[len(stamps) // 3], stamps[2 * len(stamps) // 3]
    expected = sorted(r.value for r in got if since <= r.timestamp <= until)
    assert 0 < len(expected) < len(got)
    target = fresh_topics(system.kafka)
    done = subprocess.run(
        [sys.executable, "-m", "rendezvous", "replay", "--archive", str(archive), "--broker",
         system.kafka.bootstrap, "--topic", target.requests, "--since", str(since), "--until", str(until)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"replayed {len(expected)} records" in done.stdout
    assert sorted(m.value() for m in system.read_topic(target.requests)) == expected

    bad = subprocess.run([sys.executable, "-m", "rendezvous", "replay", "--archive", str(archive), "--broker",
                          system.kafka.bootstrap, "--topic", target.requests, "--since", "last tuesday"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "neither epoch milliseconds nor an ISO 8601 time" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def test_archive_info_and_verify_report_what_the_archive_holds_and_a_damaged_byte(archived_across_a_kill, tmp_path):
    _, _, archive, _, got = archived_across_a_kill
    info = subprocess.run([sys.executable, "-m", "rendezvous", "archive", "info", str(archive)],
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert f"{len(got)} records" in info.stdout and "timestamps " in info.stdout
    ok = subprocess.run([sys.executable, "-m", "rendezvous", "archive", "verify", str(archive)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip().endswith(": ok"), ok.stdout + ok.stderr
    assert f"{len(got)} records" in ok.stdout

    damaged = tmp_path / "damaged"
    shutil.copytree(archive, damaged)
    segment = sorted(damaged.glob("*.log"))[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a record
    segment.write_bytes(bytes(data))
    bad = subprocess.run([sys.executable, "-m", "rendezvous", "archive", "verify", str(damaged)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "DAMAGED" in bad.stdout and "problem:" in bad.stderr, bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_decoy_answers_its_status_endpoints(archived_across_a_kill):
    system, decoy, _, _, got = archived_across_a_kill
    base = system.url(decoy)
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/ready").status_code == 200
        metrics = http.get("/metrics")
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
        info = http.get("/info")
        assert info.status_code == 200 and info.json()["kafka"]["bootstrap"] == system.kafka.bootstrap
        missing = http.get("/nothing")
        assert missing.status_code == 404 and "/healthz" in missing.text


def test_a_requests_topic_made_again_is_archived_as_a_new_log_not_skipped_as_redelivery(broker, tmp_path):
    """Offsets start again at 0 in a new log (a broker that lost its data, a topic deleted and made again):
    offsets alone would call every new record a re-delivery and skip it."""
    system = System(settings_for(broker), tmp_path, partitions=2)
    try:
        archive = tmp_path / "archive"
        decoy = system.runtime.start_decoy(archive)
        system.wait_ready([decoy])
        produce(system, records(200))
        archived_to_the_end(system, archive, 200)
        assert delete_topic(system.kafka, system.topics.requests) is None
        wait_until(lambda: _made_again(system), "the requests topic made again", timeout=30)
        fresh = records(40, start=1000)  # fewer than before: every new offset is one the old log had
        produce(system, fresh)
        got = wait_until(lambda: a if len(a := archived(archive)) >= 240 else None, "the new log archived", 60)
        assert sorted(map(as_sent, got[200:]), key=repr) == sorted(fresh, key=repr)
        report = ArchiveReader(archive).verify()
        assert report.ok and report.logs == 4 and report.never_archived == 0, report
    finally:
        system.close()


def _made_again(system: System) -> bool:
    try:
        create_topic(system.kafka, system.topics.requests, system.partitions)
        return len(end_offsets(system.kafka, system.topics.requests, system.partitions)) == system.partitions
    except Exception:  # noqa: BLE001 - the deletion is still under way: tried again
        return False
