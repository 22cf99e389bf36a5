"""``python -m dpx``: list plugins, generate data, inspect sessions.

The parser imports nothing heavy; each command imports what it needs when it
runs, so ``python -m dpx plugins`` and ``--help`` stay fast whatever plugins
are installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from dpx.plugins import REGISTRIES, PluginError, get_plugins


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except (PluginError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"dpx {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpx {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dpx",
        description="Interface numerical simulations with deep learning.",
        epilog="Run `python -m dpx COMMAND --help` for the options of a command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plugins = commands.add_parser(
        "plugins",
        help="list installed plugins and what they provide",
        description="List the core's built-in providers and every installed plugin, "
        "with what each provides under each hook and whether it loaded.",
    )
    plugins.add_argument("--json", action="store_true", help="print machine-readable JSON")
    plugins.add_argument("-v", "--verbose", action="store_true", help="show import paths and summaries")
    plugins.set_defaults(run=_plugins)
    return parser


def _plugins(args: argparse.Namespace) -> int:
    plugins = get_plugins()
    rows = list(plugins.plugins.values())
    if args.json:
        print(json.dumps([info.as_dict() for info in rows], indent=2))
        return 0
    table = []
    for info in rows:
        dist = f"{info.distribution} {info.version}" if info.distribution and info.version else info.distribution or "-"
        status = info.status if info.status != "error" else f"error: {info.error}"
        provides = [
            f"{registry}: {', '.join(sorted(offers))}" for registry, offers in info.provides.items() if offers
        ] or ["-"]
        table.append((info.name, dist, status, provides))
        if args.verbose:
            for registry in REGISTRIES:
                for name, component in sorted(info.provides.get(registry, {}).items()):
                    summary = f"  {component.summary}" if component.summary else ""
                    table.append(("", "", "", [f"  {name} -> {component.path}{summary}"]))
    _print_table(("PLUGIN", "DISTRIBUTION", "STATUS", "PROVIDES"), table)
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple[str, str, str, list[str]]]) -> None:
    """Plain text on purpose: importing a rich-text library would cost more than listing plugins."""
    widths = [max([len(header[i]), *(len(row[i]) for row in rows)]) for i in range(3)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[3]
    print(line)
    for name, dist, status, provides in rows:
        first, *rest = provides
        print("  ".join(v.ljust(w) for v, w in zip((name, dist, status), widths)) + "  " + first)
        indent = " " * (sum(widths) + 6)
        for item in rest:
            print(indent + item)
