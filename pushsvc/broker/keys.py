"""Every Redis key and channel name pushsvc uses, and what lives there.

The same keyspace serves a standalone Redis and a Sentinel-managed master (the names do not
depend on where the master is). On Redis Cluster the prefix is written ``{prefix}``: a hash tag
that puts every key in one slot, so each script's keys share it (Cluster gives failover there,
not yet scale: one master holds everything). All names start with one prefix (default
``pushsvc:``, written ``{p}`` below), so several deployments can share a Redis. Keys are per
database already; pub/sub channels are not (a ``PUBLISH`` reaches the subscribers of every
database), so channel names also carry the database number (written ``{db}``): two deployments
on one Redis, under another prefix or in another database, never hear each other. Nothing
outside this module spells a key. For each key: its type and content; its TTL; who writes it →
who reads it.

``{p}stream:<stream>`` — stream; entry id = the offset; field ``m`` = the Message as JSON, or,
    for a message appended to several streams, field ``r`` = its id: the message is in
    ``{p}body:<id>``, stored once however many streams hold it.
    ``history_ttl`` after the last append, trimmed to exactly ``history_size`` entries.
    The publish script (any node) → history reads (resume, offline inbox, catch-up).
``{p}body:<message id>`` — string; the Message as JSON, of a message appended to several
    streams. Expires when history reads stop returning it (publish time + ``history_ttl``).
    The publish script → history reads.
``{p}db{db}:s:<stream>`` — pub/sub channel (sharded on Redis Cluster: ``SPUBLISH`` /
    ``SSUBSCRIBE``); one Envelope JSON per message appended to that stream, in offset order,
    each with the offset of the entry before it (``after``: "0-0" for a stream's first), so a
    node finds a gap per stream. The publish script → the nodes whose sessions read the stream
    (a node follows a stream's channel while one of its sessions reads it).
``{p}db{db}:probe:<node>`` — pub/sub channel (sharded on Cluster); the node's own liveness
    probe: its bus publishes to it every second through the command connection and expects its
    subscription to hear it (a subscription left on a demoted master hears nothing).
    The node's bus → the same node's bus.
``{p}db{db}:commands`` — pub/sub channel; Command JSON.
    ``Bus.send_command`` (API, CLI) → every node's bus reader.
``{p}nodes`` — sorted set; member = node id, score = its heartbeat expiry (unix s).
    Members are pruned :data:`NODE_PRUNE_AFTER` seconds after that expiry.
    ``register`` → ``nodes()`` and the session lookups (which nodes to look at).
``{p}node:<node>`` — string; NodeInfo JSON. The heartbeat TTL (3 x ``registry_interval``):
    a node is live while this key exists. ``register`` → ``nodes()``, liveness checks.
``{p}sessions:<node>`` — hash; session id → SessionInfo JSON. The node's heartbeat TTL, refreshed
    by ``register``: the sessions of a node that died vanish with it.
    ``add_sessions`` / ``remove_sessions`` → ``sessions()``, ``find_session()``.
``{p}user-sessions:<user>`` — hash; session id → node id. :data:`USER_INDEX_TTL` after its last
    addition; entries of dead nodes are pruned when read.
    ``add_sessions`` / ``remove_sessions`` → ``sessions(user=...)``.
``{p}revoked:<user>`` — string; the unix second before which the user's tokens were issued
    (``iat``) are refused. ``token_max_ttl`` (every token issued before has expired by then).
    ``Registry.revoke`` (the revoke route) → ``Registry.revoked`` (every hello and refresh).
``{p}trail:<message id>`` — hash (fields below). The message's expiry + ledger retention
    (``history_ttl`` + retention until its Published record arrives).
    The publish script (its Published record) and the ledger script → ``trail()``,
    ``acked_ids()``.
``{p}idem:<caller>:<key>`` — string; the placement of the first message published with that
    idempotency key by that caller (the API key's name), JSON ``{"fingerprint", "id",
    "offsets"}``; bound by the publish script in the same atomic run as the append, so it exists
    exactly when the message was appended. ``idempotency_ttl``. The publish script → itself.
``{p}tally:<bucket>`` — hash; the delivery accounting of one bucket (its start, unix s; see
    ``base.bucket_of``): field ``<counter>:<node>`` → count, counters as in ``base.COUNTERS``.
    The ledger retention after its last write. The ledger script → ``Ledger.tallies`` (monitor).
``{p}msgs:<bucket>`` — set; ids of the messages published in that bucket (one ``Accepted``
    record each; adding one is what counts it as published). Same TTL as the tally.
    The ledger script → ``Ledger.bucket_messages`` (the monitor, to name missing deliveries).
``{p}push-subs:<user>`` — hash; device → Subscription JSON. Expires ``push_retention`` after
    its last write; an entry whose ``seen`` is older than that is ignored and removed.
    ``push_subscribe`` / session ends (any node) → the escalator (any node).
``{p}escalations`` — sorted set; member ``<message id>/<user>``, score = when its timer is due
    (unix ms; moved ahead by the claim's lease while a process works on it). No TTL: members
    are removed when done. The publish path → the escalator of every node (atomic claims).
``{p}esc:<message id>/<user>`` — hash: ``r`` the Escalation JSON, ``f`` the step (``after`` |
    ``final``), ``k`` [device, acked_at] of the user's first ack, ``w:<device>`` when a push to
    it was accepted, ``n`` failed attempts. The message's expiry + ledger retention.
    The publish path, ack settling (ledger flushes) and the escalator → the escalator.
``{p}webhooks`` — sorted set; member ``<event id> <url>``, score = next attempt (unix ms).
    The escalator (enqueue) → the webhook courier of every node (atomic claims).
``{p}webhook:<event id>`` — hash: ``b`` the signed body, ``c`` created (unix s), ``n:<url>``
    attempts. Kept ``webhook_keep`` (25 h) after it was enqueued: an event id is taken once.
``{p}webhook-failures`` — hash; url → WebhookFailure JSON, the endpoint's last failure.
    No TTL (one field per configured endpoint). The courier → ``pushsvc webhooks``.
``{p}monitor:lease`` — string; the id of the active monitor, with the lease TTL.
    ``Lease.acquire`` / ``release`` (monitors).
``{p}rate:<key name>`` — hash; an API key's publish token bucket: ``tokens`` (float) and ``ts``
    (Redis's clock, unix s, when they were counted). The time the bucket takes to fill, plus a
    second, after its last use. The rate script (any node's API) → the same script.

Fields of ``{p}trail:<id>``::

    p               Published record, JSON (written at publish; the first one wins)
    e:<device>      [session, node, sent_at] of the first Sent or Expected of that device
                    (first wins; sent_at null when owed, not written): the node that owes the
                    delivery, the marker that counts the pair as expected (and as sent when
                    the first event is a Sent), and that first session's delivery
    k:<device>      [session, node, acked_at] of the device's first Acked (first wins: counts
                    acked; ``acked_ids`` looks for it)
    d:<session>     [device, node] of any other session's delivery, JSON (first record wins)
    s:<session>     sent_at of such a session, unix seconds (first Sent wins)
    n:<session>     attempts (the highest Sent attempt; for the first session only once it
                    was redelivered)
    a:<session>     acked_at of such a session, unix seconds (first Acked wins)
    c:<node>        writes of an ``ack: false`` message on that node (summed SentCounts)
    u:<device>      "1" while that expected delivery has not been written (removed by the
                    first Sent: counts the pair as sent)
    x:<device>      the node that found the message expired for that device (counts expired)
    w:<device>      when a Web Push escalating the message to that device was accepted

The common delivery (one session, written once, acked once) is ``e:`` and ``k:`` alone: two
writes. Nodes before this layout wrote the owing node in ``e:``, "1" in ``k:`` and every session
in its own fields; readers accept both.
"""

from __future__ import annotations

DEFAULT_PREFIX = "pushsvc:"

#: How long a user's session index outlives its last addition. Entries are removed with their
#: sessions and pruned when read; this bound only reclaims users whose node died and who never
#: came back.
USER_INDEX_TTL = 7 * 86_400

#: How long a dead node's id stays in ``{p}nodes`` after its heartbeat expired (clock skew margin).
NODE_PRUNE_AFTER = 60.0


class Keyspace:
    """Key and channel names under one prefix. Pure string building: no I/O."""

    def __init__(
        self, prefix: str = DEFAULT_PREFIX, db: int = 0, *, one_slot: bool = False
    ) -> None:
        if one_slot:  # Redis Cluster: the prefix is the hash tag of every key
            prefix = "{" + prefix + "}"
        self.prefix = prefix
        self.db = db
        self.commands = f"{prefix}db{db}:commands"
        self.nodes = prefix + "nodes"
        self.monitor_lease = prefix + "monitor:lease"
        self.escalations = prefix + "escalations"
        self.webhooks = prefix + "webhooks"
        self.webhook_failures = prefix + "webhook-failures"

    def stream(self, stream: str) -> str:
        return f"{self.prefix}stream:{stream}"

    def stream_channel(self, stream: str) -> str:
        """The channel that carries the envelopes of ``stream``."""
        return f"{self.prefix}db{self.db}:s:{stream}"

    def probe(self, node_id: str) -> str:
        """The channel of ``node_id``'s bus liveness probe."""
        return f"{self.prefix}db{self.db}:probe:{node_id}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def node_sessions(self, node_id: str) -> str:
        return f"{self.prefix}sessions:{node_id}"

    def user_sessions(self, user: str) -> str:
        return f"{self.prefix}user-sessions:{user}"

    def revoked(self, user: str) -> str:
        return f"{self.prefix}revoked:{user}"

    def trail(self, message_id: str) -> str:
        return f"{self.prefix}trail:{message_id}"

    def body(self, message_id: str) -> str:
        return f"{self.prefix}body:{message_id}"

    def idempotency(self, scoped_key: str) -> str:
        """``scoped_key``: ``<caller>:<key>``, as the publisher scopes it."""
        return f"{self.prefix}idem:{scoped_key}"

    def tally(self, bucket: int) -> str:
        return f"{self.prefix}tally:{bucket}"

    def bucket_messages(self, bucket: int) -> str:
        return f"{self.prefix}msgs:{bucket}"

    def rate(self, key_name: str) -> str:
        return f"{self.prefix}rate:{key_name}"

    def push_subscriptions(self, user: str) -> str:
        return f"{self.prefix}push-subs:{user}"

    def escalation(self, name: str) -> str:
        """``name``: ``<message id>/<user>``."""
        return f"{self.prefix}esc:{name}"

    def webhook(self, event_id: str) -> str:
        return f"{self.prefix}webhook:{event_id}"
