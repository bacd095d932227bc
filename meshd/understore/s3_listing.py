"""A quicker parse of S3 listing bodies, for botocore.

botocore turns an XML body into Python values by walking its service model element
by element, in pure Python: for a 1000-key ``ListObjectsV2`` page that is about
15 ms of CPU, on a node that lists directories for every mount client (a
``find`` over 100,000 small files is 100 such pages). :class:`ListingParser` is
botocore's own rest-xml parser with one more path: for a successful listing it
walks the same model once, ahead of time, into a table from XML tag to member
name and converter, and then reads the body's elements through that table: the
same result, in a third of the time.

What the quick path does not cover (anything but a 2xx listing body; a repeated
element botocore would turn into a list; a shape with XML attributes, maps,
blobs, non-flattened lists or unions; a body that does not parse) goes to
botocore's own parse, untouched: errors, retries and every other operation stay
botocore's. tests/test_s3_listing_parser.py checks that both parses agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.parsers import ResponseParserFactory, RestXMLParser

# The outputs worth it: listings are the only responses with thousands of elements.
QUICK_SHAPES = frozenset({"ListObjectsV2Output", "ListObjectsOutput"})

# tag -> (member name, is a flattened list, scalar type or None, plan of a structure or None)
Plan = dict[str, tuple[str, bool, "str | None", "Plan | None"]]


class _Unusual(Exception):
    """Something the quick path does not cover: botocore's own parse takes over."""


def _plan(shape: Any, depth: int = 0) -> Plan:
    """The table of a structure shape, or _Unusual for what only botocore handles."""
    if depth > 4 or shape.type_name != "structure" or getattr(shape, "is_tagged_union", False):
        raise _Unusual(shape.name)
    plan: Plan = {}
    for name, member in shape.members.items():
        ser = member.serialization
        if ser.get("location") or ser.get("eventheader"):
            continue  # a header or status member: botocore's _parse_non_payload_attrs has it
        if ser.get("xmlAttribute"):
            raise _Unusual(name)
        is_list = member.type_name == "list"
        if is_list:
            if not ser.get("flattened"):
                raise _Unusual(name)
            tag = member.member.serialization.get("name") or ser.get("name") or name
            member = member.member
        else:
            tag = ser.get("name") or name
        if member.type_name == "structure":
            plan[tag] = (name, is_list, None, _plan(member, depth + 1))
        elif member.type_name in ("string", "integer", "long", "boolean", "timestamp", "float", "double"):
            plan[tag] = (name, is_list, member.type_name, None)
        else:
            raise _Unusual(name)
    return plan


class ListingParser(RestXMLParser):
    """botocore's rest-xml parser, with the quick path for listing bodies."""

    _plans: dict[str, Plan | None] = {}  # by shape name, for every parser (one is made per response)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._convert: dict[str, Callable[[str], Any] | None] = {
            "string": None, "integer": int, "long": int, "float": float, "double": float,
            "boolean": lambda text: text == "true", "timestamp": self._timestamp_parser,
        }

    def _do_parse(self, response: dict[str, Any], shape: Any) -> Any:
        if shape is not None and shape.name in QUICK_SHAPES and response.get("body"):
            try:
                body = self.quick_body(response["body"], shape)
            except Exception:  # anything at all: botocore parses it (and says what is wrong)
                body = None
            if body is not None:
                final: dict[str, Any] = {"ResponseMetadata": self._populate_response_metadata(response)}
                self._parse_non_payload_attrs(response, shape, shape.members, final)
                final.update(body)
                return final
        return super()._do_parse(response, shape)

    def quick_body(self, body: bytes, shape: Any) -> dict[str, Any] | None:
        """The body's members as botocore's parse gives them, or None when the quick path
        does not cover this shape (botocore's parse then). Raises on a body it cannot read."""
        if shape.name in self._plans:
            plan = self._plans[shape.name]
        else:  # two threads may both make it: the same table
            try:
                plan = _plan(shape)
            except _Unusual:
                plan = None
            self._plans[shape.name] = plan
        if plan is None:
            return None
        root = self._parse_xml_string_to_dom(body)  # botocore's own XML parser settings
        return self._structure(plan, root)

    def _structure(self, plan: Plan, node: Any) -> dict[str, Any]:
        parsed: dict[str, Any] = {}
        convert = self._convert
        for child in node:
            tag = child.tag
            if tag[:1] == "{":
                tag = tag.rpartition("}")[2]
            spec = plan.get(tag)
            if spec is None:
                continue  # an element the model does not know: botocore skips it too
            name, is_list, kind, sub = spec
            if sub is not None:
                value: Any = self._structure(sub, child)
            else:
                value = child.text or ""
                fn = convert[kind]  # type: ignore[index]
                if fn is not None:
                    value = fn(value)
            if is_list:
                parsed.setdefault(name, []).append(value)
            elif name in parsed:
                raise _Unusual(tag)  # a repeated scalar: botocore makes a list of it
            else:
                parsed[name] = value
        return parsed


class ListingParserFactory(ResponseParserFactory):
    """botocore's parser factory, handing out :class:`ListingParser` for rest-xml (S3)."""

    def create_parser(self, protocol_name: str) -> Any:
        if protocol_name == "rest-xml":
            return ListingParser(**self._defaults)
        return super().create_parser(protocol_name)
