"""The request bodies of the internal API, one msgspec schema each, and the rules beyond them.

:class:`PublishRequest`, :class:`BatchRequest` and :class:`TokenRequest` are what the publish lane
(:mod:`pushsvc.http.lane`), the FastAPI routes (:mod:`pushsvc.http.internal`) and the dev demo
API decode, and what the OpenAPI document describes (:func:`components`). What a schema cannot
say is checked by :func:`message`, which every publish goes through: ``to`` names exactly one
kind of target, ``push`` escalates a message to users that asks for acks, ``data`` fits the
limit. (The first two rules are in the document too, as JSON Schema, so that a schema-valid
request is never refused.)

``data`` is kept as the caller's bytes (:class:`msgspec.Raw`: checked to be JSON, not decoded);
only when it is over the limit is it measured again without its whitespace.

Errors: :class:`Invalid` (422 ``invalid_body``, with where) and :class:`DataTooLarge` (413
``message_too_large``), both ``ValueError``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from pushsvc.auth import TOKEN_TTL_CEILING
from pushsvc.broker.base import PushSpec
from pushsvc.core.streams import NAME_PATTERN
from pushsvc.http.publishing import outgoing
from pushsvc.node.publish import Outgoing

EVENT_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
PUSH_TITLE = 120  # characters: a notification shows little more
PUSH_BODY = 1000
MAX_TTL = 30 * 86_400
SCHEMAS = "#/components/schemas/{name}"


def _whole(pattern: str) -> str:
    r"""``pattern`` (``^…$``) for msgspec, which searches with Python's ``re``: there ``$`` also
    matches before a trailing newline, ``\Z`` only at the very end."""
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise ValueError(f"not an anchored pattern: {pattern!r}")
    return pattern[:-1] + r"\Z"


Name = Annotated[str, msgspec.Meta(pattern=_whole(NAME_PATTERN))]
Event = Annotated[str, msgspec.Meta(pattern=_whole(EVENT_PATTERN))]
# Seconds are whole numbers; ``3600.0`` is one too (JSON does not tell them apart), so they are
# decoded as floats that are a multiple of 1 and used as ints.
Ttl = Annotated[float, msgspec.Meta(ge=1, le=MAX_TTL, multiple_of=1)]
#: A client token's lifetime: at most 12 h (``token_max_ttl`` may lower it, never raise it).
TokenTtl = Annotated[float, msgspec.Meta(ge=1, le=TOKEN_TTL_CEILING, multiple_of=1)]
#: Only ``true`` is taken (msgspec has no boolean literals; :func:`message` refuses ``false``).
OnlyTrue = Annotated[bool, msgspec.Meta(extra_json_schema={"const": True})]


def _null() -> msgspec.Raw:
    return msgspec.Raw(b"null")


class Target(msgspec.Struct, forbid_unknown_fields=True):
    users: Annotated[list[Name], msgspec.Meta(min_length=1, max_length=1000)] | None = None
    topics: Annotated[list[Name], msgspec.Meta(min_length=1, max_length=100)] | None = None
    all: OnlyTrue | None = None


class PushRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Escalate to the user's browsers (Web Push) when no device acked ``after`` s after
    publish."""

    after: Ttl  # past the message's ttl: 1 s before it expires
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=PUSH_TITLE)]
    body: Annotated[str, msgspec.Meta(max_length=PUSH_BODY)] = ""
    urgency: Literal["normal", "high"] = "normal"


class PublishRequest(msgspec.Struct, forbid_unknown_fields=True):
    to: Target
    event: Event
    data: msgspec.Raw = msgspec.field(default_factory=_null)  # any JSON; null when left out
    ttl: Ttl | None = None
    ack: bool | None = None
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    push: PushRequest | None = None


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    messages: Annotated[list[PublishRequest], msgspec.Meta(min_length=1, max_length=1000)]


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    user: Name
    topics: Annotated[list[Name], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    ttl: TokenTtl | None = None


REQUESTS = (PublishRequest, BatchRequest, TokenRequest)

#: The rules of :func:`message` that JSON Schema can state, by component.
_RULES: dict[str, dict[str, Any]] = {
    # ``to`` names exactly one of ``users``, ``topics`` or ``all``: the others left out or null
    "Target": {
        "oneOf": [
            {"required": ["users"], "properties": {"users": {"type": "array"}}},
            {"required": ["topics"], "properties": {"topics": {"type": "array"}}},
            {"required": ["all"], "properties": {"all": {"const": True}}},
        ]
    },
    # a message that escalates goes to users and asks for acks
    "PublishRequest": {
        "if": {"required": ["push"], "properties": {"push": {"type": "object"}}},
        "then": {
            "properties": {
                "to": {"required": ["users"], "properties": {"users": {"type": "array"}}},
                "ack": {"enum": [True, None]},
            }
        },
    },
}


def components() -> dict[str, Any]:
    """The JSON Schemas of the request bodies and what they refer to, for
    ``components.schemas`` of the OpenAPI document."""
    _, found = msgspec.json.schema_components(REQUESTS, ref_template=SCHEMAS)
    for name, rules in _RULES.items():
        found[name].update(rules)
    _in_json_schema_terms(found)
    return found


def _in_json_schema_terms(schema: Any) -> None:
    r"""What msgspec needs said in Python's terms, in JSON Schema's: a number that is a multiple
    of 1 is an ``integer`` (which takes ``3600.0`` too), and a pattern ends with ``$`` (in
    JSON Schema's regular expressions, the very end, as ``\Z`` in Python's)."""
    if isinstance(schema, list):
        for item in schema:
            _in_json_schema_terms(item)
    elif isinstance(schema, dict):
        if schema.get("type") == "number" and schema.get("multipleOf") == 1:
            schema["type"] = "integer"
            del schema["multipleOf"]
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and pattern.endswith(r"\Z"):
            schema["pattern"] = pattern[:-2] + "$"
        for value in schema.values():
            _in_json_schema_terms(value)


class Invalid(ValueError):
    """A body the schema takes but a rule refuses: 422 ``invalid_body`` at ``loc``."""

    def __init__(self, loc: list[str], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


class DataTooLarge(ValueError):
    pass


def message(req: PublishRequest, default_ttl: int, max_data: int) -> Outgoing:
    """The message to publish for a decoded ``req``. Raises :class:`Invalid` when a rule
    refuses it, :class:`DataTooLarge` when ``data`` is larger than ``max_data`` bytes even
    without whitespace."""
    to = req.to
    if (to.users is not None) + (to.topics is not None) + (to.all is not None) != 1:
        raise Invalid(["to"], '"to" needs exactly one of "users", "topics" or "all": true')
    if to.all is False:
        raise Invalid(["to", "all"], '"all" can only be true')
    data = bytes(req.data)
    if len(data) > max_data:
        data = msgspec.json.format(data, indent=-1)
        if len(data) > max_data:
            raise DataTooLarge(f"data is {len(data)} bytes encoded, the limit is {max_data}")
    ttl = None if req.ttl is None else int(req.ttl)
    push = None
    if req.push is not None:  # it escalates to users' browsers what no device acked
        if to.users is None:
            raise Invalid(["push"], '"push" needs "to": {"users": [...]}')
        if req.ack is False:
            raise Invalid(["push"], '"push" needs "ack": true (it escalates what no device acked)')
        p = req.push
        push = PushSpec(after=int(p.after), title=p.title, body=p.body, urgency=p.urgency)
    return outgoing(to.users, to.topics, req.event, data, ttl, req.ack, req.idempotency_key,
                    default_ttl, push)  # fmt: skip


_PATH = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[([^\]]*)\]")
_FIELD = re.compile(r"(?:missing required|unknown) field `([^`]*)`")
#: msgspec's words for seconds and patterns, in the document's (see _in_json_schema_terms).
_TERMS = (
    ("`float` that's a multiple of 1.0", "a whole number"),
    ("`float", "`integer"),
    ("\\\\Z'", "$'"),  # msgspec shows the pattern's repr, the backslash doubled
)


def where(exc: msgspec.ValidationError) -> tuple[list[str], str]:
    """Where in the body ``exc`` is (``$.to.users[0]`` as ``["to", "users", "0"]``; a missing
    or unknown field's name last) and what is wrong there, in the OpenAPI document's terms."""
    text = str(exc)
    found = _PATH.match(text)
    assert found is not None  # the pattern matches any text
    msg, path = found.group(1), found.group(2) or ""
    for python, json_schema in _TERMS:
        msg = msg.replace(python, json_schema)
    loc = [key or index for key, index in _STEP.findall(path)]
    field = _FIELD.search(msg)
    if field is not None:
        loc.append(field.group(1))
    return loc, msg


def utf8(body: bytes) -> bool:
    """True when ``body`` is UTF-8 (msgspec does not look inside ``data``, kept as raw bytes:
    a client could not read a frame that carried anything else)."""
    if body.isascii():
        return True
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True
