"""Run one rendezvous worker until SIGTERM (Faust's worker handles the signal)."""

from __future__ import annotations

from pathlib import Path

import faust

from policies import load_policy
from rendezvous.admin import partition_count
from rendezvous.routing.policy import compile_policy
from rendezvous.service.worker import RendezvousWorker, ServiceSettings


class ServiceError(RuntimeError):
    """The worker cannot start as configured."""


def check_topics(settings: ServiceSettings) -> None:
    counts = {t: partition_count(settings.kafka, t) for t in settings.topics.copartitioned}
    if len(set(counts.values())) != 1:
        raise ServiceError(f"requests, scores, results and outcomes must have one partition count; found {counts}")


def build_worker(settings: ServiceSettings, policy_path: Path) -> RendezvousWorker:
    policy = compile_policy(load_policy(policy_path))
    check_topics(settings)
    return RendezvousWorker(settings, policy)


def run_worker(worker: RendezvousWorker, log_level: str = "info") -> None:
    faust.Worker(worker.app, loglevel=log_level, quiet=True).execute_from_commandline()
