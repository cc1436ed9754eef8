"""Shared state behind a node: history, bus, registry, delivery ledger, idempotency keys.

``memory.py`` keeps it in the process (one node, the embedded default); ``redis.py`` keeps it in
Redis (a cluster). Both pass the same contract suite (tests/test_broker_contract.py).
"""
