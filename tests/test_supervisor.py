"""The process supervisor: restarts with backoff, gives up on crash loops, cleans up."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from rendezvous.operations.embedded import free_port
from rendezvous.operations.supervisor import ChildSpec, Supervisor
from tests.conftest import eventually


def wait_until(condition, timeout=10.0):  # noqa: ANN001, ANN201
    return eventually(condition, timeout, every=0.05)


def spec(tmp_path: Path, name: str, code: str) -> ChildSpec:
    return ChildSpec(name, [sys.executable, "-c", textwrap.dedent(code)], tmp_path / f"{name}.log")


def test_a_dead_child_is_restarted(tmp_path):
    sup = Supervisor(backoff_initial_s=0.05)
    child = sup.add(spec(tmp_path, "sleeper", "import time; time.sleep(60)"))
    first = child.pid
    os.kill(first, signal.SIGKILL)
    try:
        assert wait_until(lambda: (sup.check(), child.pid not in (None, first))[1])
        assert child.restarts == 1 and child.state == "running" and child.last_exit_code == -signal.SIGKILL
    finally:
        sup.stop_all(5)
    assert child.process.poll() is not None


def test_a_crash_loop_is_marked_failed_not_restarted_forever(tmp_path):
    sup = Supervisor(max_restarts=3, window_s=60, backoff_initial_s=0.01)
    child = sup.add(spec(tmp_path, "crasher", "import sys; print('boom'); sys.exit(3)"))
    try:
        assert wait_until(lambda: (sup.check(), child.state == "failed")[1])
        assert child.restarts == 2 and child.last_exit_code == 3
        assert "boom" in (tmp_path / "crasher.log").read_text()
    finally:
        sup.stop_all(5)


def test_stop_all_escalates_to_sigkill(tmp_path):
    sup = Supervisor()
    child = sup.add(spec(tmp_path, "stubborn", """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ready', flush=True)
        time.sleep(60)
    """))
    assert wait_until(lambda: "ready" in (tmp_path / "stubborn.log").read_text())
    started = time.monotonic()
    sup.stop_all(timeout=0.5)
    assert child.process.returncode == -signal.SIGKILL and time.monotonic() - started < 5


def test_children_die_with_their_supervisor(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from rendezvous.operations.supervisor import ChildSpec, Supervisor
        sup = Supervisor()
        c = sup.add(ChildSpec("c", [sys.executable, "-c", "import time; time.sleep(60)"], Path({str(tmp_path)!r}) / "c.log"))
        print(c.pid, flush=True)
        time.sleep(60)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    def gone():
        try:
            os.kill(child_pid, 0)
            with open(f"/proc/{child_pid}/stat") as f:
                return f.read().split()[2] == "Z"
        except (ProcessLookupError, FileNotFoundError):
            return True
    assert wait_until(gone, 5), "the child outlived its supervisor"


def test_a_child_on_port_0_binds_a_free_port_and_says_which_after_every_start(tmp_path):
    serve = ("import time; from prometheus_client import CollectorRegistry; from rendezvous.kernel.status import "
             "StatusServer; StatusServer(CollectorRegistry(), lambda: True).start(); time.sleep(60)")
    sup = Supervisor(backoff_initial_s=0.05)
    child = sup.add(ChildSpec("web", [sys.executable, "-c", serve], tmp_path / "web.log", http_port=0))
    try:
        assert wait_until(lambda: sup.is_ready("web")), (tmp_path / "web.log").read_text()
        first = child.pid
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: (sup.check(), child.pid not in (None, first))[1])
        assert wait_until(lambda: sup.is_ready("web"))  # the restarted child announced its new port
        assert child.http_port == int(child.spec.port_file.read_text())
    finally:
        sup.stop_all(5)


BLOCKED_IN_LIBRDKAFKA = """
    from confluent_kafka import Consumer, TopicPartition
    from rendezvous.kernel.lifecycle import StopDeadline, run_off_the_main_thread, stop_on_signals
    stop_on_signals(StopDeadline(1.0, "a service"))
    consumer = Consumer({{"bootstrap.servers": "127.0.0.1:{port}", "group.id": "g", "log_level": 0}})

    def loop():
        print("committing", flush=True)
        # a synchronous commit to a broker that is not there: librdkafka holds the calling thread about 44 s
        consumer.commit(offsets=[TopicPartition("t", 0, 5)], asynchronous=False)

    {run}
"""


def test_a_service_blocked_in_a_librdkafka_call_still_ends_within_its_stop_grace(tmp_path):
    """The decoy and the runner run their loop off the main thread, so that SIGTERM is taken at once and its
    stop deadline armed, whatever call the loop is blocked in."""
    code = BLOCKED_IN_LIBRDKAFKA.format(port=free_port(), run="run_off_the_main_thread(loop)")
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "committing\n"
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)  # its grace is 1 s; on the main thread the commit would hold it about 44 s
        except subprocess.TimeoutExpired:
            raise AssertionError("still running 10 s after SIGTERM: the signal waited for librdkafka") from None
        assert process.returncode == 1  # the stop deadline ended it
    finally:
        process.kill()
        process.wait()
