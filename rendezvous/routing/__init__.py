"""The decision logic of the rendezvous: pure code, no I/O, time passed in.

- :mod:`~rendezvous.routing.plan`: a request's fallback chain and the choice rule.
- :mod:`~rendezvous.routing.state`: pending requests, orphan scores, decided ids.
- :mod:`~rendezvous.routing.router`: joins scores with requests and decides.
- :mod:`~rendezvous.routing.lateness`: when an answer was late, and why.
- :mod:`~rendezvous.routing.policy`: turns a policy file into per-request plans.
"""
