"""Command line: ``python -m course_lib showdown --profile pocket``, ``python -m course_lib evaluate
--profile laptop --problems 200 --out FILE`` (see ``--help``)."""

from __future__ import annotations

import argparse
import sys
import time

from course_lib.config import fast_mode, get_profile, setup_torch
from course_lib.data import eval_problems
from course_lib.evaluation import evaluate_profile, save_result
from course_lib.models import load_model
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
    ev = commands.add_parser(
        "evaluate",
        help="the profile's base model on its test problems, saved for a lesson to read (lesson 01)",
        description="Samples the profile's k completions per test problem and writes them, gzipped JSON, to --out.",
    )
    ev.add_argument("--profile", default=None, help="pocket, laptop or gpu; else $COURSE_PROFILE")
    ev.add_argument("--problems", type=int, default=None, help="test problems (default: the profile's)")
    ev.add_argument("--out", required=True, help="the file to write (.json.gz)")
    ev.add_argument("--seed", type=int, default=0)
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


def evaluate(args: argparse.Namespace) -> int:
    try:
        profile = get_profile(args.profile, fast=False)
        problems = eval_problems(profile, args.problems)
        model, tokenizer = load_model(profile)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup_torch(profile, seed=args.seed)
    start = time.perf_counter()
    result = evaluate_profile(model, tokenizer, problems, profile, seed=args.seed)
    seconds = time.perf_counter() - start
    about = {
        "profile": profile.name,
        "model": profile.model_name,
        "problems": len(problems),
        "k": profile.eval_k,
        "temperature": profile.temperature,
        "max_new_tokens": profile.max_new_tokens,
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "command": f"python -m course_lib evaluate --profile {profile.name} --problems {len(problems)} "
        f"--out {args.out}",
    }
    path = save_result(result, args.out, about)
    print(result.summary.to_string())
    print(f"written: {path} ({seconds:.0f} s, {len(problems) * profile.eval_k / seconds:.2f} completions/s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"showdown": showdown, "evaluate": evaluate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
