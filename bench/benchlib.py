"""Helpers the benchmarks share (bench/ scripts import it: their own directory is on sys.path)."""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Callable
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


def verify_args(work: Path, verify: bool, window: float | None = None) -> list[str]:
    """``meshd`` flags for a node that checks disk pages on every serve (the default; a check
    covering the unchanged file for ``window`` s) or not (``cache.verify: false``: on first
    use and after a change of the file only)."""
    name = f"verify-{'on' if verify else 'off'}-{window}.yaml"
    text = f"cache:\n  verify: {'true' if verify else 'false'}\n"
    if window is not None:
        text += f"  verify_window: {window}\n"
    (work / name).write_text(text)
    return ["--config", str(work / name)]


VERIFY_NODES = {"on": (True, None), "strict": (True, 0.0), "off": (False, None)}
VERIFY_LEGEND = ("on = the default (CRC-32C on every serve; a check covers the unchanged file for "
                 "cache.verify_window = 10 s); strict = verify_window 0 (every serve hashes); "
                 "off = cache.verify: false (first use and changes only)")


BENCH_TOKEN = "mesh_bench-tenant-token-0123456789"
BENCH_KEY, BENCH_SECRET = "AKBENCHTENANT", "bench-tenant-secret-0123456789"
SECURITY_LEGEND = ("on = what a tenant gets by default: its token (HTTP, wire, local socket) or S3 key "
                   "(SigV4, presigned) checked and its path rule applied on every request, pages verified "
                   "(cache.verify, window 10 s); off = auth.enforce: false (everyone an operator, no "
                   "credential sent) and cache.verify: false")


def security_args(work: Path, on: bool, verify: bool | None = None) -> list[str]:
    """``meshd`` flags for a node with authentication (a tenant ``bench`` reading
    everything: BENCH_TOKEN / BENCH_KEY) and page verification on, or both off;
    ``verify``: page verification set apart from authentication."""
    from meshd.auth import token_hash

    verify = on if verify is None else verify
    name = f"security-{'on' if on else 'off'}-verify-{'on' if verify else 'off'}.yaml"
    (work / name).write_text(f"auth: {{enforce: {'true' if on else 'false'}}}\n"
                             f"cache: {{verify: {'true' if verify else 'false'}}}\n")
    if not on:
        return ["--config", str(work / name)]
    (work / "access.yaml").write_text(
        f"tenants:\n  bench:\n    tokens: ['{token_hash(BENCH_TOKEN)}']\n"
        f"    s3_keys: {{{BENCH_KEY}: {BENCH_SECRET}}}\n    rules: [{{path: /, allow: read}}]\n")
    return ["--config", str(work / name), "--access", str(work / "access.yaml")]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def verify_cost(cases: list[tuple[str, str, dict[str, Callable[[], float]]]], pids: dict[str, int],
                repeat: int = 7, title: str = "page verification", legend: str = VERIFY_LEGEND) -> None:
    """Each case ``(name, unit, {variant: run})``, the variants of VERIFY_NODES run alternately
    ``repeat`` times (so drift hits all alike); a run returns how many units it moved. Prints
    the median rates side by side and each over the rate with verification off, then the
    node's CPU time per unit (``pids``: each variant's node), which the machine's load
    disturbs far less than a rate."""
    print(f"{title}, median of {repeat}, variants alternating, order rotated ({legend}):")
    for name, unit, runs in cases:
        rates: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        order = list(runs)
        for r in range(repeat):
            for which in order[r % len(order):] + order[:r % len(order)]:  # rotated: no variant always first
                fn = runs[which]
                c0, t = cpu_seconds(pids[which]), time.perf_counter()
                n = fn()
                rates[which].append(n / (time.perf_counter() - t))
                cpu[which].append((cpu_seconds(pids[which]) - c0) / n)
        med = {k: statistics.median(v) for k, v in rates.items()}
        mcpu = {k: statistics.median(v) for k, v in cpu.items()}
        cols = "   ".join(f"{k} {v:9.1f}" for k, v in med.items())
        ratios = "  ".join(f"{k}/off {v / med['off']:5.2f}" for k, v in med.items() if k != "off")
        print(f"  {name:<36} {cols} {unit}   {ratios}", flush=True)
        cols = "   ".join(f"{k} {1e6 * v:9.1f}" for k, v in mcpu.items())
        ratios = "  ".join(f"{k}/off {v / mcpu['off']:5.2f}" for k, v in mcpu.items() if k != "off" and mcpu["off"])
        print(f"  {'  node CPU':<36} {cols} us/{unit.split('/')[0]}   {ratios}", flush=True)
