"""The gateway: the Open Inference Protocol (v2) over the rendezvous, over HTTP and gRPC, for clients
that do not speak Kafka.

- :mod:`~rendezvous.gateway.oip`: OIP requests to rendezvous requests and results to responses (pure);
- :mod:`~rendezvous.gateway.tensors`: tensors as raw bytes (binary tensor data, gRPC raw contents; pure);
- :mod:`~rendezvous.gateway.bridge`: the Kafka side (send with a reply topic, await the results);
- :mod:`~rendezvous.gateway.front`: what every call does, whatever the transport;
- :mod:`~rendezvous.gateway.app`: the HTTP routes (FastAPI), and :mod:`~rendezvous.gateway.openapi` their document;
- :mod:`~rendezvous.gateway.grpc_service`: ``inference.GRPCInferenceService``, from :mod:`~rendezvous.gateway.protocol`.
"""
