"""Stream names and who may read them.

``user:<id>`` reaches every device of one patient, ``topic:<name>`` everyone whose token lists the
topic, ``all`` every session. A session reads exactly :func:`subscriptions` of its token.
"""

from __future__ import annotations

import re

ALL = "all"
MAX_TOPICS = 64  # topics one token may list; a session reads them + its user stream + all
USER_PREFIX = "user:"
TOPIC_PREFIX = "topic:"

NAME_PATTERN = r"^[A-Za-z0-9_.@+=-]{1,128}$"
_NAME = re.compile(NAME_PATTERN)


def valid_name(name: str) -> bool:
    """True when ``name`` can be a user id or a topic name (the whole of it: Python's ``$`` would
    also match before a trailing newline)."""
    return _NAME.fullmatch(name) is not None


def user_stream(user: str) -> str:
    return USER_PREFIX + user


def topic_stream(topic: str) -> str:
    return TOPIC_PREFIX + topic


def subscriptions(user: str, topics: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The streams a session of ``user`` with token ``topics`` receives, user stream first."""
    return (user_stream(user), *(topic_stream(t) for t in topics), ALL)


def is_user_stream(stream: str) -> bool:
    return stream.startswith(USER_PREFIX)
