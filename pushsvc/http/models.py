"""Request and response bodies of the internal API (DESIGN §6), validated by pydantic."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from pushsvc.broker.base import PushSpec
from pushsvc.core.streams import NAME_PATTERN
from pushsvc.http.publishing import outgoing
from pushsvc.node.publish import Outgoing

_encode = msgspec.json.Encoder().encode
EVENT_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
PUSH_TITLE = 120  # characters: a notification shows little more
PUSH_BODY = 1000
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Event = Annotated[str, StringConstraints(pattern=EVENT_PATTERN)]


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


class PushRequest(_Strict):
    """Escalate to the user's browsers (Web Push) when no device acked ``after`` s after
    publish."""

    after: Annotated[int, Field(ge=1, le=30 * 86_400)]
    title: Annotated[str, StringConstraints(min_length=1, max_length=PUSH_TITLE)]
    body: Annotated[str, StringConstraints(max_length=PUSH_BODY)] = ""
    urgency: Literal["normal", "high"] = "normal"


class PublishRequest(_Strict):
    to: Target
    event: Event
    data: Any = None
    ttl: Annotated[int, Field(ge=1, le=30 * 86_400)] | None = None
    ack: bool | None = None
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    push: PushRequest | None = None

    @model_validator(mode="after")
    def _push_escalates(self) -> PublishRequest:
        if self.push is not None:
            if self.to.users is None:
                raise ValueError('"push" needs "to": {"users": [...]}')
            if self.ack is False:
                raise ValueError('"push" needs "ack": true (it escalates what no device acked)')
        return self

    def outgoing(self, default_ttl: int, max_data: int) -> Outgoing:
        """The validated message. Raises :class:`DataTooLarge` when ``data`` encodes larger
        than ``max_data``. (msgspec, unlike orjson, encodes integers of any size, as JSON
        allows.)"""
        data = _encode(self.data)
        if len(data) > max_data:
            raise DataTooLarge(f"data is {len(data)} bytes encoded, the limit is {max_data}")
        to = self.to
        push = None
        if self.push is not None:
            push = PushSpec(**self.push.model_dump())
        return outgoing(to.users, to.topics, self.event, data, self.ttl, self.ack,
                        self.idempotency_key, default_ttl, push)  # fmt: skip


class DataTooLarge(ValueError):
    pass


class BatchRequest(_Strict):
    messages: Annotated[list[PublishRequest], Field(min_length=1, max_length=1000)]


class TokenRequest(_Strict):
    user: Name
    topics: Annotated[list[Name], Field(max_length=64)] = []
    ttl: Annotated[int, Field(ge=1, le=30 * 86_400)] | None = None
