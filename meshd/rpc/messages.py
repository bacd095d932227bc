# ruff: noqa: RUF009  (wire() returns a dataclasses.field, which ruff cannot see)
"""The metadata wire's schema: every operation, its arguments and its replies, typed.

The wire (:mod:`meshd.rpc.wire`) carries ``[op, args]`` as JSON with short keys
(a warm ``stat`` must cost tens of microseconds, not gRPC's ~300). This module
is the one place that says what each key means: one :class:`Msg` class per
operation's arguments, whose fields name their wire key, so a server parses
``args`` into a checked object (``ListArgs.from_wire``: a wrong type is an
``InvalidArgument`` naming the op and the key, never a ``KeyError`` deep in a
handler) and a caller builds them by name (``ListArgs(path, after, 100).to_wire()``).
:data:`OPS` lists every operation with its argument class; ``tests`` check that
the node serves exactly these.

Which protocol is each operation's home:

- **metadata wire** (this schema): ``stat``, ``list``, ``open``, the shard,
  region, quota and placement operations, and the node's ``report``
  (:class:`Report`, typed);
- **gRPC** (proto/mesh.proto): control — mounts, ``Load`` (a progress
  stream), ``Free``, ``Sync``, ``GetInfo``, and ``Read``/``Write`` for clients
  that speak only gRPC;
- **HTTP / short-circuit**: bytes (``/v1/files``, ``/v1/pages``, page
  descriptors).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from meshd.attrs import AttrChange
from meshd.errors import InvalidArgument

_MISSING = dataclasses.MISSING
_INT64 = 1 << 63  # integers on the wire are 64-bit: a path's offset, a size, a count


def wire(key: str, default: Any = _MISSING) -> Any:
    """A field carried under ``key`` on the wire (optional when it has a default)."""
    if isinstance(default, list | dict):
        factory = default.copy
        return field(default_factory=factory, metadata={"wire": key})
    return field(default=default, metadata={"wire": key})


def _check(op: str, key: str, value: Any, hint: Any) -> Any:
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    ok: bool
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not -_INT64 <= value < _INT64:
            raise InvalidArgument(f"{op}: argument {key!r} is out of range")
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok and -_INT64 <= value < _INT64 else value
        if ok and not (isinstance(value, float) and math.isfinite(value)):
            raise InvalidArgument(f"{op}: argument {key!r} is out of range")
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is list:
        ok = isinstance(value, list)
        if ok and params and params[0] is not Any:
            value = [_check(op, key, v, params[0]) for v in value]
    elif origin is dict:
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        name = getattr(hint, "__name__", str(hint))
        raise InvalidArgument(f"{op}: argument {key!r} must be {name}, not {type(value).__name__}")
    return value


_Spec = tuple[tuple[str, str, Any, bool], ...]  # (name, wire key, type, required) per field
_SPECS: dict[type, _Spec] = {}


def _spec(cls: type) -> _Spec:
    """A class's fields, read once: the metadata wire's hot path must not resolve
    annotations on every call (``typing.get_type_hints`` costs ~30 us)."""
    spec = _SPECS.get(cls)
    if spec is None:
        hints = typing.get_type_hints(cls)
        spec = _SPECS[cls] = tuple(
            (f.name, f.metadata["wire"], hints[f.name],
             f.default is _MISSING and f.default_factory is _MISSING)
            for f in dataclasses.fields(cls))
    return spec


class Msg:
    """An operation's arguments: fields declared with :func:`wire`. Plain (not frozen)
    slotted dataclasses: a frozen one's ``__init__`` costs a microsecond a field, on the
    wire's hot path."""

    __slots__ = ()

    OP: ClassVar[str] = ""

    @classmethod
    def from_wire(cls, args: Any, op: str | None = None) -> Self:
        op = op or cls.OP
        if not isinstance(args, dict):
            raise InvalidArgument(f"{op}: arguments must be an object")
        values: dict[str, Any] = {}
        for name, key, hint, required in _spec(cls):
            if key in args:
                values[name] = _check(op, key, args[key], hint)
            elif required:
                raise InvalidArgument(f"{op}: argument {key!r} ({name}) is required")
        obj = cls(**values)
        obj.validate(op)
        return obj

    def validate(self, op: str) -> None:
        """Checks beyond types (ranges, non-empty lists)."""

    def to_wire(self) -> dict[str, Any]:
        return {f.metadata["wire"]: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(slots=True)
class Empty(Msg):
    pass


@dataclass(slots=True)
class PathArgs(Msg):
    path: str = wire("p")


@dataclass(slots=True)
class ListArgs(Msg):
    path: str = wire("p")
    after: str = wire("a", "")
    limit: int = wire("n", 1000)  # shard.list: 0 means all

    def validate(self, op: str) -> None:
        if self.limit < 0:
            raise InvalidArgument(f"{op}: bad listing limit {self.limit}")


@dataclass(slots=True)
class ShardStatArgs(Msg):
    path: str = wire("p")
    fresh: bool = wire("f", False)


@dataclass(slots=True)
class StatusBatch(Msg):
    statuses: list[list[Any]] = wire("s", [])


@dataclass(slots=True)
class DropArgs(Msg):
    statuses: list[str] = wire("s", [])
    listings: list[str] = wire("l", [])


@dataclass(slots=True)
class AttrsArgs(Msg):
    path: str = wire("p")
    version: str = wire("v")


@dataclass(slots=True)
class SetAttrsArgs(Msg):
    path: str = wire("p")
    version: str = wire("v")
    attrs: dict[str, Any] = wire("a")


@dataclass(slots=True)
class ChangeArgs(Msg):
    """setattr and mkdir: a path and an attribute change (meshd/attrs.py ``AttrChange``)."""

    path: str = wire("p")
    change: dict[str, Any] = wire("c", {})

    def attr_change(self, op: str) -> AttrChange:
        try:
            return AttrChange.from_wire(self.change)
        except ValueError as e:
            raise InvalidArgument(f"{op}: {e}") from None


@dataclass(slots=True)
class SymlinkArgs(Msg):
    path: str = wire("p")
    target: str = wire("t")
    change: dict[str, Any] = wire("c", {})


@dataclass(slots=True)
class MknodArgs(Msg):
    path: str = wire("p")
    mode: int = wire("m")
    rdev: int = wire("r", 0)
    change: dict[str, Any] = wire("c", {})


@dataclass(slots=True)
class TwoPathArgs(Msg):
    """link and copy: from ``s`` to ``d``."""

    src: str = wire("s")
    dst: str = wire("d")


@dataclass(slots=True)
class TruncateArgs(Msg):
    path: str = wire("p")
    size: int = wire("n")
    version: str = wire("v", "")

    def validate(self, op: str) -> None:
        if self.size < 0:
            raise InvalidArgument(f"{op}: cannot truncate to a negative size ({self.size})")


@dataclass(slots=True)
class FreeArgs(Msg):
    file_ids: list[str] = wire("ids", [])


@dataclass(slots=True)
class ReportArgs(Msg):
    members: bool = wire("m", False)  # add the region's members (meshctl report); peers ask without


@dataclass(slots=True)
class RegionHeldArgs(Msg):
    path: str = wire("p")
    version: str = wire("v")
    size: int = wire("z", -1)


@dataclass(slots=True)
class ShardHeldArgs(Msg):
    path: str = wire("p")
    version: str = wire("v")
    indices: list[int] = wire("i", [])

    def validate(self, op: str) -> None:
        if any(i < 0 for i in self.indices):
            raise InvalidArgument(f"{op}: i must be a list of page indices")


@dataclass(slots=True)
class QuotaTakeArgs(Msg):
    link: str = wire("l")
    tokens: float = wire("t")

    def validate(self, op: str) -> None:
        if not 0 <= self.tokens < 1 << 40:
            raise InvalidArgument(f"{op}: t must be a token count")


@dataclass(slots=True)
class DatasetsArgs(Msg):
    """place.state and stage: dataset names (paths or store URIs) under ``d``; place.state
    takes none as well (the topology and nodes alone: ``meshctl topology show``)."""

    names: list[str] = wire("d", [])

    def validate(self, op: str) -> None:
        if (not self.names and op != "place.state") or not all(self.names):
            raise InvalidArgument(f"{op}: argument 'd' must be a list of dataset names")


@dataclass(slots=True)
class RegionCachedArgs(Msg):
    paths: list[str] = wire("ps", [])

    def validate(self, op: str) -> None:
        if not self.paths or not all(self.paths):
            raise InvalidArgument(f"{op}: argument 'ps' must be a list of dataset names")


# Every operation the node serves, with its arguments.
OPS: dict[str, type[Msg]] = {
    "info": Empty, "stat": PathArgs, "list": ListArgs, "open": PathArgs,
    "shard.open": PathArgs, "shard.stat": ShardStatArgs, "shard.list": ListArgs,
    "shard.put": StatusBatch, "shard.drop": DropArgs, "shard.forget": PathArgs,
    "shard.attrs": AttrsArgs, "shard.set_attrs": SetAttrsArgs, "shard.drop_attrs": PathArgs,
    "shard.held": ShardHeldArgs, "shard.counts": Empty,
    "free": FreeArgs, "report": ReportArgs, "writeback.status": Empty,
    "region.held": RegionHeldArgs, "region.cached": RegionCachedArgs, "quota.take": QuotaTakeArgs,
    "place.state": DatasetsArgs, "stage": DatasetsArgs, "mesh.state": PathArgs,
    "setattr": ChangeArgs, "mkdir": ChangeArgs, "symlink": SymlinkArgs, "mknod": MknodArgs,
    "link": TwoPathArgs, "copy": TwoPathArgs, "truncate": TruncateArgs,
}


# ---- replies ------------------------------------------------------------------

@dataclass(frozen=True)
class TierReport:
    capacity: int
    used: int
    pages: int
    hits: int
    evicted_pages: int


@dataclass(frozen=True)
class Report:
    """A node's report (``report`` on the wire; ``meshctl report``). Typed at both ends:
    the node builds it from its counters, the client reads it back with :meth:`from_wire`."""

    page_size: int
    tiers: dict[str, TierReport]
    hits: int
    misses: int
    page_fetches: int
    hit_ratio: float
    bytes_by_source: dict[str, int]
    bytes_from_cache: int
    bytes_from_understore: int
    understore_requests: dict[str, int]
    cache_write_errors: int
    metadata_write_errors: int
    corrupt_pages: int
    mounts: int
    metadata_forwarded: int
    metadata_fallbacks: int
    region_served: int
    federation: dict[str, Any] | None = None  # cluster mode with a topology: links, routes
    cluster: dict[str, Any] | None = None  # meshctl report in cluster mode: the members

    @classmethod
    def from_wire(cls, d: Any) -> Report:
        if not isinstance(d, dict):
            raise InvalidArgument("report: not an object")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in names if n not in d and n not in ("federation", "cluster")]
        if missing:
            raise InvalidArgument(f"report: missing {', '.join(sorted(missing))}")
        values = {k: v for k, v in d.items() if k in names}
        values["tiers"] = {name: TierReport(**t) for name, t in d["tiers"].items()}
        return cls(**values)

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
