"""The answers of the internal API that only the node reads, and the JSON Schema components of
every answer for the OpenAPI document.

Each answer is one msgspec struct (most in :mod:`pushsvc.records`, which the CLI decodes with);
:func:`components` describes them all, each under its class's name, the name
:func:`pushsvc.http.openapi.answers` refers to. (Two records the broker keeps are answered as
they are, under the names the document has always given them: :data:`RENAMED`.)
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec

from pushsvc import records
from pushsvc.records import PublishResult

SCHEMAS = "#/components/schemas/{name}"
#: The broker's records' names in the document.
RENAMED = {"NodeInfo": "NodeDescription", "SessionInfo": "SessionDescription"}
#: What each item of a failed batch's ``results`` is.
RESULT_OR_ERROR = ("PublishResult", "ItemError")


def body(answer: msgspec.Struct) -> dict[str, Any]:
    """``answer`` as the JSON object a route returns."""
    built: dict[str, Any] = msgspec.to_builtins(answer)
    return built


class BatchResult(msgspec.Struct, kw_only=True, frozen=True):
    """Every message published, one result each, in order."""

    results: list[PublishResult]


class TokenAnswer(msgspec.Struct, kw_only=True, frozen=True):
    """A client token for the WebSocket hello."""

    token: str
    user: str
    topics: list[str]
    expires_in: Annotated[int, msgspec.Meta(description="seconds")]


def name(answer: type[msgspec.Struct]) -> str:
    """The component name of ``answer``."""
    return RENAMED.get(answer.__name__, answer.__name__)


def components() -> dict[str, Any]:
    """The JSON Schema of every answer (and of what they contain), by component name."""
    answers = [BatchResult, TokenAnswer]
    answers += [
        v for v in vars(records).values() if isinstance(v, type) and issubclass(v, msgspec.Struct)
    ]
    _, found = msgspec.json.schema_components(answers, ref_template=SCHEMAS)
    text = json.dumps(found)
    for old, new in RENAMED.items():
        text = text.replace(f'"{SCHEMAS.format(name=old)}"', f'"{SCHEMAS.format(name=new)}"')
    schemas: dict[str, Any] = {}
    for struct, schema in json.loads(text).items():
        if struct in RENAMED:  # the node answers every field (msgspec writes the defaults too)
            schema["required"] = list(schema["properties"])
            for field in schema["properties"].values():
                field.pop("default", None)
        key = RENAMED.get(struct, struct)
        schemas[key] = schema | {"title": key}
    # msgspec decodes no union of two structs without a tag: the list is typed loosely there
    results = schemas["ErrorAnswer"]["properties"]["results"]
    results["items"] = {"anyOf": [{"$ref": SCHEMAS.format(name=n)} for n in RESULT_OR_ERROR]}
    return schemas
