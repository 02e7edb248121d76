"""The worker's Faust app: the settings it is built with (no broker needed to build it)."""

from __future__ import annotations

import logging

from rendezvous.kernel.client_config import ClientConfig
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.service.app import create_app


def test_the_web_server_binds_the_host_it_is_given_not_every_address():
    app = create_app("bind-test", KafkaSettings("127.0.0.1:9"), "127.0.0.1", 6066)
    assert app.conf.web_bind == "127.0.0.1" and app.conf.web_host == "127.0.0.1"


def test_every_bootstrap_server_and_the_security_reach_faust():
    client = ClientConfig.parse({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
                                 "sasl.username": "u", "sasl.password": "p"})
    app = create_app("sec-test", KafkaSettings("b1:9092,b2:9092", client=client), "127.0.0.1", 6066)
    assert [str(url) for url in app.conf.broker] == ["kafka://b1:9092", "kafka://b2:9092"]
    credentials = app.conf.broker_credentials
    assert (credentials.username, credentials.mechanism.value) == ("u", "SCRAM-SHA-512")


def test_faust_variables_in_the_environment_are_ignored_and_named(monkeypatch, caplog):
    """Faust reads WEB_PORT (and 80 more) over what the app passes: two workers bound one port."""
    monkeypatch.setenv("WEB_PORT", "7777")
    monkeypatch.setenv("BROKER_SESSION_TIMEOUT", "99")
    with caplog.at_level(logging.WARNING, logger="rendezvous.service.app"):
        app = create_app("env-test", KafkaSettings("127.0.0.1:9"), "127.0.0.1", 6070)
    assert app.conf.web_port == 6070 and app.conf.broker_session_timeout == 6.0
    assert "ignoring BROKER_SESSION_TIMEOUT, WEB_PORT in the environment" in caplog.text
