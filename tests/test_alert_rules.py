"""The Prometheus alert rules (deploy/prometheus/alerts.yml): valid, firing when they
should (promtool's own rule unit tests, alerts_test.yml), and naming only metrics a
node really exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.nodeutil import NodeBox

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    check = subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True,
                            text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


async def test_rules_name_metrics_a_node_exports(tmp_path: Path) -> None:
    box = NodeBox(tmp_path / "node")
    node = box.open()
    (tmp_path / "store").mkdir()
    await node.mounts.add("/ckpt", f"file://{tmp_path / 'store'}", {"write_mode": "back"})

    async def body():  # type: ignore[no-untyped-def]
        yield b"step 1"

    await node.write("/ckpt/step-1", body())  # per-mount series exist once a mount has written
    try:
        exported = {line.split("{")[0].split(" ")[0] for line in box.metrics.render().decode().splitlines()
                    if line and not line.startswith("#")}
    finally:
        await box.close()
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    used = {name for g in rules["groups"] for r in g["rules"]
            for name in re.findall(r"\b(mesh_[a-z_]+)\b", r["expr"])}
    assert used, "no mesh_ metric in the rules"
    assert used <= exported, f"rules name metrics no node exports: {sorted(used - exported)}"
