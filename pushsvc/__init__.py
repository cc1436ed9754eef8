"""pushsvc — a clustered WebSocket push gateway for outpatient notifications.

One message travels top to bottom through the package tree:

    http/internal.py      POST /v1/messages             (validate, authenticate)
    node/publish.py       Publisher                     (ids, idempotency, accounting)
    broker/*.py           Broker.publish                (history append + bus, atomically)
    node/fanout.py        FanOut                        (encode once per stream, plain loop)
    node/session.py       Session                       (outbox, acks, heartbeats)
    core/acks.py          AckLedger                     (redelivery, 4011)
    broker/*.py           DeliveryLedger                (the trail on-call reads)
"""

__version__ = "0.1.0"
