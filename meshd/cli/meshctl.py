"""``meshctl``: operate a mesh node from the shell.

Mesh paths are absolute (``/datasets/a.bin``). In ``cp``, an argument that
starts with ``mesh:`` is a mesh path (``mesh:/datasets/a.bin``), anything else
is a local file, and ``-`` is stdin/stdout. Wherever a mesh path goes, an
under-store URI may stand for it (``meshctl cat hdfs://nn/warehouse/x``,
``meshctl ls s3://datasets/train``): it resolves through the mount table to
the same bytes. Errors print one line naming the problem (``meshctl:
NotFound: ...``) and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from meshd import __version__
from meshd.client.sdk import MeshClient
from meshd.errors import InvalidArgument, MeshError
from meshd.metadata.mounts import mesh_path_of
from topology.model import format_size as _size
from topology.model import plural


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise InvalidArgument(f"--option {p!r}: expected key=value")
        out[k] = v
    return out


def _mesh_path(arg: str) -> str | None:
    if arg.startswith("mesh://"):
        return "/" + arg[len("mesh://"):].lstrip("/")
    if arg.startswith("mesh:"):
        return "/" + arg[len("mesh:"):].lstrip("/")
    return None


def cmd_mount(c: MeshClient, a: argparse.Namespace) -> None:
    if a.mount_cmd == "add":
        m = c.mount_add(a.path, a.uri, _options(a.option), check=not a.no_check)
        print(f"mounted {m.uri} at {m.path}")
    elif a.mount_cmd == "rm":
        m = c.mount_rm(a.path)
        print(f"unmounted {m.path} ({m.uri})")
    else:
        mounts = c.mounts()
        if a.json:
            print(json.dumps([{"path": m.path, "uri": m.uri, "options": dict(m.options)} for m in mounts], indent=2))
            return
        if not mounts:
            print("no mounts (add one: meshctl mount add /PATH file:///DIR)")
            return
        width = max([len(m.path) for m in mounts] + [4])
        for m in mounts:
            opts = ",".join(f"{k}={v}" for k, v in sorted(m.options.items()))
            print(f"{m.path:<{width}}  {m.uri}" + (f"  ({opts})" if opts else ""))


def cmd_ls(c: MeshClient, a: argparse.Namespace) -> None:
    st = c.stat(a.path)
    entries = c.ls(a.path) if st.is_dir else [st]
    for e in entries:
        name = os.path.basename(e.path) if st.is_dir else e.path
        if e.is_dir:
            name += "/"
        if a.long:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime)) if e.mtime else "-"
            print(f"{'d' if e.is_dir else '-'} {e.size:>14} {when}  {name}")
        else:
            print(name)


def cmd_stat(c: MeshClient, a: argparse.Namespace) -> None:
    s = c.stat(a.path)
    print(json.dumps({"path": s.path, "type": "directory" if s.is_dir else "file", "size": s.size,
                      "mtime": s.mtime, "version": s.version}, indent=2))


def cmd_cat(c: MeshClient, a: argparse.Namespace) -> None:
    out = sys.stdout.buffer
    for chunk in c.iter_read(a.path, a.offset, a.length, nocache=a.nocache):
        out.write(chunk)
    out.flush()


def _read_local(path: str) -> Iterator[bytes]:
    f = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        while chunk := f.read(1 << 20):
            yield chunk
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def cmd_cp(c: MeshClient, a: argparse.Namespace) -> None:
    src, dst = _mesh_path(a.src), _mesh_path(a.dst)
    if src is None and dst is None:
        raise InvalidArgument("cp: one side must be a mesh path (mesh:/PATH)")
    if a.writeback is not None and dst is None:
        raise InvalidArgument("cp: --write-back/--write-through apply to copies into the mesh (cp ... mesh:/PATH)")
    if dst is not None:
        if src is None:
            if a.src != "-" and os.path.isdir(a.src):
                raise InvalidArgument(f"cp: {a.src} is a directory (copy files one at a time)")
            data: Any = _read_local(a.src) if a.src == "-" else open(a.src, "rb")
        else:
            data = c.iter_read(src)
        st = c.put(dst, data, writeback=a.writeback)
        print(f"{a.src} -> mesh:{st.path} ({_size(st.size)})", file=sys.stderr)
        return
    assert src is not None
    if a.dst == "-":
        cmd_cat(c, argparse.Namespace(path=src, offset=0, length=-1, nocache=False))
        return
    target = os.path.join(a.dst, os.path.basename(src)) if os.path.isdir(a.dst) else a.dst
    tmp = target + ".meshctl-tmp"
    try:
        with open(tmp, "wb") as f:
            n = c.readinto(src, f)
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.filename == tmp:  # name what the user gave, not our temporary file
            raise OSError(e.errno, e.strerror, a.dst) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    print(f"mesh:{src} -> {target} ({_size(n)})", file=sys.stderr)


def cmd_rm(c: MeshClient, a: argparse.Namespace) -> None:
    n = c.rm(a.path, recursive=a.recursive)
    print(f"removed {a.path} ({n} entr{'y' if n == 1 else 'ies'})")


def cmd_mkdir(c: MeshClient, a: argparse.Namespace) -> None:
    c.mkdir(a.path)
    print(f"created {a.path}")


def cmd_mv(c: MeshClient, a: argparse.Namespace) -> None:
    c.rename(a.src, a.dst)
    print(f"renamed {a.src} -> {a.dst}")


def cmd_load(c: MeshClient, a: argparse.Namespace) -> None:
    from tqdm import tqdm

    # the bar counts in the summary's units (MiB, not tqdm's M)
    bar = tqdm(total=0, desc=f"load {a.path}", disable=a.quiet or None, file=sys.stderr,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
    last = None
    try:
        for p in c.load(a.path):
            if bar.total != p.bytes_total:
                bar.total = p.bytes_total
            bar.update(p.bytes_done - bar.n)
            bar.set_postfix_str(_load_progress(p.bytes_done, p.bytes_total, p.files_done, p.files_total),
                                refresh=False)
            last = p
    finally:
        bar.close()
    if last is not None:
        print(f"loaded {plural(last.files_total, 'file')}, {_size(last.bytes_total)} "
              f"({_size(last.bytes_fetched)} fetched from the under-store, the rest already cached)")


def _load_progress(done: int, total: int, files_done: int, files_total: int) -> str:
    """The progress bar's figures, in the units of the summary that follows it."""
    return f"{_size(done)} / {_size(total)}, {files_done}/{plural(files_total, 'file')}"


def cmd_free(c: MeshClient, a: argparse.Namespace) -> None:
    print(f"freed {_size(c.free(a.path))} of cached pages under {a.path}")


def cmd_sync(c: MeshClient, a: argparse.Namespace) -> None:
    print(f"synced {c.sync(a.path)} entries under {a.path}")


def cmd_report(c: MeshClient, a: argparse.Namespace) -> None:
    r = c.report()
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(f"node {c.node_id} at {c.endpoint}  (page size {_size(r['page_size'])}, {plural(r['mounts'], 'mount')})")
    for tier, t in r["tiers"].items():
        pct = 100 * t["used"] / t["capacity"] if t["capacity"] else 0
        print(f"  {tier:<6} {_size(t['used']):>11} / {_size(t['capacity']):<11} ({pct:4.1f}%)  "
              f"{t['pages']} pages, {t['hits']} hits, {t['evicted_pages']} evicted")
    print(f"  hit ratio {100 * r['hit_ratio']:.1f}%  ({r['hits']} hits, {r['misses']} misses)")
    b = r["bytes_by_source"]
    print(f"  bytes served: cache {_size(r['bytes_from_cache'])} (memory {_size(b['memory'])}, "
          f"disk {_size(b['disk'])}), under-store {_size(r['bytes_from_understore'])} "
          f"(misses {_size(b['understore'])}, nocache {_size(b['nocache'])})")
    reqs = ", ".join(f"{k}={v}" for k, v in r["understore_requests"].items()) or "none"
    print(f"  under-store requests: {reqs}")
    if r["cache_write_errors"] or r["corrupt_pages"]:
        print(f"  cache disk write errors: {r['cache_write_errors']}, corrupt pages dropped: {r['corrupt_pages']}")
    cl = r.get("cluster")
    if cl:
        etcd = "etcd ok" if cl["etcd_ok"] else "etcd UNREACHABLE (serving with the last known members)"
        print(f"\ncluster {cl['name']}, region {cl['region']}: {plural(len(cl['members']), 'member')}, {etcd}")
        print(f"  metadata calls forwarded to owners: {r['metadata_forwarded']}, "
              f"served here for lack of an owner: {r['metadata_fallbacks']}; peer bytes {_size(b.get('peer', 0))}")
        print(f"  {'NODE':<14} {'STATE':<12} {'ZONE':<8} {'ADDRESS':<22} {'DISK USED':>10} {'CAPACITY':>10} "
              f"{'MEMORY USED':>11} {'HIT':>6}")
        for m in cl["members"]:
            print(_member_line(m))
        _print_links(r, cl)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_writeback(c: MeshClient, a: argparse.Namespace) -> None:
    if a.writeback_cmd == "flush":
        cmd_writeback_flush(c, a)
        return
    s = c.writeback_status()
    if a.json:
        print(json.dumps(s, indent=2))
        return
    if not s.get("enabled"):
        print(f"node {c.node_id}: write-back is not enabled")
        return
    print(f"node {s['node']} at {c.endpoint}: {plural(s['pending_files'], 'file')} "
          f"({_size(s['pending_bytes'])}) pending upload, oldest {_age(s['oldest_seconds'])}, "
          f"{s['uploading']} uploading now")
    print(f"  budget {_size(s['budget_used'])} / {_size(s['budget_bytes'])} used; writers waiting "
          f"{s['writers_waiting']} (waited {s['budget_wait_seconds']:.1f} s in all)")
    print(f"  uploaded {plural(s['uploaded_files'], 'file')} ({_size(s['uploaded_bytes'])}); "
          f"retries {s['retries']}; superseded before upload {s['superseded']}")
    print(f"  pending in the whole mesh: {plural(s['mesh_pending_files'], 'file')} "
          f"({_size(s['mesh_pending_bytes'])})")
    mounts = s.get("mounts") or {}
    if mounts:
        width = max([len(m) for m in mounts] + [5])
        print(f"  {'MOUNT':<{width}} {'FILES':>7} {'BYTES':>11} {'OLDEST':>10} {'UPLOAD RATE':>14}")
        for m, v in sorted(mounts.items()):
            rate = v.get("upload_rate")
            print(f"  {m:<{width}} {v['files']:>7} {_size(v['bytes']):>11} {_age(v['oldest_seconds']):>10} "
                  f"{(_size(rate) + '/s') if rate is not None else '-':>14}")
    files = s.get("files") or []
    if files:
        print(f"  oldest pending files (of {s['pending_files']}; --json lists up to 100):")
        for f in sorted(files, key=lambda f: -f["age_seconds"])[:10]:
            print(f"    {f['path']}  {_size(f['bytes'])}, {_age(f['age_seconds'])}, {f['state']}"
                  + (f", attempt {f['attempts']}" if f["attempts"] else ""))
    for f in s.get("failing") or []:
        print(f"  FAILING {f['path']}: {f['attempts']} attempts, last error: {f['error']}")


def cmd_writeback_flush(c: MeshClient, a: argparse.Namespace) -> None:
    if a.timeout is not None and not a.wait:
        raise InvalidArgument("writeback flush: --timeout needs --wait")
    if a.timeout is not None and not a.timeout > 0:
        raise InvalidArgument(f"writeback flush: --timeout must be a positive number of seconds, not {a.timeout}")
    n = c.writeback_flush(a.path, wait=a.wait, timeout=a.timeout)
    if a.wait:
        print(f"{plural(n, 'pending write')} under {a.path}: all in the under-store now")
    else:
        print(f"{plural(n, 'pending write')} under {a.path}: uploading first (--wait to wait for them)")


def _member_line(m: dict[str, Any]) -> str:
    """One member's row: the disk tier's use against the member's capacity (the disk
    tier's), the memory tier apart (its pages are mostly on disk as well)."""
    disk = m.get("disk_used", m.get("used"))  # a node before disk_used reports the sum in used
    used = _size(disk) if disk is not None else "-"
    memory = _size(m["memory_used"]) if "memory_used" in m else "-"
    hit = f"{100 * m['hit_ratio']:.0f}%" if "hit_ratio" in m else "-"
    return (f"  {m['node_id']:<14} {m['state']:<12} {m['zone'] or '-':<8} {m['grpc']:<22} {used:>10} "
            f"{_size(m['capacity']):>10} {memory:>11} {hit:>6}")


def _rate(bytes_per_s: float | None) -> str:
    if bytes_per_s is None:
        return "unlimited"
    return f"{bytes_per_s * 8 / 1e6:.1f} Mbit/s"


def _print_links(r: dict[str, Any], cl: dict[str, Any]) -> None:
    """Each link of the region: quota, the region's current rate and bytes moved (summed
    over the members that answered), and this node's share and waiting time."""
    fed = r.get("federation")
    if not fed:
        return
    totals: dict[str, dict[str, float]] = {}
    for m in cl["members"]:
        for q in m.get("links", []):
            t = totals.setdefault(q["link"], {"rate": 0.0, "bytes": 0.0})
            t["rate"] += q["rate"]
            t["bytes"] += q["bytes"]
    print(f"\nlinks of region {fed['region']} (topology {fed['topology'] or 'none'}; "
          f"peer regions: {', '.join(f'{k} ({v} nodes)' for k, v in fed['regions'].items()) or 'none'})")
    if not fed["links"]:
        print("  none")
        return
    print(f"  {'LINK':<24} {'QUOTA':>14} {'REGION RATE':>14} {'REGION BYTES':>13} {'NODE SHARE':>14} "
          f"{'THROTTLED':>10}")
    for q in fed["links"]:
        t = totals.get(q["link"], {"rate": q["rate"], "bytes": q["bytes"]})
        print(f"  {q['src'] + ' -> ' + q['dst']:<24} {_rate(q['quota']):>14} {_rate(t['rate']):>14} "
              f"{_size(t['bytes']):>13} {_rate(q['share']):>14} {q['throttled_seconds']:>9.1f}s")
    routed = ", ".join(f"{k}: {v}" for k, v in fed["routed_pages"].items()) or "none"
    print(f"  pages fetched into the region by source (this node): {routed}; "
          f"fallbacks {fed['route_fallbacks']}")


def _resolve_uris(c: MeshClient, a: argparse.Namespace) -> None:
    """Let an under-store URI stand for a mesh path (``meshctl cat hdfs://nn/warehouse/x``):
    it resolves through the mount table to the mount's mesh path."""
    names = [attr for attr in ("path", "src", "dst")
             if isinstance(getattr(a, attr, None), str) and "://" in getattr(a, attr)
             and not getattr(a, attr).startswith("mesh://")]
    if not names or a.command == "mount":
        return
    mounts = [(m.path, m.uri) for m in c.mounts()]
    for attr in names:
        p = mesh_path_of(mounts, getattr(a, attr))
        setattr(a, attr, "mesh:" + p if a.command == "cp" else p)


def _command(sub: argparse._SubParsersAction, name: str, text: str, **kw: Any) -> argparse.ArgumentParser:
    """A sub-command whose ``-h`` starts with the line ``meshctl -h`` lists it with."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=text, description=kw.pop("description", text), **kw)
    return p


PATH_HELP = "mesh path (/datasets/a.bin), or an under-store URI a mount holds (s3://bucket/key)"


def _add_mount_command(sub: argparse._SubParsersAction) -> None:
    """``meshctl mount add|rm|ls``."""
    m = _command(sub, "mount", "manage the mount table")
    msub = m.add_subparsers(dest="mount_cmd", required=True)
    ma = _command(msub, "add", "mount an under-store at a mesh path",
                  description="Mount an under-store at a mesh path; options as -o KEY=VALUE "
                              "(every mount option: CONFIGURATION.md).")
    ma.add_argument("path", help="mesh path to mount at (/datasets)")
    ma.add_argument("uri", help="file:///dir, s3://bucket/prefix or hdfs://namenode/path")
    ma.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                    help="a mount option (repeatable): sync_interval=300, read_only=true, "
                         "endpoint=URL, access_key=..., secret_key=...")
    ma.add_argument("--no-check", action="store_true", help="do not contact the under-store now")
    mr = _command(msub, "rm", "remove a mount (the under-store's data stays)")
    mr.add_argument("path", help="the mount's mesh path")
    ml = _command(msub, "ls", "list mounts (secrets shown as ***)")
    ml.add_argument("--json", action="store_true", help="print them as JSON")
    m.set_defaults(fn=cmd_mount)


def _add_file_commands(sub: argparse._SubParsersAction) -> None:
    """The namespace commands: ``ls``, ``stat``, ``cat``, ``cp``, ``rm``, ``mkdir``, ``mv``."""
    s = _command(sub, "ls", "list a directory")
    s.add_argument("path", nargs="?", default="/", help=PATH_HELP + "; default /")
    s.add_argument("-l", "--long", action="store_true",
                   help="long listing: type (d or -), size in bytes, modification time, name")
    s.set_defaults(fn=cmd_ls)
    s = _command(sub, "stat", "file status as JSON (type, size, mtime, version)")
    s.add_argument("path", help=PATH_HELP)
    s.set_defaults(fn=cmd_stat)
    s = _command(sub, "cat", "write a file (or a range of it) to stdout")
    s.add_argument("path", help=PATH_HELP)
    s.add_argument("--offset", type=int, default=0, help="first byte to write (default 0)")
    s.add_argument("--length", type=int, default=-1, help="bytes to write (default: to the end of the file)")
    s.add_argument("--nocache", action="store_true", help="read from the under-store without caching")
    s.set_defaults(fn=cmd_cat)
    s = _command(sub, "cp", "copy in or out: meshctl cp LOCAL mesh:/PATH | cp mesh:/PATH LOCAL",
                 description="Copy one file into the mesh (cp LOCAL mesh:/PATH) or out of it (cp mesh:/PATH "
                             "LOCAL; LOCAL may be a directory). - is stdin or stdout.")
    s.add_argument("src", help="a local file, -, or mesh:/PATH")
    s.add_argument("dst", help="mesh:/PATH, a local file or directory, or -")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--write-back", dest="writeback", action="store_const", const=True, default=None,
                      help="return once the bytes are durable on the node (uploaded to the under-store "
                           "in the background)")
    mode.add_argument("--write-through", dest="writeback", action="store_const", const=False,
                      help="return once the bytes are in the under-store (default: the mount's write_mode)")
    s.set_defaults(fn=cmd_cp)
    s = _command(sub, "rm", "delete a file or directory (in the under-store too)")
    s.add_argument("path", help=PATH_HELP)
    s.add_argument("-r", "--recursive", action="store_true", help="delete a directory and everything in it")
    s.set_defaults(fn=cmd_rm)
    s = _command(sub, "mkdir", "create a directory")
    s.add_argument("path", help=PATH_HELP)
    s.set_defaults(fn=cmd_mkdir)
    s = _command(sub, "mv", "rename (where the under-store supports it)")
    s.add_argument("src", help=PATH_HELP)
    s.add_argument("dst", help="the new mesh path, in the same mount")
    s.set_defaults(fn=cmd_mv)


def _add_cache_commands(sub: argparse._SubParsersAction) -> None:
    """The cache commands: ``load``, ``free``, ``sync``, ``report``."""
    s = _command(sub, "load", "warm the cache with everything under PATH")
    s.add_argument("path", help=PATH_HELP)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_load)
    s = _command(sub, "free", "drop cached pages under PATH")
    s.add_argument("path", help=PATH_HELP)
    s.set_defaults(fn=cmd_free)
    s = _command(sub, "sync", "refresh cached metadata under PATH from the under-store")
    s.add_argument("path", help=PATH_HELP)
    s.set_defaults(fn=cmd_sync)
    s = _command(sub, "report", "cache capacity, use, hit ratio, bytes by source")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(fn=cmd_report)


def _add_writeback_command(sub: argparse._SubParsersAction) -> None:
    """``meshctl writeback status|flush``."""
    w = _command(sub, "writeback", "write-back writes not yet in the under-store: status, flush")
    wsub = w.add_subparsers(dest="writeback_cmd", required=True)
    s = _command(wsub, "status", "this node's pending files and bytes, oldest age, upload rate per mount, "
                                 "retries, failing uploads")
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s = _command(wsub, "flush", "upload the pending writes under PATH first",
                 description="Upload the write-back writes pending at or below PATH before any other; "
                             "with --wait, return once they are all in the under-store (exit 1 if "
                             "--timeout passes first).")
    s.add_argument("path", help=PATH_HELP)
    s.add_argument("--wait", action="store_true", help="wait until every pending write under PATH is uploaded")
    s.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up after S seconds (exit 1)")
    w.set_defaults(fn=cmd_writeback)


def _add_topology_command(sub: argparse._SubParsersAction) -> None:
    """``meshctl topology``: topology.cli's validate and show, plus ``apply`` (to etcd)."""
    from topology.cli import register, subcommands

    leaves = subcommands(register(sub))
    s = leaves.add_parser("apply", help="validate a topology file and store it in etcd for every node",
                          description="Validate FILE and store it at /mesh/<cluster>/topology; "
                                      "running nodes apply it within seconds, without a restart.")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--etcd", required=True, help="etcd endpoint(s), comma-separated host:port or URLs")
    s.add_argument("--cluster", required=True, help="the mesh's cluster name (meshd run --cluster)")
    s.set_defaults(fn_topology=cmd_topology_apply)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshctl", description="Operate a data mesh node.")
    p.add_argument("--version", action="version", version=f"meshctl {__version__}")
    p.add_argument("--endpoint", help="node gRPC host:port or data directory "
                   "(default: $MESH_ENDPOINT, then the default data directory)")
    p.add_argument("--token-file", metavar="FILE",
                   help="the credential to present: a token file or a credentials.json (default: "
                   "$MESH_TOKEN, $MESH_TOKEN_FILE, then credentials.json beside the node's endpoints.json)")
    from meshd.tls import add_client_flags

    add_client_flags(p)
    sub = p.add_subparsers(dest="command", required=True)
    t = _command(sub, "token", "make a new access token: the token for its holder, the hash for the access file")
    t.add_argument("what", choices=["new"], help="new: print a new random token and its sha256 hash")
    _add_mount_command(sub)
    _add_file_commands(sub)
    _add_cache_commands(sub)
    _add_writeback_command(sub)

    from meshd.cli import place as cli_place

    cli_place.register(sub)
    _add_topology_command(sub)
    c = _command(sub, "completion", "print a shell completion script: source <(meshctl completion bash)",
                 description="Print a bash completion script for meshctl (zsh: run `autoload bashcompinit "
                             "&& bashcompinit` first): source <(meshctl completion bash), or save it in "
                             "/etc/bash_completion.d/meshctl.")
    c.add_argument("shell", choices=["bash"], help="the shell (bash; zsh through bashcompinit)")
    return p


def _node_topology(a: argparse.Namespace) -> int:
    """For ``topology show`` without FILE: the topology the running node applies, as
    ``a.file``/``a.text``; or an exit code after saying why there is none."""
    try:
        with MeshClient(a.endpoint) as c:
            text, where = c.place_state([]).get("topology"), c.endpoint
    except MeshError as e:
        print(f"meshctl topology show: give a FILE, or run it where a node runs ({e.kind}: {e})", file=sys.stderr)
        return 1
    if not text:
        print(f"meshctl topology show: the node at {where} has no topology (one region, no links); "
              "give a FILE to draw one", file=sys.stderr)
        return 1
    a.file, a.text = f"topology of the node at {where}", text
    return 0


def cmd_topology_apply(a: argparse.Namespace) -> int:
    """Validate a topology file and store it in etcd, where every node picks it up."""
    import asyncio

    from meshd.cluster.membership import Etcd
    from meshd.region.federation import apply_topology
    from topology.model import TopologyError, parse, read

    try:
        text = read(a.file)
        topo = parse(text, a.file)
    except TopologyError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        print(f"meshctl: topology not applied: {len(e.problems)} problem(s)", file=sys.stderr)
        return 1

    async def put() -> None:
        etcd = Etcd(tuple(e for e in a.etcd.split(",") if e))
        try:
            await apply_topology(etcd, a.cluster, text)
        finally:
            await etcd.close()

    try:
        asyncio.run(put())
    except MeshError as e:
        print(f"meshctl: {e.kind}: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        print(f"meshctl: cannot store the topology in etcd at {a.etcd}: {type(e).__name__} {e}",
              file=sys.stderr)
        return 1
    print(f"topology {topo.name or a.file} applied to cluster {a.cluster} ({plural(len(topo.regions), 'region')}, "
          f"{plural(len(topo.links), 'link')}): nodes pick it up within seconds")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from meshd.tls import apply_client_flags

    apply_client_flags(args)
    if args.command == "completion":
        from meshd.cli.completion import bash_script

        sys.stdout.write(bash_script(_parser(), "meshctl"))
        return 0
    if args.token_file:  # like $MESH_TOKEN_FILE, for this process and the clients it makes
        os.environ["MESH_TOKEN_FILE"] = args.token_file
    if args.command == "token":
        from meshd.auth import token_hash
        from meshd.auth.credentials import new_token

        token = new_token()
        print(f"token: {token}\nhash:  {token_hash(token)}\n"
              "Give the token to its holder (a 0600 file, $MESH_TOKEN_FILE); list the hash in the access "
              "file, under operators or a tenant's tokens.")
        return 0
    if args.command == "topology":
        from topology.cli import run

        if args.topology_cmd == "show" and args.file is None:
            code = _node_topology(args)
            if code:
                return code
        return run(args)
    if args.command in ("place", "spread"):
        from meshd.cli.place import run as run_place

        return run_place(args, args.endpoint)
    try:
        with MeshClient(args.endpoint) as client:
            _resolve_uris(client, args)
            args.fn(client, args)
    except MeshError as e:
        print(f"meshctl: {e.kind}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except OSError as e:
        print(f"meshctl: {e.strerror or e}: {getattr(e, 'filename', '') or ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
