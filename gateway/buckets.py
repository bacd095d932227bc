"""Buckets: AWS's naming rules for CreateBucket, and ListBuckets' paging.

Naming follows AWS's rules for general purpose buckets: 3 to 63 characters of
lowercase letters, digits, '.' and '-'; a letter or digit first and last; no
'..'; not an IPv4 address; none of the prefixes and suffixes AWS reserves
(``xn--``, ``sthree-``, ``amzn-s3-demo-``; ``-s3alias``, ``--ol-s3``, ``.mrap``,
``--x-s3``, ``--table-s3``). The rules apply to CreateBucket only: a bucket that
is a mount keeps the name its operator gave it.

ListBuckets pages as AWS does since 2024: ``max-buckets`` (1 to 10000), ``prefix``,
and an opaque ``continuation-token`` (the last name of the previous page); the
response names the token of the next page, if there is one, and echoes the prefix.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from .errors import S3Error, invalid_argument

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
MAX_BUCKETS = 10_000


def check_bucket_name(name: str) -> None:
    """``InvalidBucketName`` unless ``name`` follows AWS's rules for a new bucket."""
    if (not _NAME.fullmatch(name) or ".." in name or _IPV4.fullmatch(name)
            or name.startswith(RESERVED_PREFIXES) or name.endswith(RESERVED_SUFFIXES)):
        raise S3Error("InvalidBucketName", "The specified bucket is not valid.", 400, BucketName=name)


@dataclass(frozen=True)
class BucketPage:
    names: list[str]
    next_token: str | None  # None: the last page


def page_of_buckets(names: list[str], max_buckets: str | None, prefix: str,
                    token: str | None) -> BucketPage:
    """One page of ListBuckets from all bucket ``names`` (any order)."""
    limit = MAX_BUCKETS
    if max_buckets is not None:
        digits = max_buckets.lstrip("0") if re.fullmatch(r"[0-9]+", max_buckets) else ""
        if not digits or len(digits) > 5 or not 1 <= int(digits) <= MAX_BUCKETS:
            raise invalid_argument("max-buckets must be an integer between 1 and 10000",
                                   ArgumentName="max-buckets", ArgumentValue=max_buckets[:64])
        limit = int(digits)
    after = after_token(token) if token else ""
    chosen = sorted(n for n in names if n.startswith(prefix) and n > after)
    if len(chosen) <= limit:
        return BucketPage(chosen, None)
    return BucketPage(chosen[:limit], continuation_token(chosen[limit - 1]))


def continuation_token(name: str) -> str:
    """A continuation token for a listing that goes on after ``name`` (ListBuckets, ListObjectsV2)."""
    return base64.urlsafe_b64encode(name.encode("utf-8", "surrogatepass")).decode()


def after_token(token: str) -> str:
    """The name or key a continuation token goes on after; InvalidArgument for a bad one."""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid_argument("The continuation token provided is incorrect",
                               ArgumentName="continuation-token") from None
