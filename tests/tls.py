"""Test helpers for a real TLS hop: an openssl PKI and stunnel in front of Tansu.

Tansu cannot terminate TLS itself (see PLATFORM.md), so a broker "with TLS" is a
plaintext Tansu that advertises the port of a stunnel listener in front of it:
every client connection, bootstrap and data alike, crosses the TLS hop.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rendezvous.operations.broker import EmbeddedBroker, free_port, port_open

KEY_PASSWORD = "key-pass-d41d8cd9"  # a distinctive value, so a leak is easy to find


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
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key", d / "other-ca.pem")


def stunnel_binary() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


class TlsBroker:
    """Tansu behind stunnel; ``mutual``: stunnel also demands a client certificate signed by the CA."""

    def __init__(self, pki: Pki, directory: Path, mutual: bool = False) -> None:
        self.pki, self.directory, self.mutual = pki, directory, mutual
        self.tls_port = 0
        self.tansu = EmbeddedBroker(log_path=directory / "tansu.log")
        self._stunnel: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    def start(self, timeout: float = 15.0) -> TlsBroker:
        """stunnel cannot bind port 0 and say which: if another process takes the chosen port, try another."""
        for _ in range(3):
            self.tls_port = free_port()
            self.tansu = EmbeddedBroker(log_path=self.directory / "tansu.log", advertised_port=self.tls_port)
            if self._start(timeout):
                return self
        raise RuntimeError(f"stunnel could not bind a free port three times; see {self.directory / 'stunnel.log'}")

    def _start(self, timeout: float) -> bool:
        self.tansu.start()
        verify = f"CAfile = {self.pki.ca}\nverifyChain = yes\nrequireCert = yes\n" if self.mutual else ""
        conf = self.directory / "stunnel.conf"
        conf.write_text(
            "foreground = yes\npid =\noutput = " + str(self.directory / "stunnel.log") + "\n"
            f"[kafka]\naccept = 127.0.0.1:{self.tls_port}\nconnect = {self.tansu.bootstrap}\n"
            f"cert = {self.pki.server_cert}\nkey = {self.pki.server_key}\n{verify}"
        )
        self._stunnel = subprocess.Popen([stunnel_binary() or "stunnel4", str(conf)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.tls_port) or self._stunnel.poll() is not None:
            if self._stunnel.poll() is not None:  # it could not bind the port
                self.stop()
                return False
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"stunnel did not listen on {self.bootstrap}; see {self.directory / 'stunnel.log'}")
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        if self._stunnel is not None and self._stunnel.poll() is None:
            self._stunnel.terminate()
            try:
                self._stunnel.wait(10)
            except subprocess.TimeoutExpired:
                self._stunnel.kill()
        self.tansu.stop()

    def client_properties(self, *, ca: Path | None = None, with_cert: bool | None = None) -> dict[str, str]:
        """What a user would put in --kafka-config for this broker."""
        props = {"security.protocol": "SSL", "ssl.ca.location": str(ca or self.pki.ca)}
        if self.mutual if with_cert is None else with_cert:
            props.update({"ssl.certificate.location": str(self.pki.client_cert),
                          "ssl.key.location": str(self.pki.client_key), "ssl.key.password": KEY_PASSWORD})
        return props
