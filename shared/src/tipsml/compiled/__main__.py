"""``python -m tipsml.compiled build|status`` (see :mod:`tipsml.compiled`)."""

from __future__ import annotations

import sys

from . import ENV, cache_dir, enabled
from .build import build, status


def main(argv=None) -> int:
    import argparse

    from . import __doc__ as doc

    ap = argparse.ArgumentParser(prog="python -m tipsml.compiled", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile what is missing or stale")
    b.add_argument("--jobs", type=int, default=None)
    b.add_argument("--force", action="store_true", help="rebuild everything")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--strict", action="store_true",
                   help="exit 1 when a module could not be compiled")
    sub.add_parser("status", help="what is compiled, fresh or stale")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        res = build(jobs=args.jobs, force=args.force, quiet=args.quiet)
        if res["failed"]:
            print(f"tipsml.compiled: {', '.join(res['failed'])} left to Python "
                  "(the pure-Python modules serve; nothing else changes)", file=sys.stderr)
        return 1 if args.strict and res["failed"] else 0
    rows = status()
    print(f"{cache_dir()} ({'on' if enabled() else f'off: {ENV}=0'})")
    for r in rows:
        print(f"  {r['state']:<9} {r['module']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
