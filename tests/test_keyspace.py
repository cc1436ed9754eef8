"""The partitioned keyspace, without Redis: where each key of the message path goes."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from pushsvc.broker.keys import (
    PARTITIONS,
    Keyspace,
    home,
    id_partition,
    key_slot,
    partition_of,
    tags,
)
from pushsvc.node.publish import new_id

names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


def tag_of(key: str) -> str:
    return key[: key.index("}") + 1]


def test_each_partition_holds_its_sixteenth_of_the_slots() -> None:
    for prefix in ("pushsvc:", "ward-b:", ""):
        found = tags(prefix)
        assert len(found) == len(set(found)) == PARTITIONS
        assert [key_slot(t) * PARTITIONS // 16384 for t in found] == list(range(PARTITIONS))
        assert all(t.startswith("{" + prefix) and t.endswith("}") for t in found)


def test_three_masters_with_even_slot_ranges_share_the_partitions_evenly() -> None:
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]  # what redis-cli --cluster create makes
    held = [sum(lo <= key_slot(t) <= hi for t in tags("pushsvc:")) for lo, hi in ranges]
    assert sorted(held) == [5, 5, 6]


@given(names, st.integers(0, PARTITIONS - 1))
def test_a_message_id_names_its_home_partition(stream: str, partition: int) -> None:
    message_id = new_id(int(time.time() * 1000), partition)
    assert len(message_id) == 32 and int(message_id, 16) >= 0
    assert id_partition(message_id) == partition
    assert home([stream], None) == partition_of(stream)
    keys = Keyspace()
    assert tag_of(keys.trail(message_id)) == keys.tags[partition]


@given(names, names, st.lists(names, min_size=1, max_size=5))
def test_a_keyed_message_lives_where_its_key_does(
    caller: str, key: str, streams: list[str]
) -> None:
    scoped = f"{caller}:{key}"
    partition = home(streams, scoped)
    keys = Keyspace(one_slot=True)
    message_id = new_id(1_000, partition)
    # one script run binds the key and starts the trail: they share a slot
    assert key_slot(keys.idempotency(scoped)) == key_slot(keys.trail(message_id))
    for stream in streams:  # a stream, its channel and its body share its partition's slot
        slot = key_slot(keys.stream(stream))
        assert key_slot(keys.stream_channel(stream)) == slot
        assert key_slot(keys.body(message_id, partition_of(stream))) == slot


def test_ids_not_made_by_a_node_still_have_a_home() -> None:
    for odd in ("", "m1", "zzzzzzzzzzzzzzzzzz", "0123456789abZ"):
        assert 0 <= id_partition(odd) < PARTITIONS


def test_the_keys_outside_the_partitions_share_one_slot_on_cluster() -> None:
    keys = Keyspace(one_slot=True)
    control = [keys.nodes, keys.node("n"), keys.node_sessions("n"), keys.user_sessions("u"),
               keys.revoked("u"), keys.rate("k"), keys.push_subscriptions("u"), keys.escalations,
               keys.escalation("m/u"), keys.webhooks, keys.webhook("e"), keys.monitor_lease]  # fmt: skip
    assert len({key_slot(k) for k in control}) == 1
