"""`sunfish doctor`: the installation check (sunfish/diagnose), one line per check; exit status 1 on a FAIL."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(verbs: argparse._SubParsersAction) -> None:
    from sunfish.diagnose.checks import EXTRAS

    d = verbs.add_parser("doctor", help="check this install: versions, device, bf16, compiler, extras, disk, and a "
                         "20-second overfit of a tiny model",
                         description="One line per check (ok / warn / FAIL and what to do); exit status 1 when one "
                                     "fails. A missing optional extra is a warning unless named in --need.")
    d.add_argument("--out", type=Path, default=Path("runs"), help="the folder runs go to, whose free disk is checked "
                   "(default runs/)")
    d.add_argument("--need", default="", metavar="EXTRA,...",
                   help=f"extras you need (a FAIL when missing or broken): {', '.join(EXTRAS)}")
    d.add_argument("--quick", action="store_true", help="skip the overfit test (seconds instead of ~20 s)")
    d.add_argument("--device", default="auto", help="where the overfit test trains: auto | cpu | cuda | cuda:N")
    d.add_argument("--json", action="store_true", help="print the checks as one JSON list")


def cmd_doctor(args: argparse.Namespace) -> int:
    from sunfish.diagnose import doctor, failed

    show = None if args.json else (lambda check: print(check.line(), flush=True))
    checks = doctor(args.out, need=args.need.split(","), quick=args.quick, device=args.device, on_check=show)
    bad = failed(checks)
    if args.json:
        print(json.dumps([c.as_json() for c in checks]))
    elif bad:
        print(f"{len(bad)} check(s) failed: {', '.join(c.name for c in bad)}")
    else:
        warned = sum(c.status.value == "warn" for c in checks)
        print(f"all {len(checks)} checks passed" + (f" ({warned} with a warning)" if warned else ""))
    return 1 if bad else 0


def dispatch(args: argparse.Namespace) -> int | None:
    return cmd_doctor(args) if args.verb == "doctor" else None
