"""The Open Inference Protocol's gRPC messages and service: ``open_inference.proto`` and the code
``scripts/protos`` compiles from it (checked in; ``tests/test_oip_clients.py`` checks it is current)."""
