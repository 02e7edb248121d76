"""Container images for model runners and the broker, built with nothing pulled from a registry.

Three images matter:

* the **base image**: a Python 3.11 userland. Users normally build on
  ``python:3.11-slim``; a machine that cannot pull images builds its own with
  :func:`build_base_image` (Debian's debootstrap, then ``docker import``).
* the **runner image**: ``containers/Dockerfile`` on top of the base image, with
  rendezvous and its locked dependencies installed from a wheelhouse prepared on
  the host. Its entrypoint is the model runner, ``python -m containers``,
  exactly the program the process runtime starts. A model's spec directory is
  mounted at ``/model`` when a replica starts, so one image serves every model
  whose code is either in the image or next to its spec.
* the **Kafka image** (:func:`build_kafka_image`): the runner image plus a Java
  runtime and the locked Kafka jars, running ``rendezvous broker``: the embedded
  Kafka, for ``compose/docker-compose.yml``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import containers
from rendezvous import __version__
from rendezvous.kernel.errors import OperationsError
from rendezvous.operations.kafka_dist import KAFKA_VERSION, KafkaDistError, java_binary, verify_jars

__all__ = [
    "DEFAULT_BASE_IMAGE", "LOCAL_BASE_IMAGE", "RUNNER_IMAGE", "KAFKA_IMAGE", "DEBIAN_SUITE", "Progress",
    "KAFKA_DOCKERFILE", "PROMETHEUS_IMAGE", "PROMETHEUS_DOCKERFILE", "ImageError", "build_base_image", "source_root",
    "PACKAGES", "RUNTIME_LOCK", "source_digest", "runner_image_is_current", "build_runner_image", "build_kafka_image",
    "has_image", "ensure_runner_image", "build_prometheus_image",
]

DEFAULT_BASE_IMAGE = "python:3.11-slim"
LOCAL_BASE_IMAGE = "local/python:3.11"
RUNNER_IMAGE = f"rendezvous/runner:{__version__}"
KAFKA_IMAGE = f"rendezvous/kafka:{KAFKA_VERSION}"  # what compose/docker-compose.yml runs
DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, the version rendezvous is locked for

Progress = Callable[[str], None]
KAFKA_DOCKERFILE = Path(__file__).parent / "kafka" / "Dockerfile"
#: What compose/docker-compose.yml runs for Prometheus where nothing can be pulled (`rendezvous image prometheus`).
PROMETHEUS_IMAGE = "rendezvous/prometheus:local"
PROMETHEUS_DOCKERFILE = Path(__file__).parent / "prometheus" / "Dockerfile"


class ImageError(OperationsError):
    """An image could not be built."""


def _run(argv: list[str], progress: Progress, what: str, **kwargs) -> None:
    progress(f"{what}: {' '.join(argv[:4])} ...")
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ImageError(f"{what} failed (exit {done.returncode}):\n{tail}")


def build_base_image(client, tag: str = LOCAL_BASE_IMAGE, progress: Progress = lambda _: None,
                     mirror: str | None = None) -> str:
    """Build a minimal Debian + Python 3.11 image without a registry; return its tag.

    Needs root and ``debootstrap`` (Debian package ``debootstrap``). Takes about a
    minute: debootstrap ~30 s, the Python packages ~10 s, the import a few seconds.
    """
    if os.geteuid() != 0:
        raise ImageError("building the base image needs root (debootstrap and chroot); "
                         f"or build on a pulled image instead: --base {DEFAULT_BASE_IMAGE}")
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed: apt-get install -y debootstrap")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rendezvous-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        argv = ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs)]
        _run(argv + ([mirror] if mirror else []), progress, "debootstrap")
        shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        _run(["chroot", str(rootfs), "apt-get", "install", "-y", "-q", "--no-install-recommends",
              "python3", "python3-venv", "ca-certificates"], progress, "installing python3 in the root filesystem",
             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        _run(["chroot", str(rootfs), "apt-get", "clean"], progress, "cleaning apt caches")
        progress(f"importing the root filesystem as {tag}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            repository, _, version = tag.partition(":")
            client.api.import_image(src=tar.stdout, stream_src=True, repository=repository, tag=version or "latest",
                                    changes=['CMD ["python3"]', "ENV LANG=C.UTF-8"])
        finally:
            tar.stdout.close()
            tar.wait()
    progress(f"built {tag} in {time.monotonic() - started:.0f}s")
    return tag


def source_root() -> Path:
    """The checkout rendezvous runs from: the runner image is built from it."""
    root = Path(containers.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / RUNTIME_LOCK).is_file():
        raise ImageError(f"building the runner image needs the rendezvous source tree (pyproject.toml and "
                         f"{RUNTIME_LOCK}); {root} is an installed copy. Clone the repository and build there.")
    return root


PACKAGES = ("rendezvous", "containers", "decoy", "canary", "policies")
#: What the image installs: the runtime dependencies only, not the test tools (pytest, the OIP clients).
RUNTIME_LOCK = "requirements-runtime.lock"


def source_digest(root: Path | None = None) -> str:
    """A hash of everything that goes into the runner image: its packages, pyproject, lock file."""
    root = root or source_root()
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", root / RUNTIME_LOCK]
    files += sorted(f for package in PACKAGES for f in (root / package).rglob("*")
                    if f.is_file() and "__pycache__" not in f.parts)
    for f in files:
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def runner_image_is_current(client, tag: str = RUNNER_IMAGE, base: str | None = None) -> bool:
    """Whether ``tag`` exists and was built from this source tree (and ``base``, when given)."""
    import docker.errors

    try:
        labels = client.images.get(tag).labels or {}
    except docker.errors.ImageNotFound:
        return False
    if labels.get("io.rendezvous.source") != source_digest():
        return False
    if base is None:
        return True
    try:  # the same base name, rebuilt (`image base` again), is another base
        base_id = client.images.get(base).id
    except docker.errors.ImageNotFound:
        return False
    return labels.get("io.rendezvous.base") == base and labels.get("io.rendezvous.base-id") == base_id


def _build(client, context: Path, tag: str, buildargs: dict[str, str], progress: Progress,
           labels: dict[str, str], started: float) -> str:
    """``docker build`` of ``context`` as ``tag``, each step shown as the engine reaches it (not once the build
    is over); then the image ``tag`` named before, now untagged, is removed."""
    import docker.errors

    previous = _image_id(client, tag)
    progress(f"building {tag} on {next(iter(buildargs.values()))}")
    log: list[str] = []
    try:
        for chunk in client.api.build(path=str(context), tag=tag, buildargs=buildargs, rm=True, forcerm=True,
                                      labels=labels, decode=True):
            line = chunk.get("stream") or chunk.get("error") or ""
            log.append(line)
            if "error" in chunk:
                raise ImageError(f"docker build of {tag} failed: {chunk['error'].strip()}\n{''.join(log)[-2000:]}")
            if line.startswith("Step"):
                progress(line.strip())
    except docker.errors.APIError as exc:
        raise ImageError(f"docker build of {tag} failed: {exc}\n{''.join(log)[-2000:]}") from None
    progress(f"built {tag} in {time.monotonic() - started:.0f}s")
    _drop_replaced(client, previous, tag, progress)
    return tag


def _image_id(client, tag: str) -> str | None:
    import docker.errors

    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        return None


def _drop_replaced(client, previous: str | None, tag: str, progress: Progress) -> None:
    """Remove the image ``tag`` named before a rebuild, now untagged (dangling), unless a container still uses it."""
    import docker.errors

    if previous is None or previous == _image_id(client, tag):
        return
    try:
        client.images.remove(previous, noprune=False)
        progress(f"removed the previous {tag} ({previous.removeprefix('sha256:')[:12]})")
    except docker.errors.APIError:  # still in use by a container, or tagged elsewhere: it stays
        pass


def build_runner_image(client, base: str = DEFAULT_BASE_IMAGE, tag: str = RUNNER_IMAGE,
                       progress: Progress = lambda _: None) -> str:
    """Build ``containers/Dockerfile`` on ``base``; return the tag.

    The wheelhouse is made on the host (pip's cache serves it), so the build
    itself needs no network: the image gets exactly the locked versions. The
    image is labelled with :func:`source_digest`, so a stale one is noticed.
    """
    _require_image(client, base)
    root = source_root()
    digest = source_digest(root)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rendezvous-image-") as tmp:
        context = Path(tmp)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        # Two directories, two layers: the dependencies' layer stays cached while only rendezvous changes.
        _run(pip + ["download", "--require-hashes", "-r", str(root / RUNTIME_LOCK), "-d", str(context / "wheels")],
             progress, "collecting the locked dependencies")
        _run(pip + ["wheel", "--no-deps", "-w", str(context / "app"), str(root)], progress, "building the rendezvous wheel")
        shutil.copy(root / RUNTIME_LOCK, context / "requirements.lock")
        shutil.copy(root / "containers" / "Dockerfile", context / "Dockerfile")
        return _build(client, context, tag, {"BASE_IMAGE": base}, progress,
                      {"io.rendezvous.role": "runner", "io.rendezvous.source": digest, "io.rendezvous.base": base,
                       "io.rendezvous.base-id": client.images.get(base).id}, started)


#: Enough of the Java platform for the Kafka broker (jlink drops the rest: a smaller image).
_KAFKA_JAVA_MODULES = ("java.se,jdk.unsupported,jdk.crypto.ec,jdk.management,jdk.management.agent,jdk.zipfs,"
                       "jdk.naming.dns,jdk.security.auth,jdk.security.jgss,jdk.net")


def build_kafka_image(client, runner: str = RUNNER_IMAGE, tag: str = KAFKA_IMAGE,
                      progress: Progress = lambda _: None) -> str:
    """Build the embedded Kafka's image (``rendezvous/operations/kafka/Dockerfile``) on the runner image.

    Its Java runtime is made here by jlink from this machine's JDK; its jars are the
    locked ones from the cache (``rendezvous broker fetch``). Nothing is pulled.
    """
    _require_image(client, runner)
    try:
        jars = verify_jars()
    except KafkaDistError as exc:
        raise ImageError(f"{exc} ({exc.hint})") from None
    java = java_binary()
    jlink = java.resolve().parent / "jlink" if java else None
    if jlink is None or not jlink.is_file():
        raise ImageError("building the Kafka image needs a JDK 17+ with jlink (Debian: openjdk-17-jdk-headless)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rendezvous-kafka-image-") as tmp:
        context = Path(tmp)
        _run([str(jlink), "--add-modules", _KAFKA_JAVA_MODULES, "--strip-debug", "--no-man-pages", "--no-header-files",
              "--compress=2", "--output", str(context / "jre")], progress, "making a Java runtime")
        (context / "jars").mkdir()
        for jar in jars:
            shutil.copy(jar, context / "jars" / jar.name)
        shutil.copy(KAFKA_DOCKERFILE, context / "Dockerfile")
        return _build(client, context, tag, {"RUNNER_IMAGE": runner}, progress,
                      {"io.rendezvous.role": "kafka", "io.rendezvous.source": source_digest()}, started)


def _require_image(client, name: str) -> None:
    if not has_image(client, name):
        raise ImageError(
            f"base image {name} is not on this machine. Pull it (docker pull {name}) or, without a registry, "
            f"build one: rendezvous image base (then --base {LOCAL_BASE_IMAGE})")


def has_image(client, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_runner_image(client, progress: Progress = lambda _: None) -> str:
    """The runner image, built if missing or stale: on python:3.11-slim when it is here, else on
    the local base image, building that too where debootstrap and root allow."""
    if runner_image_is_current(client):
        return RUNNER_IMAGE
    if has_image(client, DEFAULT_BASE_IMAGE):
        base = DEFAULT_BASE_IMAGE
    else:
        base = LOCAL_BASE_IMAGE
        if not has_image(client, base):
            build_base_image(client, base, progress)
    return build_runner_image(client, base, RUNNER_IMAGE, progress)


def build_prometheus_image(client, runner: str = RUNNER_IMAGE, tag: str = PROMETHEUS_IMAGE,
                           progress: Progress = lambda _: None) -> str:
    """Build a Prometheus image for compose from this machine's ``prometheus`` and ``promtool`` (Debian's
    package) on the runner image: nothing is pulled."""
    _require_image(client, runner)
    binaries = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        raise ImageError(f"building the Prometheus image needs {' and '.join(missing)} on this machine "
                         "(Debian: apt-get install prometheus)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rendezvous-prometheus-image-") as tmp:
        context = Path(tmp)
        for name, path in binaries.items():
            shutil.copy(str(path), context / name)
        shutil.copy(PROMETHEUS_DOCKERFILE, context / "Dockerfile")
        return _build(client, context, tag, {"RUNNER_IMAGE": runner}, progress,
                      {"io.rendezvous.role": "prometheus", "io.rendezvous.source": source_digest()}, started)
