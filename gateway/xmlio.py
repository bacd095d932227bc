"""XML in and out. Responses are built with ElementTree; request bodies
(DeleteObjects, CompleteMultipartUpload) are parsed with defusedxml, which
refuses entity expansion (billion laughs) and external entities."""

from __future__ import annotations

import email.utils
import time
import xml.etree.ElementTree as ET
from typing import Any

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .errors import S3Error, xml_safe

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_BODY = 2 << 20  # 1000 keys of 1024 bytes fit comfortably


def iso8601(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


def element(tag: str, children: list[Any] | None = None, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.Element(tag, attrs)
    if text is not None:
        el.text = text
    for c in children or []:
        if c is not None:
            el.append(c)
    return el


def leaf(tag: str, value: Any) -> ET.Element:
    el = ET.Element(tag)
    el.text = "true" if value is True else "false" if value is False else xml_safe(str(value))
    return el


def document(root: ET.Element) -> bytes:
    root.set("xmlns", NS)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def parse(body: bytes, root_tag: str) -> ET.Element:
    """Parse a request body whose root must be ``root_tag`` (namespace optional)."""
    if len(body) > MAX_BODY:
        raise S3Error("MalformedXML", "The XML body is too large", 400)
    try:
        root = SafeET.fromstring(body)
    except (ET.ParseError, DefusedXmlException, ValueError) as e:
        raise S3Error("MalformedXML", f"The XML you provided was not well-formed: {e}", 400) from None
    if strip_ns(root.tag) != root_tag:
        raise S3Error("MalformedXML", f"expected a <{root_tag}> document", 400)
    return root


def strip_ns(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def children(el: ET.Element, tag: str) -> list[ET.Element]:
    return [c for c in el if strip_ns(c.tag) == tag]


def child_text(el: ET.Element, tag: str) -> str | None:
    for c in el:
        if strip_ns(c.tag) == tag:
            return c.text or ""
    return None
