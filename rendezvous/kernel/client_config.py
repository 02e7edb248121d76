"""How to connect to a secured Kafka cluster: one set of client properties for every client.

Users bring the ``.properties`` file their cluster hands out (Confluent Cloud,
MSK, Aiven, Strimzi) with ``--kafka-config FILE``, and may override or add any
property with a ``RENDEZVOUS_KAFKA_*`` variable (``RENDEZVOUS_KAFKA_SASL_PASSWORD``
sets ``sasl.password``; a ``..._FILE`` variable reads the value from a file, as
Docker and Kubernetes secrets are mounted). The same properties reach every
client: confluent-kafka producers, consumers and admin clients take them as
they are, and the Faust worker (aiokafka) gets the equivalent SSL context and
SASL credentials from :meth:`ClientConfig.ssl_context` and
:meth:`ClientConfig.sasl`.

Only properties that *every* client honours are accepted: anything else is
refused at start with its name, never silently applied to some clients only.
Secrets never appear in ``repr``, logs or status pages (:meth:`ClientConfig.redacted`).

>>> config = ClientConfig.parse({"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
...                              "sasl.username": "svc", "sasl.password": "hunter2"})
>>> config
ClientConfig({'sasl.mechanism': 'SCRAM-SHA-512', 'sasl.password': '***', 'sasl.username': 'svc', 'security.protocol': 'SASL_SSL'})
>>> config.sasl()
('SCRAM-SHA-512', 'svc', 'hunter2')
>>> ClientConfig.parse({"compression.type": "zstd"})
Traceback (most recent call last):
...
rendezvous.kernel.errors.KafkaConfigError: Kafka setting compression.type: is not supported: ...
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jproperties
from confluent_kafka import KafkaException

from rendezvous.kernel.errors import KafkaConfigError

__all__ = ["ClientConfig", "ENV_PREFIX", "CONFIG_ENV", "SUPPORTED", "SECRETS", "FILE_PROPERTIES", "read_properties",
           "write_properties", "describe"]

ENV_PREFIX = "RENDEZVOUS_KAFKA_"
CONFIG_ENV = "RENDEZVOUS_KAFKA_CONFIG"  # the file itself, not a property

#: Properties every client can honour, with what each means.
SUPPORTED: dict[str, str] = {
    "bootstrap.servers": "the brokers to start from (instead of --broker)",
    "security.protocol": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    "ssl.ca.location": "PEM file of the CA that signed the brokers' certificates (default: the system's)",
    "ssl.certificate.location": "PEM file of this client's certificate (mutual TLS)",
    "ssl.key.location": "PEM file of this client's private key (mutual TLS)",
    "ssl.key.password": "password of ssl.key.location",
    "ssl.endpoint.identification.algorithm": "https (check the broker's host name, the default) or none",
    "sasl.mechanism": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    "sasl.username": "SASL user name",
    "sasl.password": "SASL password",
}
SECRETS = frozenset({"ssl.key.password", "sasl.password"})
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
FILE_PROPERTIES = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location")


class ClientConfig:
    """Validated Kafka client properties (security and bootstrap), shared by every client."""

    __slots__ = ("_props", "_ssl_context")

    def __init__(self, props: Mapping[str, str] | None = None) -> None:
        self._props: dict[str, str] = dict(props or {})
        self._ssl_context: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ building

    @classmethod
    def parse(cls, props: Mapping[str, str]) -> ClientConfig:
        """Validate ``props``; raises :class:`KafkaConfigError` naming the first bad property."""
        clean = {}
        for key, value in props.items():
            key = key.strip()
            if key == "sasl.mechanisms":  # librdkafka's older spelling
                key = "sasl.mechanism"
            if key not in SUPPORTED:
                raise KafkaConfigError(
                    key, "is not supported: rendezvous applies every property to all of its clients "
                    "(confluent-kafka and the Faust worker's aiokafka), and this one has no equivalent in both. "
                    f"Supported: {', '.join(SUPPORTED)}")
            clean[key] = str(value).strip()
        config = cls(clean)
        config._validate()
        return config

    @classmethod
    def load(cls, path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> ClientConfig:
        """Properties from ``path`` (a Kafka ``.properties`` file), overridden by ``RENDEZVOUS_KAFKA_*``.

        ``path`` defaults to ``$RENDEZVOUS_KAFKA_CONFIG``.
        """
        environ = os.environ if environ is None else environ
        path = path or environ.get(CONFIG_ENV) or None
        props: dict[str, str] = {}
        if path:
            props.update(read_properties(Path(path)))
        for name, value in environ.items():
            if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
                continue
            key = name[len(ENV_PREFIX):].lower()
            if key.endswith("_file"):
                key = key[: -len("_file")]
                try:
                    value = Path(value).read_text().strip()
                except OSError as exc:
                    raise KafkaConfigError(key.replace("_", "."), f"cannot read {name}={value}: {exc.strerror}") from None
            props[key.replace("_", ".")] = value
        return cls.parse(props)

    def _validate(self) -> None:
        p = self._props
        protocol = p.get("security.protocol", "PLAINTEXT").upper()
        if protocol not in _PROTOCOLS:
            raise KafkaConfigError("security.protocol", f"must be one of {', '.join(_PROTOCOLS)}, not {protocol!r}")
        if "security.protocol" in p:
            p["security.protocol"] = protocol
        uses_ssl, uses_sasl = protocol.endswith("SSL"), protocol.startswith("SASL")
        for key in p:
            if key.startswith("ssl.") and not uses_ssl:
                raise KafkaConfigError(key, f"is set but security.protocol is {protocol}; use SSL or SASL_SSL")
            if key.startswith("sasl.") and not uses_sasl:
                raise KafkaConfigError(key, f"is set but security.protocol is {protocol}; use SASL_PLAINTEXT or SASL_SSL")
        if uses_sasl:
            mechanism = p.setdefault("sasl.mechanism", "PLAIN").upper()
            if mechanism not in _MECHANISMS:
                raise KafkaConfigError("sasl.mechanism", f"must be one of {', '.join(_MECHANISMS)}, not {mechanism!r}")
            p["sasl.mechanism"] = mechanism
            for key in ("sasl.username", "sasl.password"):
                if not p.get(key):
                    raise KafkaConfigError(key, f"is required with security.protocol {protocol}")
        algorithm = p.get("ssl.endpoint.identification.algorithm", "https").lower()
        if algorithm not in ("https", "none"):
            raise KafkaConfigError("ssl.endpoint.identification.algorithm", f"must be https or none, not {algorithm!r}")
        for key in FILE_PROPERTIES:
            if key in p and not Path(p[key]).is_file():
                raise KafkaConfigError(key, f"no such file: {p[key]}")
        if ("ssl.certificate.location" in p) != ("ssl.key.location" in p):
            raise KafkaConfigError("ssl.key.location" if "ssl.certificate.location" in p else "ssl.certificate.location",
                                   "mutual TLS needs both ssl.certificate.location and ssl.key.location")
        if uses_ssl:
            self._ssl_context = self._build_ssl_context()

    def _build_ssl_context(self) -> ssl.SSLContext:
        p = self._props
        try:
            context = ssl.create_default_context(cafile=p.get("ssl.ca.location"))
        except (ssl.SSLError, OSError) as exc:
            raise KafkaConfigError("ssl.ca.location", f"not a usable CA file: {exc}") from None
        if p.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
            context.check_hostname = False
        if "ssl.certificate.location" in p:
            try:
                context.load_cert_chain(p["ssl.certificate.location"], p["ssl.key.location"], p.get("ssl.key.password"))
            except ssl.SSLError as exc:
                setting = "ssl.key.password" if "ssl.key.password" in p or "password" in str(exc).lower() \
                    else "ssl.key.location"
                raise KafkaConfigError(setting, f"cannot load the client key and certificate: {exc.reason or exc}") \
                    from None
        return context

    # ------------------------------------------------------------------ reading

    @property
    def bootstrap(self) -> str | None:
        return self._props.get("bootstrap.servers")

    @property
    def protocol(self) -> str:
        return self._props.get("security.protocol", "PLAINTEXT")

    def __bool__(self) -> bool:
        return bool(self._props)

    def confluent(self) -> dict[str, str]:
        """Properties for a confluent-kafka client (all of them are librdkafka's own names)."""
        return {k: v for k, v in self._props.items() if k != "bootstrap.servers"}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The SSL context for aiokafka, or None when the protocol does not use TLS."""
        return self._ssl_context

    def sasl(self) -> tuple[str, str, str] | None:
        """``(mechanism, username, password)`` for aiokafka, or None without SASL."""
        if not self.protocol.startswith("SASL"):
            return None
        p = self._props
        return p["sasl.mechanism"], p["sasl.username"], p["sasl.password"]

    def redacted(self) -> dict[str, str]:
        """The properties with every secret replaced by ``***``: safe to print."""
        return {k: "***" if k in SECRETS else v for k, v in sorted(self._props.items())}

    def __repr__(self) -> str:
        return f"ClientConfig({self.redacted()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClientConfig) and other._props == self._props

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._props.items())))

    # ------------------------------------------------------------------ travelling

    def properties(self) -> dict[str, str]:
        """Every property, secrets included: only for handing on to a client or a child process."""
        return dict(self._props)

    def write(self, path: Path, mode: int = 0o600) -> Path:
        """Write the properties to ``path`` (readable by this user only), for child processes to load.

        A child gets the path, never the secrets in its arguments or environment.
        """
        return write_properties(path, self._props, mode)

    def explain_refusal(self, exc: KafkaException) -> KafkaConfigError:
        """A librdkafka configuration error as an error naming the setting at fault."""
        text = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        setting = next((k for k in sorted(SUPPORTED, key=len, reverse=True) if k in text), "security.protocol")
        return KafkaConfigError(setting, f"refused by the Kafka client: {text}")


def read_properties(path: Path) -> dict[str, str]:
    """A Java ``.properties`` file as a dict (comments, ``key=value``, ``key: value``, continuations)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KafkaConfigError("--kafka-config", f"cannot read {path}: {exc.strerror}") from None
    props = jproperties.Properties()
    try:
        props.load(data, "utf-8")
    except Exception as exc:  # jproperties raises its own ParseError and UnicodeDecodeError
        raise KafkaConfigError("--kafka-config", f"{path} is not a properties file: {exc}") from None
    return {key: value.data for key, value in props.items()}


def write_properties(path: Path, props: Mapping[str, str], mode: int = 0o600) -> Path:
    """Write ``props`` as a ``.properties`` file created with ``mode`` (it may hold secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()  # os.open's mode applies only to a new file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as out:
        out.write("# written by rendezvous for the processes it starts; may hold secrets\n")
        for key, value in sorted(props.items()):
            out.write(f"{key}={_escape(value)}\n")
    return path


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def describe(config: ClientConfig) -> dict[str, Any]:
    """What a status page says about the connection: protocol and mechanism, never credentials."""
    sasl = config.sasl()
    return {"security_protocol": config.protocol, "sasl_mechanism": sasl[0] if sasl else None,
            "properties": config.redacted()}
