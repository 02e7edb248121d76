"""Test helpers for a secured broker: an openssl PKI, and Apache Kafka's own TLS listener.

The broker terminates TLS itself (a PEM keystore made by :func:`make_pki`), one-way
or mutual, and with ``sasl`` also asks for a SCRAM-SHA-512 login (SASL_SSL). Clients
reach only that listener: every connection, bootstrap and data alike, is secured.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from rendezvous.operations.kafka_broker import KafkaBroker, SecureListener

KEY_PASSWORD = "key-pass-d41d8cd9"  # a distinctive value, so a leak is easy to find
SCRAM_USER, SCRAM_PASSWORD = "rendezvous-app", "scram-pass-8f14e45f"  # distinctive too


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD
    other_ca: Path  # a CA that signed nothing here


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> Pki:
    d = directory
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=rendezvous-test-ca", cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other-ca.pem",
             "-days", "2", "-subj", "/CN=some-other-ca", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-keyout", "client.key", "-passout", f"pass:{KEY_PASSWORD}",
             "-out", "client.csr", "-subj", "/CN=rendezvous-client", cwd=d)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "2", "-extfile", "client.ext", cwd=d)
    # Kafka's PEM keystore: the private key (PKCS#8) and the certificate in one file
    (d / "server-keystore.pem").write_text((d / "server.key").read_text() + (d / "server.pem").read_text())
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key", d / "other-ca.pem")


class TlsBroker:
    """Apache Kafka with a TLS listener; ``mutual``: it also demands a client certificate signed by the CA;
    ``sasl``: SASL_SSL, with a SCRAM-SHA-512 user."""

    def __init__(self, pki: Pki, directory: Path, mutual: bool = False, sasl: bool = False) -> None:
        self.pki, self.directory, self.mutual, self.sasl = pki, directory, mutual, sasl
        secure = SecureListener(keystore=pki.server_cert.parent / "server-keystore.pem",
                                client_ca=pki.ca if mutual else None, sasl="SCRAM-SHA-512" if sasl else None)
        self.kafka = KafkaBroker(log_path=directory / "broker.log", secure=secure)

    @property
    def bootstrap(self) -> str:
        return self.kafka.secure_bootstrap

    @property
    def tls_port(self) -> int:
        return self.kafka.secure_port

    def start(self) -> TlsBroker:
        self.kafka.start()
        if self.sasl:
            self.kafka.add_scram_user(SCRAM_USER, SCRAM_PASSWORD)
        return self

    def stop(self) -> None:
        self.kafka.stop()

    def client_properties(self, *, ca: Path | None = None, with_cert: bool | None = None,
                          password: str = SCRAM_PASSWORD) -> dict[str, str]:
        """What a user would put in --kafka-config for this broker."""
        props = {"security.protocol": "SASL_SSL" if self.sasl else "SSL", "ssl.ca.location": str(ca or self.pki.ca)}
        if self.mutual if with_cert is None else with_cert:
            props.update({"ssl.certificate.location": str(self.pki.client_cert),
                          "ssl.key.location": str(self.pki.client_key), "ssl.key.password": KEY_PASSWORD})
        if self.sasl:
            props.update({"sasl.mechanism": "SCRAM-SHA-512", "sasl.username": SCRAM_USER, "sasl.password": password})
        return props
