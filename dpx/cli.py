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
    args = _parse(parser, argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except (PluginError, ValueError, OSError, LookupError, RuntimeError) as exc:
        print(f"dpx {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"dpx {args.command}: error: out of memory; lower pipeline.batch_size or the size of the samples",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpx {args.command}: interrupted", file=sys.stderr)
        return 130


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``, taking KEY=VALUE overrides wherever they stand, also after options.

    (``parse_intermixed_args`` does not support subcommands.)
    """
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(arg.startswith("-") for arg in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


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

    jobs = {
        "generate": ("generate a dataset", "DataGeneration", "[environment] (EnvironmentConfig), [database] "
                     "(DatabaseConfig) and [pipeline] (session_dir, session_name, new_session, batch_nb, batch_size)"),
        "train": ("train a network", "Training", "[network] (NetworkConfig), [database] (DatabaseConfig), an optional "
                  "[environment] (EnvironmentConfig) producing the data, and [pipeline] (session_dir, session_name, "
                  "new_session, epoch_nb, batch_nb, batch_size, stats)"),
        "predict": ("run a trained network in its environment", "Prediction", "[network] (NetworkConfig), "
                    "[environment] (EnvironmentConfig) and [pipeline] (session_dir, session_name, step_nb, record)"),
    }
    for name, (summary, pipeline, tables) in jobs.items():
        job = commands.add_parser(
            name,
            help=f"{summary} from a TOML config",
            description=f"Run the {pipeline} pipeline described by a TOML file with the tables {tables}. "
            "Everything is checked before a session folder is created. With pipeline.new_session=true a re-run "
            "writes to a new session (NAME_1, NAME_2...); with pipeline.new_session=false it resumes the session "
            "NAME, refusing other environment settings or seed than those recorded unless --allow-changes.",
            epilog=f"Example: python -m dpx {name} examples/spring_{name}.toml pipeline.batch_size=64",
        )
        _add_job_arguments(job)
        if name != "predict":
            job.add_argument("--allow-changes", action="store_true",
                             help="let a resumed session take samples made with other env_kwargs or another seed")
        job.set_defaults(run=_job)

    learn = commands.add_parser(
        "learn",
        help="active learning: simulate where an ensemble of networks disagrees, from a TOML config",
        description="Run the ActiveLearning pipeline described by a TOML file with the tables [environment] "
        "(EnvironmentConfig; the environment must declare parameters), [network] (NetworkConfig of each ensemble "
        "member; its input is the samples' parameters), [database] (DatabaseConfig) and [pipeline] (session_dir, "
        "session_name, new_session, initial_sampler, initial_samples, batch_size, max_simulations, max_seconds, "
        "ensemble, scoring (ensemble or mc_dropout), mc_samples, pool_size, pool_sampler, diversity, "
        "validation_samples, epoch_nb, train_batch_size, warm_start, seed). Prints, round by round, the "
        "simulations spent and the validation error; every round is recorded in session.json, and "
        "pipeline.new_session=false resumes after the last one.",
        epilog="Example: python -m dpx learn examples/resonance_learn.toml pipeline.max_simulations=64",
    )
    _add_job_arguments(learn)
    learn.set_defaults(run=_job)

    worker = commands.add_parser(
        "worker",
        help="run an environment for a job started elsewhere",
        description="Join a running job as a worker: connect to its multiprocess runner (started with "
        "runner_kwargs spawn=false), authenticate with the shared key from DPX_AUTHKEY (the hex key the job "
        "prints), and run the environment it sends until the job ends.",
    )
    worker.add_argument("--connect", required=True, metavar="HOST:PORT", help="address of the job's runner")
    worker.set_defaults(run=_worker)

    info = commands.add_parser(
        "info",
        help="describe a session: fields, counts, normalisation, networks",
        description="Describe a session folder (or a dataset folder): its runs, the fields, shapes, "
        "dtypes and sample counts of each mode, normalisation statistics and saved networks.",
        epilog="Example: python -m dpx info sessions/my_deepphysx_data --storage deepphysx",
    )
    info.add_argument("session", help="a session folder, e.g. sessions/spring")
    info.add_argument("--storage", default="memmap",
                      help="the storage backend of its dataset: memmap (dpx's, the default), deepphysx for a "
                      "DeepPhysX session or dataset (see `python -m dpx plugins`: storage_backends)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(run=_info)

    repair = commands.add_parser(
        "repair",
        help="restore a dataset whose index is unreadable",
        description="Restore the index of a session's dataset (dataset.json) from the previous one "
        "(dataset.json.prev) when it is unreadable, dropping the samples committed after it. "
        "An intact dataset is left as it is.",
    )
    repair.add_argument("session", help="a session folder or its dataset folder, e.g. sessions/spring")
    repair.set_defaults(run=_repair)

    export = commands.add_parser(
        "export",
        help="export a trained network to a file that runs without dpx (ONNX, torch.export)",
        description="Write a session's trained network in a new folder as a file that maps raw inputs, as the "
        "environment sets them, to de-normalised outputs (normalisation folded in), carrying its field names, "
        "shapes, dtypes, versions and source session. Formats come from plugins (dpx-torch: onnx, pt2).",
        epilog="Example: python -m dpx export sessions/spring_fc --format onnx (see docs/export.md)",
    )
    export.add_argument("session", help="a session holding a trained network, e.g. sessions/spring_fc")
    export.add_argument("--format", required=True, help="onnx or pt2 (see `python -m dpx plugins`: exporters)")
    export.add_argument("--which", default="last", metavar="N|last|best",
                        help="the saved network: an epoch number, the last (default) or the best one")
    export.add_argument("--out", help="a new folder for the files (default: SESSION/export/NETWORK-FORMAT)")
    export.add_argument("--no-aoti", action="store_true",
                        help="pt2: skip the AOTInductor package (it needs a C++ compiler and tens of seconds)")
    export.set_defaults(run=_export)

    importer = commands.add_parser(
        "import",
        help="convert a session made by another tool (DeepPhysX) into a dpx session",
        description="Convert a session made by another tool into a new dpx session, with an importer from a plugin "
        "(hook dpx_importers); what cannot be converted is listed, and no code from the files is run. "
        "deepphysx (the dpx-deepphysx plugin) converts a DeepPhysX 22.12 session or dataset: the dataset (checked "
        "sample by sample), the facts of info.txt and dataset.json (into session.json), FC networks (so "
        "`dpx predict` runs them) and training curves. To train on a DeepPhysX dataset without converting it, "
        "use DatabaseConfig(storage=\"deepphysx\").",
        epilog="Example: python -m dpx import deepphysx sessions/my_training --dataset sessions/my_data --out sessions/mine",
    )
    importer.add_argument("format", help="the tool that made the session, e.g. deepphysx "
                          "(see `python -m dpx plugins`: importers)")
    importer.add_argument("path", help="its session folder (or dataset folder)")
    importer.add_argument("--out", help="the dpx session to create (default: sessions/NAME; never overwritten)")
    importer.add_argument("--dataset", help="the dataset a training session's `dataset` link points at: "
                          "dpx follows that link only to a dataset you name")
    importer.set_defaults(run=_import)
    return parser


def _export(args: argparse.Namespace) -> int:
    from dpx.core.export import export

    folder = export(args.session, args.format, args.which, args.out,
                    exporter_kwargs={"aoti": False} if args.no_aoti else None)
    for path in sorted(folder.iterdir()):
        print(path)
    return 0


def _import(args: argparse.Namespace) -> int:
    importer = get_plugins().load("importers", args.format)()
    print(importer.import_session(args.path, out=args.out, dataset=args.dataset))
    return 0


def _repair(args: argparse.Namespace) -> int:
    from dpx.core.database import dataset_path
    from dpx.core.storage import repair_dataset

    print(repair_dataset(dataset_path(args.session)))
    return 0


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="TOML file describing the job")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config values, e.g. pipeline.batch_nb=10")
    parser.add_argument("--seed", type=int, help="root seed of the per-sample seeds")
    parser.add_argument("--workers", type=int, help="number of environments run in parallel")
    parser.add_argument("--runner", help="runner name (see `python -m dpx plugins`)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every check a real run makes before its first step, then stop; writes nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")


def _job_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    for option in ("seed", "workers", "runner"):
        value = getattr(args, option)
        if value is not None:
            overrides.append(f"environment.{option}={value!r}" if isinstance(value, str) else f"environment.{option}={value}")
    if getattr(args, "allow_changes", False):
        overrides.append("pipeline.allow_changes=true")
    return overrides


def _job(args: argparse.Namespace) -> int:
    from dpx.core.jobs import build_job, prepare_job

    pipeline = build_job(args.command, args.config, _job_overrides(args), progress=False if args.no_progress else None)
    setup = prepare_job(pipeline, args.config)
    if args.dry_run:
        print(setup)
        return 0
    for line in setup.reads:
        print(f"dpx {args.command}: reading {line}", file=sys.stderr)
    print(pipeline.execute(setup))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from dpx.core.worker import authkey_from_environment, run

    host, sep, port = args.connect.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--connect {args.connect!r} must look like HOST:PORT")
    run(host or "127.0.0.1", int(port), authkey_from_environment())
    return 0


def _info(args: argparse.Namespace) -> int:
    from dpx.core.jobs import describe_session

    description = describe_session(args.session, args.storage)
    if args.json:
        print(json.dumps(description, indent=2))
        return 0
    print(f"session {description['path']}" + (f" (storage {args.storage})" if args.storage != "memmap" else ""))
    for run in description["runs"]:
        print(f"  run: {run}")
    for mode, entry in description["dataset"].items():
        print(f"  {mode}: {entry['count']} samples")
        for name, field in entry["fields"].items():
            line = f"    {name:16s} {field['dtype']:8s} {tuple(field['shape'])}"
            if "mean" in field:
                line += f"  mean {_short(field['mean'])}  std {_short(field['std'])}"
            print(line)
    if not description["dataset"]:
        print("  dataset: empty")
    if description["parameter_space"]:
        print("  sample parameters (field 'parameters', in this order):")
        for p in description["parameter_space"]:
            kind = " integer" if p.get("integer") else ""
            drawn = f" {p['distribution']}(mean {p['mean']:.4g}, std {p['std']:.4g})" if p.get("distribution") else ""
            print(f"    {p['name']:16s} [{p['low']:.4g}, {p['high']:.4g}] {p['scale']}{kind}{drawn}")
    for instance, stored in description["parameters"].items():
        print(f"  parameters of environment {instance}:")
        for name, value in stored.items():
            print(f"    {name:16s} {value}")
    networks = description["networks"]
    print(f"  networks: {', '.join(networks) if networks else 'none saved'}")
    return 0


def _short(values: list[float]) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:4])
    return f"[{shown}{', ...' if len(values) > 4 else ''}]"


def _plugins(args: argparse.Namespace) -> int:
    plugins = get_plugins()
    rows = sorted(plugins.plugins.values(), key=lambda info: (info.source != "builtin", info.name))
    if args.json:
        print(json.dumps([info.as_dict() for info in rows], indent=2))
        return 0
    table = []
    for info in rows:
        dist = f"{info.distribution} {info.version}" if info.distribution and info.version else info.distribution or "-"
        if info.error:  # the reason runs on in place of what the plugin would provide
            table.append((info.name, dist, "", [f"{info.status}: {info.error}"]))
            continue
        provides = [
            f"{registry}: {', '.join(sorted(offers))}" for registry, offers in info.provides.items() if offers
        ]
        if info.joins:
            provides.append(f"joins runs: {', '.join(info.joins)}")
        provides = provides or ["-"]
        table.append((info.name, dist, info.status, provides))
        if args.verbose:
            for registry in REGISTRIES:
                for name, component in sorted(info.provides.get(registry, {}).items()):
                    summary = f"  {component.summary}" if component.summary else ""
                    table.append(("", "", "", [f"  {name} -> {component.path}{summary}"]))
    _print_table(("PLUGIN", "DISTRIBUTION", "STATUS", "PROVIDES"), table)
    hint = plugins.install_hint()
    if hint:
        print(f"\n{hint}")
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple[str, str, str, list[str]]]) -> None:
    """Plain text on purpose: importing a rich-text library would cost more than listing plugins."""
    widths = [max([len(header[i]), *(len(row[i]) for row in rows)]) for i in range(3)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[3]
    print(line)
    for name, dist, status, provides in rows:
        first, *rest = provides
        if not status and first.startswith(("error:", "unavailable:")):  # spans STATUS and PROVIDES
            print("  ".join(v.ljust(w) for v, w in zip((name, dist), widths)) + "  " + first)
            continue
        print("  ".join(v.ljust(w) for v, w in zip((name, dist, status), widths)) + "  " + first)
        indent = " " * (sum(widths) + 6)
        for item in rest:
            print(indent + item)
