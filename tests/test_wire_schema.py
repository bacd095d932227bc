"""The metadata wire's schema (meshd/rpc/messages.py): every operation the node serves
is in it, arguments are checked before a handler sees them, and the typed Report
round-trips what a node reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.errors import InvalidArgument
from meshd.rpc import messages as msg
from meshd.servers.meta_api import handlers
from tests.nodeutil import NodeBox


def test_args_by_name_and_wire_key() -> None:
    m = msg.ListArgs.from_wire({"p": "/d", "a": "x", "n": 5}, "list")
    assert (m.path, m.after, m.limit) == ("/d", "x", 5)
    assert msg.ListArgs("/d", "x", 5).to_wire() == {"p": "/d", "a": "x", "n": 5}
    assert msg.ListArgs.from_wire({"p": "/d"}).limit == 1000  # the default
    assert msg.QuotaTakeArgs.from_wire({"l": "a>b", "t": 3}).tokens == 3.0  # ints are token counts too


@pytest.mark.parametrize(("cls", "args", "words"), [
    (msg.PathArgs, {}, "'p' (path) is required"),
    (msg.PathArgs, {"p": 7}, "'p' must be str"),
    (msg.ListArgs, {"p": "/d", "n": "9"}, "'n' must be int"),
    (msg.ListArgs, {"p": "/d", "n": -1}, "bad listing limit"),
    (msg.ListArgs, {"p": "/d", "n": True}, "'n' must be int"),
    (msg.ShardHeldArgs, {"p": "/f", "v": "1", "i": [1, -2]}, "page indices"),
    (msg.ShardHeldArgs, {"p": "/f", "v": "1", "i": ["1"]}, "'i' must be int"),
    (msg.QuotaTakeArgs, {"l": "a>b", "t": 1 << 41}, "token count"),
    (msg.DatasetsArgs, {"d": []}, "dataset names"),
    (msg.SetAttrsArgs, {"p": "/f", "v": "1", "a": []}, "'a' must be dict"),
    (msg.Empty, [], "arguments must be an object"),
])
def test_bad_arguments_are_invalid_argument_naming_op_and_key(cls: type[msg.Msg], args: object,
                                                             words: str) -> None:
    with pytest.raises(InvalidArgument, match="^some.op: .*" + words.replace("(", r"\(").replace(")", r"\)")):
        cls.from_wire(args, "some.op")


async def test_the_node_serves_exactly_the_schema(tmp_path: Path) -> None:
    box = NodeBox(tmp_path)
    node = box.open()
    try:
        served = handlers(node, lambda: {})
        assert served.keys() == msg.OPS.keys()
        with pytest.raises(InvalidArgument, match="list: argument 'n'"):
            await served["list"]({"p": "/", "n": "x"})
        report = msg.Report.from_wire(await served["report"]({}))
        assert report.page_size == box.page_size and set(report.tiers) == {"memory", "disk"}
        assert msg.Report.from_wire(report.to_wire()) == report
    finally:
        await box.close()
