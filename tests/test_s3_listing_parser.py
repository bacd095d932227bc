"""The quick listing parse (meshd/understore/s3_listing.py) against botocore's own parse.

Both parsers get the same response (botocore's model of ListObjectsV2 / ListObjects,
the node's timestamp parser) and must return the same dict, ResponseMetadata included;
the quick path must be the one taken for ordinary listings, and anything it does not
cover must come out exactly as botocore makes it."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

import botocore.session
import pytest
from botocore.parsers import ResponseParserError, RestXMLParser
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.understore.s3 import _fast_timestamp
from meshd.understore.s3_listing import ListingParser, ListingParserFactory

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
_MODEL = botocore.session.get_session().get_service_model("s3")
V2 = _MODEL.operation_model("ListObjectsV2").output_shape
V1 = _MODEL.operation_model("ListObjects").output_shape
HEADERS = {"x-amz-request-id": "R1", "x-amz-id-2": "H1", "x-amz-request-charged": "requester"}


def _obj(key: str, size: int = 7, extra: str = "") -> str:
    return (f"<Contents><Key>{escape(key)}</Key><LastModified>2026-12-06T10:00:00.000Z</LastModified>"
            f"<ETag>&quot;0f343b0931126a20f133d67c2b018a3b&quot;</ETag><Size>{size}</Size>"
            f"<StorageClass>STANDARD</StorageClass>{extra}</Contents>")


def _body(inner: str, ns: str = NS) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult {ns}>{inner}</ListBucketResult>').encode()


def _both(body: bytes, shape: Any = V2, status: int = 200) -> tuple[Any, Any]:
    response = {"status_code": status, "headers": dict(HEADERS), "body": body}
    theirs = RestXMLParser(timestamp_parser=_fast_timestamp).parse(dict(response), shape)
    ours = ListingParser(timestamp_parser=_fast_timestamp).parse(dict(response), shape)
    return ours, theirs


HEAD = ("<Name>bench</Name><Prefix>d042/</Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys>"
        "<Delimiter>/</Delimiter><EncodingType>url</EncodingType>")

BODIES = {
    "plain": _body(HEAD + "<IsTruncated>false</IsTruncated>" + _obj("d042/a") + _obj("d042/b", 0)),
    "no namespace": _body(HEAD + "<IsTruncated>false</IsTruncated>" + _obj("d042/a"), ns=""),
    "truncated": _body(HEAD + "<IsTruncated>true</IsTruncated><ContinuationToken>abc</ContinuationToken>"
                       "<NextContinuationToken>def==</NextContinuationToken>" + _obj("d042/a")),
    "prefixes": _body(HEAD + "<IsTruncated>false</IsTruncated><CommonPrefixes><Prefix>d042/x/</Prefix>"
                      "</CommonPrefixes><CommonPrefixes><Prefix>d042/y/</Prefix></CommonPrefixes>"),
    "empty": _body("<Name>bench</Name><Prefix>nothing/</Prefix><KeyCount>0</KeyCount>"
                   "<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"),
    "empty elements": _body("<Name>bench</Name><Prefix></Prefix><Delimiter/><IsTruncated>false</IsTruncated>"
                            + _obj("a")),
    "special keys": _body(HEAD + "<IsTruncated>false</IsTruncated>" + _obj('d042/a&b<c>"d"\u00e9\U0001f600')
                          + _obj("d042/%20sp%2Face")),
    "checksums": _body(HEAD + "<IsTruncated>false</IsTruncated>" + _obj(
        "d042/c", extra="<ChecksumAlgorithm>CRC32</ChecksumAlgorithm><ChecksumAlgorithm>SHA256</ChecksumAlgorithm>"
                        "<ChecksumType>FULL_OBJECT</ChecksumType>")),
    "owner and restore": _body(HEAD + "<IsTruncated>false</IsTruncated>" + _obj(
        "d042/o", extra="<Owner><ID>abc</ID><DisplayName>me</DisplayName></Owner><RestoreStatus>"
                        "<IsRestoreInProgress>true</IsRestoreInProgress><RestoreExpiryDate>"
                        "2027-01-01T00:00:00.000Z</RestoreExpiryDate></RestoreStatus>")),
    "unknown elements": _body(HEAD + "<IsTruncated>false</IsTruncated><Shiny>1</Shiny>"
                              + _obj("d042/u", extra="<Sparkle><X>1</X></Sparkle>")),
    "repeated scalar": _body(HEAD + "<IsTruncated>false</IsTruncated><Name>again</Name>" + _obj("d042/r")),
}


@pytest.mark.parametrize("name", sorted(set(BODIES) - {"repeated scalar"}))
def test_same_as_botocore(name: str) -> None:
    ours, theirs = _both(BODIES[name])
    assert ours == theirs
    assert ours["ResponseMetadata"]["RequestId"] == "R1" and ours["RequestCharged"] == "requester"


@pytest.mark.parametrize("name", sorted(set(BODIES) - {"repeated scalar"}))
def test_quick_path_taken(name: str) -> None:
    got = ListingParser(timestamp_parser=_fast_timestamp).quick_body(BODIES[name], V2)
    theirs = _both(BODIES[name])[1]
    assert got is not None
    assert got == {k: v for k, v in theirs.items() if k not in ("ResponseMetadata", "RequestCharged")}


def test_repeated_scalar_left_to_botocore() -> None:
    """botocore turns a repeated <Name> into a list; the quick path declines rather than guess."""
    with pytest.raises(Exception, match="Name"):
        ListingParser(timestamp_parser=_fast_timestamp).quick_body(BODIES["repeated scalar"], V2)
    ours, theirs = _both(BODIES["repeated scalar"])
    assert [e.text for e in ours.pop("Name")] == [e.text for e in theirs.pop("Name")] == ["bench", "again"]
    assert ours == theirs



def test_listobjects_v1() -> None:
    body = _body("<Name>bench</Name><Prefix>d/</Prefix><Marker></Marker><NextMarker>d/b</NextMarker>"
                 "<MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>" + _obj("d/a") + _obj("d/b"))
    ours, theirs = _both(body, V1)
    assert ours == theirs and ours["NextMarker"] == "d/b" and len(ours["Contents"]) == 2


def test_bad_bodies_fail_as_botocore_does() -> None:
    """A body that does not parse, or a Size that is no number: botocore's own error."""
    for body in (b"<ListBucketResult><Contents><Key>a</Key>", _body(_obj("a").replace("<Size>7", "<Size>x7"))):
        errors = []
        for parser in (RestXMLParser, ListingParser):
            with pytest.raises((ResponseParserError, ValueError)) as e:
                parser(timestamp_parser=_fast_timestamp).parse({"status_code": 200, "headers": {}, "body": body}, V2)
            errors.append(type(e.value))
        assert errors[0] is errors[1]


def test_error_responses_are_botocores() -> None:
    body = b"<Error><Code>NoSuchBucket</Code><Message>gone</Message><RequestId>R</RequestId></Error>"
    ours, theirs = _both(body, status=404)
    assert ours == theirs and ours["Error"]["Code"] == "NoSuchBucket"


def test_factory_hands_out_the_quick_parser_for_rest_xml_only() -> None:
    f = ListingParserFactory()
    f.set_parser_defaults(timestamp_parser=_fast_timestamp)
    assert isinstance(f.create_parser("rest-xml"), ListingParser)
    assert not isinstance(f.create_parser("json"), ListingParser)


_KEY = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.tuples(_KEY, st.integers(0, 2**62)), max_size=8),
       prefixes=st.lists(_KEY, max_size=3), truncated=st.booleans(), token=st.one_of(st.none(), _KEY))
def test_random_listings(keys: list[tuple[str, int]], prefixes: list[str], truncated: bool, token: str | None) -> None:
    xml = lambda s: escape("".join(c for c in s if c in "\t\n" or ord(c) >= 0x20))  # noqa: E731 - what XML 1.0 allows
    inner = HEAD + f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
    if token is not None:
        inner += f"<NextContinuationToken>{xml(token)}</NextContinuationToken>"
    inner += "".join(_obj(xml(k).replace("&amp;", "&"), size) for k, size in keys)
    inner += "".join(f"<CommonPrefixes><Prefix>{xml(p)}</Prefix></CommonPrefixes>" for p in prefixes)
    ours, theirs = _both(_body(inner))
    assert ours == theirs
