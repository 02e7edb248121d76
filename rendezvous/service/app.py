"""The Faust application of the rendezvous service, tuned for low-latency hops.

Faust builds its aiokafka consumer with a fixed ``fetch_max_wait_ms=1500``. On a
broker that holds an empty fetch for its full wait (Tansu does), that is up to
1.5 s per hop at low load, so :class:`RendezvousApp` builds its consumer with the
configured wait instead.

Faust commits offsets with empty metadata; this consumer stamps each commit with the
id of the topic it read (``RendezvousApp.log_ids``, set at every takeover), so that a
later owner can tell a new log from the one the offset was committed in
(:mod:`rendezvous.service.recovery`).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiokafka
import faust
from aiohttp.web import SockSite
from aiokafka.structs import OffsetAndMetadata
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.web.drivers import aiohttp as faust_aiohttp

from rendezvous.kernel.client_config import ClientConfig
from rendezvous.kernel.kafka import log_stamp
from rendezvous.kernel.logs import quiet_repeats
from rendezvous.kernel.settings import DEFAULT_FETCH_WAIT_MS, KafkaSettings
from rendezvous.kernel.status import announce_port

__all__ = ["FAUST_VARIABLES", "ambient_faust_variables", "RendezvousApp", "broker_credentials", "create_app"]

log = logging.getLogger(__name__)
quiet_repeats(["aiokafka"])  # about 40 lines a second while the broker is away

#: Every variable Faust's settings would read from the environment (``WEB_PORT``, ``BROKER_URL``...).
FAUST_VARIABLES = frozenset(p.env_name for p in faust.Settings.SETTINGS.values() if p.env_name)


def ambient_faust_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The Faust variables set in ``environ``: ignored, since they would override the options.

    Faust gives a variable such as ``WEB_PORT`` precedence over the value the app passes
    in, so a ``WEB_PORT`` left in a shell made two workers bind one port whatever their
    ``--web-port``. The worker hands Faust an empty environment and names what it ignored.

    >>> ambient_faust_variables({"WEB_PORT": "8000", "HOME": "/root"})
    ['WEB_PORT']
    """
    environ = os.environ if environ is None else environ
    return sorted(name for name in FAUST_VARIABLES if name in environ)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher (aiokafka 0.14, pinned).
        consumer._fetch_max_wait_ms = self.app.fetch_wait_ms
        consumer._fetch_min_bytes = self.app.fetch_min_bytes
        commit, log_ids = consumer.commit, self.app.log_ids

        async def commit_stamped(offsets: Mapping[Any, Any] | None = None) -> None:
            # Faust's commit passes {tp: OffsetAndMetadata(offset, "")} (faust-streaming 0.15, pinned). aiokafka
            # writes the string as it is; confluent-kafka reads up to a NUL, so one ends it (see commit_stamp).
            if offsets:
                offsets = {tp: OffsetAndMetadata(o.offset, log_stamp(log_ids[tp.topic]) + "\x00")
                           if tp.topic in log_ids and isinstance(o, OffsetAndMetadata) else o
                           for tp, o in offsets.items()}
            await commit(offsets)

        consumer.commit = commit_stamped  # type: ignore[method-assign]
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def rewind(self, tp: TP, offset: int) -> None:
        """Read ``tp`` again from ``offset`` of a new log (the broker lost its data, or the topic was made again).

        Faust drops records below the offset it last read and ignores acks below the one it last committed
        (faust-streaming 0.15, pinned): both are forgotten, or the new log's records would be dropped and
        never committed. ``seek`` sets the read offset.
        """
        self._committed_offset[tp] = None
        for bookkeeping in (self._acked, self._acked_index, self._gap):
            bookkeeping.pop(tp, None)
        await self.seek(tp, offset)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class _Web(faust_aiohttp.Web):
    """Faust's aiohttp server on a socket we bind: port 0 picks a free port, and the port is announced
    (:func:`rendezvous.kernel.status.announce_port`). Faust itself refuses port 0."""

    def _new_transport_tcp(self) -> SockSite:
        app: RendezvousApp = self.app  # type: ignore[assignment]
        sock = socket.socket(socket.AF_INET6 if ":" in app.conf.web_bind else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((app.conf.web_bind, app.listen_port))
        app.listen_port = sock.getsockname()[1]
        return SockSite(self._runner, sock)

    async def start_server(self) -> None:
        await super().start_server()
        announce_port(self.app.listen_port)  # type: ignore[attr-defined]


class RendezvousApp(faust.App):
    """A Faust app whose consumer fetches with a short, configurable wait, with two hooks:

    - ``rebalance_start_callbacks`` run (on the app's loop) when a rebalance begins;
    - ``before_stop_callbacks`` are awaited before Faust pauses and drains the consumer.
    """

    fetch_wait_ms: int = DEFAULT_FETCH_WAIT_MS
    fetch_min_bytes: int = 1
    log_ids: dict[str, str]  # topic -> the id of the log read from it, stamped on every commit

    def __init__(self, *args: Any, fetch_wait_ms: int = DEFAULT_FETCH_WAIT_MS, fetch_min_bytes: int = 1,
                 listen_port: int = 6066, **kwargs: Any) -> None:
        self.fetch_wait_ms, self.fetch_min_bytes = fetch_wait_ms, fetch_min_bytes
        self.listen_port = listen_port  # of the web server; 0: a free one (the bound port replaces it)
        self.log_ids = {}
        self.rebalance_start_callbacks: list[Callable[[], None]] = []
        self.before_stop_callbacks: list[Callable[[], Awaitable[None]]] = []
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self, loop=self.loop)

    def _new_web(self) -> _Web:
        return _Web(self)

    def on_rebalance_start(self) -> None:
        super().on_rebalance_start()
        for callback in self.rebalance_start_callbacks:  # called from the consumer's thread
            self.loop.call_soon_threadsafe(callback)

    async def on_stop(self) -> None:
        for callback in self.before_stop_callbacks:
            await callback()
        await super().on_stop()


def broker_credentials(client: ClientConfig) -> faust.types.auth.CredentialsT | None:
    """The Faust (aiokafka) form of the client's security settings: the same TLS context and SASL login."""
    context, sasl = client.ssl_context(), client.sasl()
    if sasl is not None:
        mechanism, username, password = sasl
        return faust.SASLCredentials(username=username, password=password, mechanism=mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(app_id: str, kafka: KafkaSettings, web_host: str, web_port: int, **conf: Any) -> RendezvousApp:
    """The app every rendezvous worker of one deployment runs (``app_id`` is its consumer group)."""
    ignored = ambient_faust_variables()
    if ignored:
        log.warning("ignoring %s in the environment: Faust would read %s behind the options; set the worker "
                    "with its options or RENDEZVOUS_* variables (rendezvous serve --help)",
                    ", ".join(ignored), "it" if len(ignored) == 1 else "them")
    return RendezvousApp(
        app_id,
        broker=[f"kafka://{server.strip()}" for server in kafka.bootstrap.split(",")],
        broker_credentials=broker_credentials(kafka.client),
        fetch_wait_ms=kafka.fetch_wait_ms,
        fetch_min_bytes=kafka.fetch_min_bytes,
        web_host=web_host,
        web_bind=web_host,  # Faust binds web_bind (default 0.0.0.0), not web_host
        web_port=web_port or 6066,  # Faust's own record (its canonical URL); we bind listen_port
        listen_port=web_port,
        web_in_thread=False,
        broker_session_timeout=kafka.session_timeout_ms / 1000,  # a dead worker's partitions move within it
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,  # less to re-read after a crash
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,  # topics are created with explicit partition counts, not by Faust
        topic_disable_leader=True,
        producer_linger=0.0,
        key_serializer="raw",
        value_serializer="raw",
        stream_wait_empty=True,  # a revoked partition's in-flight requests are answered before it goes
        # Faust makes a directory for table stores even with none on disk; not in the working directory
        datadir=os.path.join(tempfile.gettempdir(), "rendezvous-faust-{conf.name}-data"),
        env={},  # every setting comes from here: see ambient_faust_variables
        **conf,
    )
