"""The HTTP gateway: the Open Inference Protocol (v2) over the rendezvous, for clients that do not speak Kafka.

- :mod:`~rendezvous.gateway.oip`: OIP requests to rendezvous requests and results to responses (pure);
- :mod:`~rendezvous.gateway.bridge`: the Kafka side (send with a reply topic, await the results);
- :mod:`~rendezvous.gateway.app`: the FastAPI routes.
"""
