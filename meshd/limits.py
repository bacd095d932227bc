"""Bounds on what one request or one client may ask of a node.

Every front end uses these, so bad input gets the same treatment everywhere:

- :func:`parse_int`: an integer of a query, a header or a JSON argument, with bounds;
  anything else (thousands of digits, a sign where none belongs) is
  :class:`~meshd.errors.InvalidArgument`, which each protocol answers in its own
  terms (400, S3 ``InvalidArgument``, WebHDFS ``IllegalArgumentException``).
- :func:`loads`: JSON of a request, refused (InvalidArgument) when nested deeper
  than :data:`MAX_JSON_DEPTH` or larger than the caller allows, before the parser
  sees it: never a RecursionError.
- :class:`InFlight`: requests in flight per key (the client's address today; a
  tenant later): over the limit, :class:`~meshd.errors.SlowDown` (S3 ``SlowDown``,
  WebHDFS ``RetriableException``, HTTP 503, a wire error reply).
- :func:`log_rejected`: one line per rejected request, at most a few a second in all,
  with a count of those left out; never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from meshd.errors import InvalidArgument, SlowDown

MAX_JSON_DEPTH = 64
INT64_MAX = (1 << 63) - 1
REJECTED_LINES_PER_SECOND = 5

_INT = re.compile(r"[+-]?[0-9]{1,20}")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

log = logging.getLogger("meshd.rejected")


def parse_int(raw: Any, name: str, low: int = 0, high: int = INT64_MAX) -> int:
    """``raw`` (a str of a query or header, or an int of a JSON argument) as an
    integer in [low, high], else InvalidArgument naming ``name``."""
    if isinstance(raw, bool):
        raise InvalidArgument(f"{name} must be an integer, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and _INT.fullmatch(raw.strip()):
        value = int(raw.strip())
    else:
        shown = raw[:40] if isinstance(raw, str) else type(raw).__name__
        raise InvalidArgument(f"{name} must be an integer, got {shown!r}")
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be between {low} and {high}, got {str(value)[:40]}")
    return value


def json_depth(raw: bytes) -> int:
    """How deeply the JSON text ``raw`` nests arrays and objects (0 for a scalar).
    Cheap when the text has few brackets (the usual request); strings are skipped."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return min(raw.count(b"[") + raw.count(b"{"), MAX_JSON_DEPTH)
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for c in brackets:
        depth += 1 if c in b"[{" else -1
        if depth > deepest:
            deepest = depth
    return deepest


def loads(raw: bytes | str, what: str, max_bytes: int | None = None) -> Any:
    """Parse the JSON of a request: InvalidArgument (naming ``what``) for text that is
    not JSON, is larger than ``max_bytes`` or nests deeper than MAX_JSON_DEPTH."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidArgument(f"{what}: JSON body of {len(data)} bytes is larger than {max_bytes}")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise InvalidArgument(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{what}: not valid JSON ({str(e)[:80]})") from None


class InFlight:
    """Requests in flight per key, at most ``limit`` each. The one place a front end
    asks whether a client may start another request::

        with limiter.slot(key):   # SlowDown when the key is at its limit
            ...serve...

    Keys are strings: the client's address today, a tenant's name once tenants exist."""

    def __init__(self, limit: int, what: str = "requests") -> None:
        self.limit = limit
        self.what = what
        self.counts: dict[str, int] = {}

    def try_acquire(self, key: str) -> bool:
        n = self.counts.get(key, 0)
        if n >= self.limit:
            return False
        self.counts[key] = n + 1
        return True

    def release(self, key: str) -> None:
        n = self.counts.get(key, 0) - 1
        if n > 0:
            self.counts[key] = n
        else:
            self.counts.pop(key, None)

    @contextlib.contextmanager
    def slot(self, key: str) -> Iterator[None]:
        if not self.try_acquire(key):
            raise SlowDown(f"more than {self.limit} {self.what} in flight from {key}: slow down")
        try:
            yield
        finally:
            self.release(key)


class _Rejected:
    def __init__(self) -> None:
        self.second = -1
        self.lines = 0
        self.suppressed = 0


_REJECTED = _Rejected()


def log_rejected(where: str, client: str, reason: str) -> None:
    """One line for a rejected request or cut connection (a bad client, not a fault of
    the node): at most REJECTED_LINES_PER_SECOND a second in all, the rest counted and
    reported with the next line logged."""
    now = int(time.monotonic())
    r = _REJECTED
    if now != r.second:
        r.second, r.lines = now, 0
    if r.lines >= REJECTED_LINES_PER_SECOND:
        r.suppressed += 1
        return
    r.lines += 1
    more = f" ({r.suppressed} more rejections not logged)" if r.suppressed else ""
    r.suppressed = 0
    log.warning("rejected %s from %s: %s%s", where, client or "?", reason[:200], more)
