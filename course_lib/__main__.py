"""Command line: ``python -m course_lib showdown --profile pocket`` (see ``--help``)."""

from __future__ import annotations

import argparse
import sys

from course_lib.config import fast_mode, get_profile, setup_torch
from course_lib.report import markdown_report
from course_lib.showdown import plan_for, run_showdown


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser(
        "showdown",
        help="base vs SFT-RS vs ORPO vs GRPO from one base model, evaluated alike (lesson 09)",
        description="Runs (or resumes) the four arms and writes <out>/showdown*.json, .md and .html.",
    )
    show.add_argument("--profile", default=None, help="pocket (default, CPU) or gpu; else $COURSE_PROFILE")
    show.add_argument(
        "--fast", action="store_true", default=None, help="tiny counts, as the test suite runs it (also COURSE_FAST=1)"
    )
    show.add_argument("--out", default="results", help="where reports and finished arms go (default: results)")
    show.add_argument(
        "--questions", type=int, default=None, help="training questions per arm (default: 128 pocket, 7,472 gpu)"
    )
    show.add_argument("--n-eval", type=int, default=None, help="test problems (default: the profile's)")
    show.add_argument("--fresh", action="store_true", help="ignore finished arms on disk and run every arm")
    show.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def showdown(args: argparse.Namespace) -> int:
    try:
        profile = get_profile(args.profile, fast=args.fast if args.fast is not None else fast_mode())
        plan = plan_for(profile, questions=args.questions, n_eval=args.n_eval)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup_torch(profile, seed=0)
    report = run_showdown(profile, plan, out_dir=args.out, fresh=args.fresh, progress=not args.quiet)
    print(markdown_report(report))
    print(f"written: {args.out}/{report.name}.json, .md and .html")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"showdown": showdown}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
