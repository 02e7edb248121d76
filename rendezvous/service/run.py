"""Building and running one rendezvous worker.

Startup order: read the policies topic; reconcile it with ``--policy FILE`` (the
higher version wins, and a file newer than the topic is published there, so every
worker converges on it); read back the observations the policy's forgetting still
counts; then follow both topics and run the Faust worker until SIGTERM.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import faust

from policies import load_policy
from policies.schema import Policy
from rendezvous.kernel.admin import partition_count
from rendezvous.kernel.errors import RendezvousError
from rendezvous.kernel.kafka import check_connection
from rendezvous.kernel.presence import Announcer
from rendezvous.service.control import ControlFeed
from rendezvous.service.policies import PolicyStore, publish_policy, who
from rendezvous.service.settings import ServiceSettings
from rendezvous.service.worker import RendezvousWorker

__all__ = ["ServiceError", "check_topics", "ADAPTIVE_HISTORY_S", "history_start_ms", "build_worker", "run_worker"]

log = logging.getLogger("rendezvous.service")


class ServiceError(RendezvousError):
    """The worker cannot start as configured."""


def check_topics(settings: ServiceSettings) -> None:
    counts = {t: partition_count(settings.kafka, t) for t in settings.topics.copartitioned}
    if len(set(counts.values())) != 1:
        raise ServiceError(f"requests, scores, results and outcomes must have one partition count; found {counts}")


#: With adaptive forgetting, a restarted worker rebuilds its posteriors from the last hour of
#: observations: a window that reaches further back carries no more than an hour's evidence here.
ADAPTIVE_HISTORY_S = 3600.0


def history_start_ms(doc: Policy, now_ms: float) -> float | None:
    """How far back observations still weigh: ten half-lives (under 0.1%), the window, an hour
    (adaptive: :data:`ADAPTIVE_HISTORY_S`), or everything the topic keeps (never forgetting)."""
    forgetting = doc.learning.forgetting
    if forgetting.window_s:
        return now_ms - 1000.0 * forgetting.window_s
    if forgetting.half_life_s:
        return now_ms - 10_000.0 * forgetting.half_life_s
    if forgetting.adaptive_delta is not None:
        return now_ms - 1000.0 * ADAPTIVE_HISTORY_S
    return None


def build_worker(settings: ServiceSettings, policy_path: Path | None, rng: random.Random | None = None) -> RendezvousWorker:
    file_doc = load_policy(policy_path) if policy_path else None  # a bad file is refused before anything else
    check_connection(settings.kafka)
    check_topics(settings)
    secret = settings.secret
    if secret is None:
        log.warning("no stack secret (--secret-file): policies, scores and bandit records are not checked, so any "
                    "client that can write to the broker can steer this worker; `rendezvous up` makes one")
    feed = ControlFeed(settings.kafka, settings.topics, secret.worker_key if secret else None)
    store = PolicyStore(rng or random.Random(), policy_key=secret.policy_key if secret else None)
    for value, record_ms, signature in feed.read_policies().policies:
        store.offer(value, record_ms, signature)
    now = time.time() * 1000
    if file_doc is not None and (store.doc is None or file_doc.version > store.doc.version):
        store.adopt(file_doc, now, who(), f"from {policy_path}")
        publish_policy(settings.kafka, settings.topics, file_doc, reason=f"worker started with {policy_path}",
                       secret=secret)
    if store.doc is None:
        raise ServiceError(f"no policy: {settings.topics.policies} holds none; pass --policy FILE")
    history = feed.read_bandit(history_start_ms(store.doc, now))
    worker = RendezvousWorker(settings, store, feed)
    worker.control.crediting.absorb(history.observations, store.learner, now)
    feed.start()
    return worker


def run_worker(worker: RendezvousWorker, log_level: str = "info") -> None:
    settings = worker.settings
    presence = Announcer(settings.kafka, settings.topics, "rendezvous", settings.app_id, settings.worker_id,
                         worker.presence)
    worker.link.start()
    presence.start()
    try:
        faust.Worker(worker.app, loglevel=log_level, quiet=True).execute_from_commandline()
    finally:
        presence.stop()
        worker.link.stop()
        worker.control.feed.stop()
