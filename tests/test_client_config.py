"""Kafka client properties: one source (file and RENDEZVOUS_KAFKA_*), every client, no secret shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from rendezvous.kernel.client_config import ClientConfig
from rendezvous.kernel.errors import KafkaConfigError
from rendezvous.kernel.settings import KafkaSettings
from rendezvous.service.app import broker_credentials

SASL = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "svc",
        "sasl.password": "pw-5f4dcc3b"}


def test_properties_file_is_overridden_by_the_environment(tmp_path: Path):
    path = tmp_path / "client.properties"
    path.write_text("# from the cloud console\nsecurity.protocol = SASL_SSL\nsasl.mechanisms=PLAIN\n"
                    "sasl.username: alice\nsasl.password=from-file\nbootstrap.servers=b1:9092,b2:9092\n")
    secret = tmp_path / "password"
    secret.write_text("from-secret-file\n")
    config = ClientConfig.load(path, {"RENDEZVOUS_KAFKA_SASL_USERNAME": "bob",
                                      "RENDEZVOUS_KAFKA_SASL_PASSWORD_FILE": str(secret)})
    assert config.sasl() == ("PLAIN", "bob", "from-secret-file")
    assert config.bootstrap == "b1:9092,b2:9092"
    assert "bootstrap.servers" not in config.confluent()  # --broker's value goes there


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_reaches_faust_and_aiokafka_as_the_same_login(mechanism: str):
    config = ClientConfig.parse({**SASL, "sasl.mechanism": mechanism})
    auth = credentials_to_aiokafka_auth(broker_credentials(config))
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == mechanism
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("svc", "pw-5f4dcc3b")
    assert auth["ssl_context"] is config.ssl_context() is not None
    confluent = KafkaSettings("b:9092", client=config).producer()
    assert (confluent["sasl.mechanism"], confluent["sasl.username"]) == (mechanism, "svc")


def test_sasl_plaintext_has_no_tls_context():
    config = ClientConfig.parse({**SASL, "security.protocol": "SASL_PLAINTEXT"})
    auth = credentials_to_aiokafka_auth(broker_credentials(config))
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None


def test_plaintext_gives_faust_no_credentials():
    assert broker_credentials(ClientConfig()) is None


@pytest.mark.parametrize(("props", "setting"), [
    ({"security.protocol": "TLS"}, "security.protocol"),
    ({**SASL, "sasl.mechanism": "GSSAPI"}, "sasl.mechanism"),
    ({"security.protocol": "SASL_SSL", "sasl.username": "u"}, "sasl.password"),
    ({"ssl.ca.location": "/etc/hostname"}, "ssl.ca.location"),  # TLS setting without a TLS protocol
    ({"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"}, "ssl.ca.location"),
    ({"security.protocol": "SSL", "ssl.certificate.location": "/etc/hostname"}, "ssl.key.location"),
    ({"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "dns"},
     "ssl.endpoint.identification.algorithm"),
    ({"compression.type": "zstd"}, "compression.type"),  # the Faust worker could not honour it
])
def test_a_bad_or_unsupported_property_is_refused_by_name(props: dict, setting: str):
    with pytest.raises(KafkaConfigError) as caught:
        ClientConfig.parse(props)
    assert caught.value.setting == setting


def test_secrets_are_redacted_wherever_settings_are_shown():
    config = ClientConfig.parse(SASL)
    settings = KafkaSettings("b:9092", client=config)
    for shown in (repr(config), repr(settings), str(config.redacted())):
        assert "pw-5f4dcc3b" not in shown and "***" in shown


def test_written_file_is_private_and_loads_back(tmp_path: Path):
    config = ClientConfig.parse(SASL)
    path = config.write(tmp_path / "kafka.properties")
    assert path.stat().st_mode & 0o077 == 0
    assert ClientConfig.load(path, {}) == config


def _rendezvous(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rendezvous", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env})


def test_help_shows_the_kafka_config_option_and_its_variable():
    done = _rendezvous("topics", "create", "--help", env={"RENDEZVOUS_KAFKA_SASL_PASSWORD": "pw-5f4dcc3b"})
    assert "--kafka-config" in done.stdout and "RENDEZVOUS_KAFKA_CONFIG" in done.stdout
    assert "pw-5f4dcc3b" not in done.stdout


def test_cli_refuses_a_bad_variable_naming_the_property_without_a_traceback():
    done = _rendezvous("topics", "create", "--broker", "127.0.0.1:1",
                       env={"RENDEZVOUS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RENDEZVOUS_KAFKA_SASL_USERNAME": "u"})
    assert done.returncode == 2
    assert "sasl.password" in done.stderr and "Traceback" not in done.stderr
