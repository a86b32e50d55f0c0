"""Mutation score per module from a finished ``mutmut run`` (``make mutation``; not a test).

score = (killed + timed out) / (killed + timed out + survived), over the mutants that some
selected test reaches; mutants no selected test reaches ("no tests") and mutants not run yet (a run
limited to some functions, or stopped) are counted apart.
Usage: python tests/mutation_score.py [mutants]
"""

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def scores(mutants_dir: Path) -> dict[str, Counter]:
    by_module = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        by_module[str(meta.relative_to(mutants_dir))[: -len(".meta")]] = Counter(status_by_exit_code[c] for c in codes)
    return by_module


def main(mutants_dir: str = "mutants") -> None:
    print(f"{'module':32} {'mutants':>8} {'killed':>7} {'survived':>9} {'no tests':>9} {'not run':>8} {'score':>7}")
    for module, n in scores(Path(mutants_dir)).items():
        caught = n["killed"] + n["timeout"]
        tested = caught + n["survived"]
        score = f"{100 * caught / tested:.1f}%" if tested else "-"
        row = f"{module:32} {sum(n.values()):8} {caught:7} {n['survived']:9} {n['no tests']:9} {n['not checked']:8}"
        print(f"{row} {score:>7}")


if __name__ == "__main__":
    main(*sys.argv[1:])
