"""The Apache Kafka broker's jars and the Java that runs them.

The jars are resolved by Maven from ``kafka/pom.xml`` into a cache outside the
repository (``RENDEZVOUS_BROKER_JARS``, default ``~/.cache/rendezvous/kafka-<version>``)
and every one is checked against ``kafka/jars.lock``: the same sha256 for the same
file names, nothing more and nothing less. ``scripts/install`` fetches them once;
``rendezvous broker fetch`` does it by hand.

>>> lock = parse_lock("# comment\\nab12  kafka.jar\\n")
>>> lock
{'kafka.jar': 'ab12'}
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from rendezvous.kernel.errors import OperationsError

__all__ = ["KAFKA_VERSION", "JARS_ENV", "KafkaDistError", "jar_dir", "java_binary", "java_major", "java_available",
           "kafka_available", "fetch_jars", "verify_jars", "parse_lock", "POM", "LOCK", "LOG4J_CONFIG"]

_HERE = Path(__file__).parent / "kafka"
POM = _HERE / "pom.xml"
LOCK = _HERE / "jars.lock"
LOG4J_CONFIG = _HERE / "log4j2.properties"
KAFKA_VERSION = "4.4.0"
MIN_JAVA = 17
JARS_ENV = "RENDEZVOUS_BROKER_JARS"


class KafkaDistError(OperationsError):
    """Java or the broker's jars are missing or do not match the lock."""


def jar_dir() -> Path:
    """Where the broker's jars are cached (not in the repository)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rendezvous" / f"kafka-{KAFKA_VERSION}"
    return Path(os.environ.get(JARS_ENV, default))


def java_binary() -> Path | None:
    """``$JAVA_HOME/bin/java``, else ``java`` on the PATH; None if there is neither."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return Path(home) / "bin" / "java"
    found = shutil.which("java")
    return Path(found) if found else None


def java_major(java: Path) -> int | None:
    """The major version of a Java runtime (17 for "17.0.15"), or None if it does not run."""
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def java_available() -> bool:
    """True when a Java 17+ runtime is here (the jars can then be fetched)."""
    java = java_binary()
    return java is not None and (java_major(java) or 0) >= MIN_JAVA


def kafka_available() -> bool:
    """True when the Kafka engine can start here: Java 17+, and the locked jars in the cache."""
    if not java_available():
        return False
    try:
        verify_jars()
    except KafkaDistError:
        return False
    return True


def parse_lock(text: str) -> dict[str, str]:
    """``sha256  name`` lines (``sha256sum``'s format) as {name: sha256}; ``#`` starts a comment."""
    lock = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            digest, name = line.split(maxsplit=1)
            lock[name.strip()] = digest
    return lock


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_jars(directory: Path | None = None) -> list[Path]:
    """The jars of ``directory`` (default :func:`jar_dir`), each checked against the lock.

    Raises :class:`KafkaDistError` naming the first jar that is missing, extra or different.
    """
    directory = directory or jar_dir()
    lock = parse_lock(LOCK.read_text())
    found = {p.name: p for p in directory.glob("*.jar")} if directory.is_dir() else {}
    if not found:
        raise KafkaDistError(f"the Kafka broker's jars are not in {directory}",
                             hint="run `rendezvous broker fetch` (needs Maven), or use --engine tansu")
    missing, extra = sorted(set(lock) - set(found)), sorted(set(found) - set(lock))
    if missing or extra:
        raise KafkaDistError(f"the jars in {directory} do not match {LOCK.name}: missing {missing}, unexpected {extra}",
                             hint="run `rendezvous broker fetch` again")
    for name, path in sorted(found.items()):
        if _sha256(path) != lock[name]:
            raise KafkaDistError(f"{path} does not have the sha256 that {LOCK.name} pins",
                                 hint="delete the directory and run `rendezvous broker fetch` again")
    return [found[name] for name in sorted(found)]


def fetch_jars(relock: bool = False) -> Path:
    """Resolve the pom's jars with Maven into :func:`jar_dir`, checked against the lock.

    ``relock``: write the lock from what Maven resolved instead (after changing the pom).
    Idempotent: with the right jars already cached, Maven is not run.
    """
    target = jar_dir()
    if not relock:
        try:
            verify_jars(target)
            return target
        except KafkaDistError:
            pass
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaDistError("Maven (mvn) is needed to fetch the Kafka broker's jars and is not on the PATH",
                             hint="install Maven (Debian: apt-get install maven), or use --engine tansu")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kafka-", dir=target.parent))
    try:
        done = subprocess.run([mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                               f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
            raise KafkaDistError(f"Maven could not resolve the Kafka broker's jars:\n{tail}")
        if relock:
            lines = [f"{_sha256(p)}  {p.name}" for p in sorted(staging.glob("*.jar"))]
            LOCK.write_text(f"# sha256 of every jar {POM.name} resolves to (Kafka {KAFKA_VERSION}); "
                            "written by `rendezvous broker fetch --relock`\n" + "\n".join(lines) + "\n")
        verify_jars(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
