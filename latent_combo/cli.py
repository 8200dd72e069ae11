"""`latent-combo` command line: collect, train, eval, select, info, verify."""

from __future__ import annotations

import argparse
import json
import os
import sys

# Idle OpenMP threads sleep instead of spinning: with spinning, torch on 2 threads ran up to 100x slower
# whenever another process (a collector, a second run) held a core. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cmd_info(a) -> int:
    from latent_combo.data import OfflineDataset

    ds = OfflineDataset(a.dir, check=False)
    stats = ds.stats()
    meta = ds.metadata or {}
    row = {"dataset": str(a.dir), "env": meta.get("env", "?"), "flavour": meta.get("flavour", "?"),
           "policy": meta.get("algorithm_name", "?"), **stats}
    if a.json:
        print(json.dumps(row, indent=1))
        return 0
    success = meta.get("env", "").startswith("sawyer")
    print(f"{'dataset':<32} {'episodes':>8} {'transitions':>11} {'Batch Mean':>10} {'Batch Max':>9} "
          f"{'Min':>7}" + (f" {'success':>7}" if success else ""))
    print(f"{str(a.dir):<32} {stats['episodes']:>8} {stats['transitions']:>11} {stats['return_mean']:>10.1f} "
          f"{stats['return_max']:>9.1f} {stats['return_min']:>7.1f}"
          + (f" {stats['success_rate']:>7.1%}" if success else ""))
    return 0


def cmd_verify(a) -> int:
    from latent_combo.data import verify

    problems = verify(a.dir)
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{a.dir}: every file matches metadata.json")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latent-combo", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="episodes, transitions, Batch Mean / Max of returns, success rate")
    s.add_argument("dir")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("verify", help="check every episode file against metadata.json checksums")
    s.add_argument("dir")
    s.set_defaults(func=cmd_verify)

    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands():
    """Subcommands that live next to the code they drive (collection, training, evaluation)."""
    from data_collection.collect import register_cli as collect
    from latent_combo.pipeline import register_cli as train

    return [collect, train]


def main(argv=None) -> int:
    from latent_combo.data import DatasetError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"latent-combo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
