"""Helpers the benchmarks share (bench/ scripts import it: their own directory is on sys.path)."""

from __future__ import annotations

import re
from pathlib import Path

LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")


def log_findings(work: Path, pattern: str) -> list[str]:
    """Lines at WARNING or above, and tracebacks' last lines, from the node logs ``pattern``."""
    out = []
    for log in sorted(work.glob(pattern)):
        for line in log.read_text(errors="replace").splitlines():
            if LOG_LINE.match(line) or line.startswith("Traceback") or re.match(r"^\w*(Error|Exception)\b", line):
                out.append(f"{log.name}: {line[:240]}")
    return out


def print_findings(findings: list[str], limit: int) -> None:
    """The node logs' findings, at most ``limit`` lines, or that there were none."""
    if findings:
        print(f"node logs: {len(findings)} line(s) at WARNING or above (or from tracebacks):")
        for line in findings[:limit]:
            print(f"  {line}")
    else:
        print("node logs: nothing at WARNING or above")
