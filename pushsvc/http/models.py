"""Request and response bodies of the internal API (DESIGN §6), validated by pydantic."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from pushsvc.core.streams import ALL, NAME_PATTERN, topic_stream, user_stream
from pushsvc.node.publish import Outgoing

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Event = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Target(_Strict):
    users: Annotated[list[Name], Field(min_length=1, max_length=1000)] | None = None
    topics: Annotated[list[Name], Field(min_length=1, max_length=100)] | None = None
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        given = [k for k in ("users", "topics", "all") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError('"to" needs exactly one of "users", "topics" or "all": true')
        return self

    def streams(self) -> list[str]:
        if self.users is not None:
            return [user_stream(u) for u in dict.fromkeys(self.users)]
        if self.topics is not None:
            return [topic_stream(t) for t in dict.fromkeys(self.topics)]
        return [ALL]


class PublishRequest(_Strict):
    to: Target
    event: Event
    data: Any = None
    ttl: Annotated[int, Field(ge=1, le=30 * 86_400)] | None = None
    ack: bool | None = None
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None

    def outgoing(self, default_ttl: int, max_data: int) -> Outgoing:
        """The validated message; ValueError when ``data`` encodes larger than ``max_data``."""
        data = orjson.dumps(self.data)
        if len(data) > max_data:
            raise ValueError(f"data is {len(data)} bytes encoded, the limit is {max_data}")
        return Outgoing(
            streams=self.to.streams(),
            event=self.event,
            data=data,
            ttl=self.ttl or default_ttl,
            ack=self.ack if self.ack is not None else self.to.users is not None,
            idempotency_key=self.idempotency_key,
        )


class BatchRequest(_Strict):
    messages: Annotated[list[PublishRequest], Field(min_length=1, max_length=1000)]


class TokenRequest(_Strict):
    user: Name
    topics: Annotated[list[Name], Field(max_length=64)] = []
    ttl: Annotated[int, Field(ge=1, le=30 * 86_400)] | None = None
