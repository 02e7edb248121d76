"""User tools built on the system: the demo, the request client, explain and the run summary."""
