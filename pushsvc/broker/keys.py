"""Every Redis key and channel name pushsvc uses, and what lives there.

All names start with one prefix (default ``pushsvc:``, written ``{p}`` below), so several
deployments can share a Redis. Keys are per database already; pub/sub channels are not (a
``PUBLISH`` reaches the subscribers of every database), so channel names also carry the database
number (written ``{db}``): two deployments on one Redis, under another prefix or in another
database, never hear each other. Nothing outside this module spells a key. For each key: its
type and content; its TTL; who writes it → who reads it.

**Partitions.** The keys of the message path — streams and their channels, bodies, trails,
idempotency keys and the delivery accounting — are spread over :data:`PARTITIONS` partitions.
Each partition is a hash tag, written ``{P}`` below (``{pushsvc:3}``, or ``{pushsvc:3.7}``: the
label is chosen so that partition ``k``'s slot lies in the ``k``-th sixteenth of Redis Cluster's
16,384 slots, and a cluster whose masters hold even slot ranges holds even shares of the
partitions). Every key one script run touches shares one tag, so on Redis Cluster each run goes
to one master and the masters share the traffic. A stream's partition is a hash of its name
(:meth:`Keyspace.partition`); a message's home partition — its trail, its idempotency key, its
accounting — is the hex digit its id carries at position 12 (:func:`id_partition`): the node
picks it when it makes the id (the idempotency key's partition for a keyed publish, else its
first stream's), so the trail of any id is found without a lookup. The same layout serves a
standalone Redis, a Sentinel-managed master and Redis Cluster.

The other keys (registry, escalations, webhooks, rate buckets, the monitor lease, the command
channel) carry the plain prefix, written ``{c}`` below: ``pushsvc:`` on a standalone or
Sentinel-managed Redis, the hash tag ``{pushsvc:}`` on Redis Cluster, whose one master holds them.

``{P}stream:<stream>`` — stream; entry id = the offset; field ``m`` = the Message as JSON, or,
    for a message appended to several streams, field ``r`` = its id: the message is in
    ``{P}body:<id>``, stored once per partition however many of its streams hold it.
    ``history_ttl`` after the last append, trimmed to exactly ``history_size`` entries.
    The publish script (any node) → history reads (resume, offline inbox, catch-up).
``{P}body:<message id>`` — string; the Message as JSON, of a message appended to several
    streams of that partition (on a standalone or Sentinel-managed Redis, one body in the
    message's home partition serves all its streams: :meth:`Keyspace.body`). Expires when
    history reads stop returning it (publish time + ``history_ttl``).
    The publish script → history reads.
``{P}db{db}:s:<stream>`` — pub/sub channel (sharded on Redis Cluster: ``SPUBLISH`` /
    ``SSUBSCRIBE``); one Envelope JSON per message appended to that stream, in offset order,
    each with the offset of the entry before it (``after``: "0-0" for a stream's first), so a
    node finds a gap per stream. The publish script → the nodes whose sessions read the stream
    (a node follows a stream's channel while one of its sessions reads it).
``{P}db{db}:probe:<node>`` — pub/sub channel (sharded on Cluster); the node's own liveness
    probe, one per subscription (on Cluster one per partition): its bus publishes to it every
    second through the command connection and expects its subscription to hear it (a
    subscription left on a demoted master hears nothing).
    The node's bus → the same node's bus.
``{c}db{db}:commands`` — pub/sub channel; Command JSON.
    ``Bus.send_command`` (API, CLI) → every node's bus reader.
``{c}nodes`` — sorted set; member = node id, score = its heartbeat expiry (unix s).
    Members are pruned :data:`NODE_PRUNE_AFTER` seconds after that expiry.
    ``register`` → ``nodes()`` and the session lookups (which nodes to look at).
``{c}node:<node>`` — string; NodeInfo JSON. The heartbeat TTL (3 x ``registry_interval``):
    a node is live while this key exists. ``register`` → ``nodes()``, liveness checks.
``{c}sessions:<node>`` — hash; session id → SessionInfo JSON. The node's heartbeat TTL, refreshed
    by ``register``: the sessions of a node that died vanish with it.
    ``add_sessions`` / ``remove_sessions`` → ``sessions()``, ``find_session()``.
``{c}user-sessions:<user>`` — hash; session id → node id. :data:`USER_INDEX_TTL` after its last
    addition; entries of dead nodes are pruned when read.
    ``add_sessions`` / ``remove_sessions`` → ``sessions(user=...)``.
``{c}revoked:<user>`` — string; the unix second before which the user's tokens were issued
    (``iat``) are refused. ``token_max_ttl`` (every token issued before has expired by then).
    ``Registry.revoke`` (the revoke route) → ``Registry.revoked`` (every hello and refresh).
``{P}trail:<message id>`` — hash (fields below). The message's expiry + ledger retention
    (``history_ttl`` + retention until its Published record arrives).
    The publish script (its Published record) and the ledger script → ``trail()``,
    ``acked_ids()``.
``{P}idem:<caller>:<key>`` — string; the placement of the first message published with that
    idempotency key by that caller (the API key's name), JSON ``{"fingerprint", "id",
    "offsets"}``; bound by the publish script in the same atomic run as the append to the streams
    of its partition, so it exists exactly when the message was appended there. Its partition is
    a hash of ``<caller>:<key>`` and is the message's home. ``idempotency_ttl``. The publish
    script → itself.
``{P}placed:<message id>`` — string; on Redis Cluster, the placement (same JSON) of a message in
    a partition other than its home, bound in the same run as the appends there: a retry with
    the message's key finds its id at home and its placement here, and appends nothing twice.
    ``idempotency_ttl``. The publish script → itself.
``{P}tally:<bucket>`` — hash; the delivery accounting of one bucket (its start, unix s; see
    ``base.bucket_of``) for the messages whose home is that partition on Redis Cluster (the
    monitor sums the partitions; on one server, where one script run may span every partition,
    all of it is in partition 0): field ``<counter>:<node>`` → count, counters as in
    ``base.COUNTERS``.
    The ledger retention after its last write. The ledger script → ``Ledger.tallies`` (monitor).
``{P}msgs:<bucket>`` — set; ids of the messages published in that bucket (one ``Accepted``
    record each; adding one is what counts it as published). Same TTL as the tally.
    The ledger script → ``Ledger.bucket_messages`` (the monitor, to name missing deliveries).
``{c}push-subs:<user>`` — hash; device → Subscription JSON. Expires ``push_retention`` after
    its last write; an entry whose ``seen`` is older than that is ignored and removed.
    ``push_subscribe`` / session ends (any node) → the escalator (any node).
``{c}escalations`` — sorted set; member ``<message id>/<user>``, score = when its timer is due
    (unix ms; moved ahead by the claim's lease while a process works on it). No TTL: members
    are removed when done. The publish path → the escalator of every node (atomic claims).
``{c}esc:<message id>/<user>`` — hash: ``r`` the Escalation JSON, ``f`` the step (``after`` |
    ``final``), ``k`` [device, acked_at] of the user's first ack, ``w:<device>`` when a push to
    it was accepted, ``n`` failed attempts. The message's expiry + ledger retention.
    The publish path, ack settling (ledger flushes) and the escalator → the escalator.
``{c}webhooks`` — sorted set; member ``<event id> <url>``, score = next attempt (unix ms).
    The escalator (enqueue) → the webhook courier of every node (atomic claims).
``{c}webhook:<event id>`` — hash: ``b`` the signed body, ``c`` created (unix s), ``n:<url>``
    attempts. Kept ``webhook_keep`` (25 h) after it was enqueued: an event id is taken once.
``{c}webhook-failures`` — hash; url → WebhookFailure JSON, the endpoint's last failure.
    No TTL (one field per configured endpoint). The courier → ``pushsvc webhooks``.
``{c}monitor:lease`` — string; the id of the active monitor, with the lease TTL.
    ``Lease.acquire`` / ``release`` (monitors).
``{c}rate:<key name>`` — hash; an API key's publish token bucket: ``tokens`` (float) and ``ts``
    (Redis's clock, unix s, when they were counted). The time the bucket takes to fill, plus a
    second, after its last use. The rate script (any node's API) → the same script.

Fields of ``{P}trail:<id>``::

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

import zlib

DEFAULT_PREFIX = "pushsvc:"

#: How many partitions the message path's keys are spread over (a hex digit of a message id
#: names one). Fixed: every node and monitor of a deployment must agree on it.
PARTITIONS = 16

#: How long a user's session index outlives its last addition. Entries are removed with their
#: sessions and pruned when read; this bound only reclaims users whose node died and who never
#: came back.
USER_INDEX_TTL = 7 * 86_400

#: How long a dead node's id stays in ``{c}nodes`` after its heartbeat expired (clock skew margin).
NODE_PRUNE_AFTER = 60.0

_SLOTS = 16384


def key_slot(key: str) -> int:
    """The Redis Cluster slot of ``key`` (CRC16/XMODEM of its hash tag, mod 16384)."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


def partition_of(name: str) -> int:
    """The partition of a stream or a scoped idempotency key: a hash of its name."""
    return zlib.crc32(name.encode()) % PARTITIONS


def id_partition(message_id: str) -> int:
    """The home partition of a message: the hex digit at position 12 of its id (see
    ``pushsvc.node.publish.new_id``), or a hash of an id not made that way."""
    if len(message_id) > 12:
        digit = message_id[12]
        if digit in "0123456789abcdef":
            return int(digit, 16) % PARTITIONS
    return partition_of(message_id)


def home(streams: list[str], scoped_key: str | None) -> int:
    """The home partition of a message for ``streams``, published with ``scoped_key``: the
    key's partition (a retry finds the key where the first request bound it), else the first
    stream's (a message for one stream is then one script run)."""
    if scoped_key is not None:
        return partition_of(scoped_key)
    return partition_of(streams[0]) if streams else 0


def tags(prefix: str) -> list[str]:
    """The hash tag of each partition: ``{<prefix><k>}`` or ``{<prefix><k>.<j>}``, with the
    smallest ``j`` that puts partition ``k``'s slot in the ``k``-th :data:`PARTITIONS`-th of
    the slots."""
    width = _SLOTS // PARTITIONS
    out = []
    for k in range(PARTITIONS):
        j = 0
        while True:
            tag = "{" + prefix + (f"{k}" if j == 0 else f"{k}.{j}") + "}"
            if key_slot(tag) // width == k:
                out.append(tag)
                break
            j += 1
    return out


class Keyspace:
    """Key and channel names under one prefix. Pure string building: no I/O.

    ``one_slot``: Redis Cluster; the keys outside the partitions then share the hash tag of the
    prefix."""

    def __init__(
        self, prefix: str = DEFAULT_PREFIX, db: int = 0, *, one_slot: bool = False
    ) -> None:
        self.tags = tags(prefix)
        if one_slot:  # Redis Cluster: the prefix is the hash tag of the other keys
            prefix = "{" + prefix + "}"
        self.prefix = prefix
        self.db = db
        self.commands = f"{prefix}db{db}:commands"
        self.nodes = prefix + "nodes"
        self.monitor_lease = prefix + "monitor:lease"
        self.escalations = prefix + "escalations"
        self.webhooks = prefix + "webhooks"
        self.webhook_failures = prefix + "webhook-failures"

    @staticmethod
    def partition(stream: str) -> int:
        """The partition of ``stream``."""
        return partition_of(stream)

    def stream(self, stream: str) -> str:
        return f"{self.tags[partition_of(stream)]}stream:{stream}"

    def stream_channel(self, stream: str) -> str:
        """The channel that carries the envelopes of ``stream``."""
        return f"{self.tags[partition_of(stream)]}db{self.db}:s:{stream}"

    def probe(self, name: str, partition: int = 0) -> str:
        """The channel of the bus liveness probe ``name`` in ``partition``."""
        return f"{self.tags[partition]}db{self.db}:probe:{name}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def node_sessions(self, node_id: str) -> str:
        return f"{self.prefix}sessions:{node_id}"

    def user_sessions(self, user: str) -> str:
        return f"{self.prefix}user-sessions:{user}"

    def revoked(self, user: str) -> str:
        return f"{self.prefix}revoked:{user}"

    def trail(self, message_id: str) -> str:
        return f"{self.tags[id_partition(message_id)]}trail:{message_id}"

    def body(self, message_id: str, partition: int) -> str:
        """The body of ``message_id`` kept in ``partition``."""
        return f"{self.tags[partition]}body:{message_id}"

    def idempotency(self, scoped_key: str) -> str:
        """``scoped_key``: ``<caller>:<key>``, as the publisher scopes it."""
        return f"{self.tags[partition_of(scoped_key)]}idem:{scoped_key}"

    def placed(self, message_id: str, partition: int) -> str:
        """The placement of ``message_id`` in ``partition``, away from its home."""
        return f"{self.tags[partition]}placed:{message_id}"

    def tally(self, bucket: int, partition: int) -> str:
        return f"{self.tags[partition]}tally:{bucket}"

    def bucket_messages(self, bucket: int, partition: int) -> str:
        return f"{self.tags[partition]}msgs:{bucket}"

    def rate(self, key_name: str) -> str:
        return f"{self.prefix}rate:{key_name}"

    def push_subscriptions(self, user: str) -> str:
        return f"{self.prefix}push-subs:{user}"

    def escalation(self, name: str) -> str:
        """``name``: ``<message id>/<user>``."""
        return f"{self.prefix}esc:{name}"

    def webhook(self, event_id: str) -> str:
        return f"{self.prefix}webhook:{event_id}"
