"""The foundation every role builds on: wire contract, topics, Kafka settings and
client layer, clock, errors, lifecycle and the shared command-line options.

Nothing here imports from the rest of rendezvous; everything else may import
from here (see ARCHITECTURE.md).
"""
