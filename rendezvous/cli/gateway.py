"""``rendezvous gateway``: the Open Inference Protocol (v2) over HTTP, in front of the rendezvous."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import click

from rendezvous.kernel.errors import ConfigError, OperationsError
from rendezvous.kernel.lifecycle import StopDeadline, configure_logging
from rendezvous.kernel.options import (
    broker_option,
    kafka_settings,
    log_level_option,
    secret_option,
    stop_grace_option,
    topic_prefix_option,
    topics_for,
)
from rendezvous.kernel.presence import Announcer, service_url
from rendezvous.kernel.status import announce_port
from rendezvous.kernel.trust import StackSecret
from rendezvous.operations.broker import resolve_broker

__all__ = ["DEFAULT_PORT", "gateway"]

DEFAULT_PORT = 8080


@click.command()
@broker_option()
@topic_prefix_option
@click.option("--host", envvar="RENDEZVOUS_GATEWAY_HOST", default="127.0.0.1", show_default=True, show_envvar=True,
              help="Address to listen on (0.0.0.0 to serve other hosts).")
@click.option("--port", envvar="RENDEZVOUS_GATEWAY_PORT", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
              show_default=True, show_envvar=True, help="Port to listen on (0: a free one).")
@click.option("--grpc-port", envvar="RENDEZVOUS_GATEWAY_GRPC_PORT", type=click.IntRange(0, 65535), default=8081,
              show_default=True, show_envvar=True,
              help="Port of the gRPC form of the protocol (inference.GRPCInferenceService); 0: a free one "
                   "(in GET /info).")
@click.option("--no-grpc", envvar="RENDEZVOUS_GATEWAY_NO_GRPC", is_flag=True, default=False, show_envvar=True,
              help="Serve HTTP only.")
@click.option("--gateway-id", envvar="RENDEZVOUS_GATEWAY_ID", default=None, show_envvar=True,
              help="Names this instance's reply topic (PREFIX.replies.ID). Default: a fresh id per start.")
@click.option("--reply-margin-ms", envvar="RENDEZVOUS_REPLY_MARGIN_MS", type=click.FloatRange(0, 60_000),
              default=1000.0, show_default=True, show_envvar=True,
              help="How long past the policy's SLA a call waits for its result before answering 504.")
@click.option("--spec", "specs", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A model spec, for the inputs it needs in /v2/models/NAME (repeatable).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file holding a bearer token every /v2 call but health must present (Authorization: Bearer).")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve HTTPS with this PEM certificate (with --keyfile).")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), default=None, help="The certificate's key.")
@secret_option()
@log_level_option
@stop_grace_option
def gateway(broker: str | None, topic_prefix: str, host: str, port: int, grpc_port: int, no_grpc: bool,
            gateway_id: str | None,
            reply_margin_ms: float, specs: tuple[Path, ...], token_file: Path | None, certfile: str | None,
            keyfile: str | None, secret: StackSecret | None, log_level: str, stop_grace_s: float) -> None:
    """Serve POST /v2/models/POLICY/infer and /outcome, health and metadata (OIP v2) until SIGTERM.

    HTTP (JSON or binary tensor data) on --port, gRPC on --grpc-port; the same token and TLS on both.
    Each call becomes rendezvous requests and is answered within the policy's SLA
    (plus --reply-margin-ms), or 504 (gRPC: DEADLINE_EXCEEDED). OpenAPI: /openapi.json and /docs.
    """
    import uvicorn  # loads here, not when the CLI starts
    from prometheus_client import CollectorRegistry

    from containers.spec import load_spec
    from rendezvous.gateway.app import create_app
    from rendezvous.gateway.bridge import KafkaBridge
    from rendezvous.gateway.front import Front, GatewaySettings

    configure_logging(log_level)
    kafka = kafka_settings(resolve_broker(broker))
    inputs = {spec.name: list(spec.inputs) for spec in map(load_spec, specs)}
    bridge = KafkaBridge(kafka, topics_for(topic_prefix), gateway_id,
                         policy_key=secret.policy_key if secret else None)
    if bool(certfile) != bool(keyfile):
        raise ConfigError("--certfile and --keyfile go together", hint="give both to serve HTTPS, or neither")
    token = token_file.read_text().strip() if token_file else None
    if token_file and not token:
        raise ConfigError(f"--token-file {token_file} is empty")
    front = Front(bridge, GatewaySettings(reply_margin_ms=reply_margin_ms, model_inputs=inputs, token=token))
    registry = CollectorRegistry()
    grpc = None
    if not no_grpc:
        from rendezvous.gateway.grpc_service import GrpcGateway

        if grpc_port and _in_use(host, grpc_port):
            raise OperationsError(f"cannot listen on {host}:{grpc_port} for gRPC: in use",
                                  hint="pass another --grpc-port (RENDEZVOUS_GATEWAY_GRPC_PORT), 0 for a free one, "
                                       "or --no-grpc")
        grpc = GrpcGateway(front, host, grpc_port, certfile=certfile, keyfile=keyfile, registry=registry)
    app = create_app(bridge, front.settings, front=front, grpc=grpc, registry=registry)
    sock = _listen(host, port)  # bound here, so that port 0 picks a free one and says which
    announce_port(sock.getsockname()[1])
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], access_log=False, ssl_certfile=certfile,
                            ssl_keyfile=keyfile, log_level="warning" if log_level == "info" else log_level,
                            timeout_graceful_shutdown=max(stop_grace_s / 2, 0.5))
    deadline = StopDeadline(stop_grace_s, "the gateway")

    class Server(uvicorn.Server):
        """uvicorn stops on SIGTERM: it finishes the calls in flight, then the lifespan stops the bridge;
        the deadline bounds both, as every service's stop is bounded."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            deadline.arm()
            super().handle_exit(sig, frame)

    base = service_url(host, sock.getsockname()[1], "https" if certfile else "http")

    def describe() -> tuple[dict[str, str], dict[str, Any]]:
        urls = {"http": base, "metrics": f"{base}/metrics"}
        if grpc is not None and grpc.port:  # bound once the app has started
            urls["grpc"] = service_url(host, grpc.port).removeprefix("http://")
        doc = bridge.policy
        return urls, {"policy": doc.name if doc else None, "policy_version": doc.version if doc else None,
                      "ready": bridge.link.reachable}

    presence = Announcer(kafka, topics_for(topic_prefix), "gateway", bridge.gateway_id, bridge.gateway_id,
                         describe).start()
    try:
        Server(config).run(sockets=[sock])
    finally:
        presence.stop()


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OperationsError(f"cannot listen on {host}:{port}: {exc.strerror}",
                              hint="pass another --port (RENDEZVOUS_GATEWAY_PORT), or 0 for a free one") from None
    return sock


def _in_use(host: str, port: int) -> bool:
    try:
        _listen(host, port).close()
    except OperationsError:
        return True
    return False
