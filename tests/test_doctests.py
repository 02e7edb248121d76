"""The runnable examples in the docstrings are part of the suite: documentation that runs."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "canary.cusum", "canary.drift", "canary.watch",
    "containers.spec", "containers.examples.synthetic", "containers.examples.phishing",
    "decoy.archive", "policies", "policies.record",
    "rendezvous.kernel.client_config", "rendezvous.kernel.clock", "rendezvous.kernel.errors",
    "rendezvous.kernel.settings", "rendezvous.kernel.topics", "rendezvous.kernel.wire",
    "rendezvous.kernel.documents", "rendezvous.kernel.presence", "rendezvous.kernel.memory",
    "rendezvous.kernel.lifecycle",
    "rendezvous.tools.summary", "rendezvous.tools.data", "rendezvous.tools.timeline",
    "rendezvous.routing.bandit", "rendezvous.routing.outcomes", "rendezvous.routing.plan", "rendezvous.routing.quality",
    "rendezvous.routing.policy", "rendezvous.routing.ramp", "rendezvous.routing.router",
    "rendezvous.routing.lateness", "rendezvous.routing.standby", "rendezvous.operations.base", "rendezvous.operations.broker",
    "rendezvous.operations.kafka_broker", "rendezvous.operations.kafka_dist", "rendezvous.operations.acls",
    "rendezvous.service.metrics", "rendezvous.service.running", "rendezvous.kernel.kafka",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
