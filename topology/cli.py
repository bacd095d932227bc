"""``meshctl topology``: check and draw a topology file.

    meshctl topology validate FILE            every problem on stderr (exit 1), or "FILE: OK (...)"
    meshctl topology show [FILE] [--image OUT]  text drawing on stdout; OUT.png / OUT.svg drawn too
                                                (no FILE: meshctl gives the node's topology as ``args.text``)

:func:`register` adds the sub-command to meshctl's parser; each leaf sets
``fn_topology`` (``args -> exit code``) and :func:`run` calls it. More leaves
(``apply``) are added through :func:`subcommands`. Bad input never prints a
traceback: problems are printed one per line, as ``file:line:col: field: message``.
"""

from __future__ import annotations

import argparse
import sys

from .model import Topology, TopologyError, parse, plural, read
from .show import IMAGE_SUFFIXES, export_image, render_text

__all__ = ["register", "run", "subcommands"]


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``topology`` to ``sub`` (meshctl's sub-commands); returns the ``topology`` parser."""
    p = sub.add_parser("topology", help="check and draw the deployment's topology file",
                       description="Check and draw a topology file (format: docs/TOPOLOGY.md).")
    leaves = p.add_subparsers(dest="topology_cmd", required=True, metavar="COMMAND")

    v = leaves.add_parser("validate", help="report every problem of a topology file",
                          description="Print every problem (file:line:col: field: message) to stderr "
                                      "and exit 1, or print a one-line summary and exit 0.")
    v.add_argument("file", metavar="FILE")
    v.set_defaults(fn_topology=cmd_validate)

    s = leaves.add_parser("show", help="draw a topology file as text (and as an image)",
                          description="Draw the regions, links and stores as text on stdout. Without "
                                      "FILE, the topology the running node applies (meshctl --endpoint).")
    s.add_argument("file", metavar="FILE", nargs="?")
    s.add_argument("--image", metavar="OUT",
                   help=f"also draw it to OUT ({' or '.join(IMAGE_SUFFIXES)}; needs matplotlib: "
                        "pip install 'datamesh[viz]')")
    s.set_defaults(fn_topology=cmd_show)
    return p


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The ``topology`` parser's sub-commands, to add more (``apply``) next to validate and show."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError(f"{parser.prog} has no sub-commands")


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``topology`` sub-command; returns the exit code."""
    fn = getattr(args, "fn_topology", None)
    if fn is None:
        print("meshctl topology: expected a command (validate, show)", file=sys.stderr)
        return 2
    code: int = fn(args)
    return code


def _load(path: str, text: str | None = None) -> Topology | None:
    """The topology (of file ``path``, or ``text`` named ``path``), or None after printing
    why not (one problem per line on stderr)."""
    try:
        text = read(path) if text is None else text
    except TopologyError as e:
        for p in e.problems:
            print(p.message, file=sys.stderr)
        return None
    try:
        return parse(text, path)
    except TopologyError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    topo = _load(args.file)
    if topo is None:
        return 1
    print(f"{args.file}: OK ({plural(len(topo.regions), 'region')}, {plural(len(topo.links), 'link')}, "
          f"{plural(len(topo.stores), 'store')})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if args.image and not args.image.lower().endswith(IMAGE_SUFFIXES):
        print(f"meshctl topology show: --image {args.image}: the file name must end in "
              f"{' or '.join(IMAGE_SUFFIXES)}", file=sys.stderr)
        return 2
    if args.file is None and getattr(args, "text", None) is None:
        print("meshctl topology show: give a FILE (no running node told its topology)", file=sys.stderr)
        return 2
    topo = _load(args.file, getattr(args, "text", None))
    if topo is None:
        return 1
    sys.stdout.write(render_text(topo))
    if args.image:
        try:
            written = export_image(topo, args.image)
        except (ValueError, RuntimeError) as e:
            print(f"meshctl topology show: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"meshctl topology show: cannot write {args.image}: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"image written to {written}", file=sys.stderr)
    return 0
