"""Which local sessions read which stream: the fan-out's lookup table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

S = TypeVar("S")


class SubscriberIndex(Generic[S]):
    """stream → {session id → session}. Adding and removing are O(streams of the session)."""

    def __init__(self) -> None:
        self._by_stream: dict[str, dict[str, S]] = {}

    def add(self, session_id: str, streams: Iterable[str], session: S) -> None:
        for stream in streams:
            self._by_stream.setdefault(stream, {})[session_id] = session

    def remove(self, session_id: str, streams: Iterable[str]) -> None:
        for stream in streams:
            members = self._by_stream.get(stream)
            if members is not None:
                members.pop(session_id, None)
                if not members:
                    del self._by_stream[stream]

    def get(self, stream: str) -> dict[str, S] | None:
        return self._by_stream.get(stream)

    def count(self, streams: Iterable[str]) -> int:
        """Distinct sessions reading any of ``streams``."""
        seen: set[str] = set()
        for stream in streams:
            seen.update(self._by_stream.get(stream, ()))
        return len(seen)

    def streams(self) -> list[str]:
        return list(self._by_stream)
