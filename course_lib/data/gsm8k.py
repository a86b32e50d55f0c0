"""GSM8K (Cobbe et al. 2021, MIT licence): loading, cleaning and statistics.

Each record is a dict with

* ``question``: the word problem;
* ``solution``: the reference reasoning exactly as GSM8K writes it, calculator
  annotations ``<<48/2=24>>`` included and the final ``#### 72`` line kept (pass
  ``annotations=False``, or call :func:`strip_annotations`, to remove the ``<<…>>``);
* ``answer``: the canonical final number as a string, commas removed (``"1200"``).

Where the files come from, in order: ``data_dir``; ``$GSM8K_DIR``; ``shared/gsm8k``
next to the repository (the course's CI layout); the Hugging Face hub
(``openai/gsm8k``, config ``main``). Offline with no local copy, the error says how
to provide the data.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

SPLITS = ("train", "test")
_ANNOTATION = re.compile(r"<<[^>]*>>")
_FINAL = re.compile(r"####\s*(.+?)\s*$")

HOW_TO_PROVIDE = (
    "Provide GSM8K in one of these ways: pass data_dir='/path/to/gsm8k' (a folder with "
    "train.jsonl and test.jsonl from https://github.com/openai/grade-school-math or "
    "https://huggingface.co/datasets/openai/gsm8k); or set the environment variable "
    "GSM8K_DIR to such a folder; or go online (without HF_HUB_OFFLINE=1) so the copy on "
    "the Hugging Face hub can be downloaded."
)


class GSM8KFormatError(ValueError):
    """A line of a GSM8K file that is not a valid record; the message names file and line."""


def strip_annotations(text: str) -> str:
    """Remove calculator annotations: ``"48/2 = <<48/2=24>>24"`` -> ``"48/2 = 24"``."""
    return _ANNOTATION.sub("", text)


def solution_steps(solution: str) -> list[str]:
    """The reasoning lines of a solution, without the final ``####`` line."""
    return [line for line in solution.split("\n") if line.strip() and not line.startswith("####")]


def parse_record(raw: dict, where: str = "record") -> dict:
    """Turn a raw GSM8K row ``{"question", "answer"}`` into a course record."""
    if not isinstance(raw, dict) or not isinstance(raw.get("question"), str) or not isinstance(raw.get("answer"), str):
        raise GSM8KFormatError(
            f"{where}: expected an object with string fields 'question' and 'answer', got {str(raw)[:120]!r}"
        )
    final = _FINAL.search(raw["answer"])
    if not final:
        raise GSM8KFormatError(f"{where}: the 'answer' field has no final '#### <number>' line")
    answer = final.group(1).replace(",", "").strip()
    return {"question": raw["question"].strip(), "solution": raw["answer"].strip(), "answer": answer}


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a GSM8K JSONL file; a malformed line raises with the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K file not found: {path}. {HOW_TO_PROVIDE}")
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue  # a blank line holds no record (e.g. a trailing newline)
            where = f"{path}, line {lineno}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise GSM8KFormatError(f"{where}: malformed JSON ({e.msg}). Fix or remove that line.") from None
            records.append(parse_record(raw, where))
    return records


def default_data_dir() -> Path | None:
    """``$GSM8K_DIR`` if set, else ``shared/gsm8k`` beside the repository if it exists."""
    if os.environ.get("GSM8K_DIR"):
        return Path(os.environ["GSM8K_DIR"]).expanduser()
    shared = Path(__file__).resolve().parents[3] / "shared" / "gsm8k"
    return shared if shared.is_dir() else None


def _from_hub(split: str) -> list[dict]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise FileNotFoundError(f"No local GSM8K copy and HF_HUB_OFFLINE is set. {HOW_TO_PROVIDE}")
    try:
        from datasets import load_dataset  # lazy: only without a local copy, online (and datasets is slow to import)

        rows = load_dataset("openai/gsm8k", "main", split=split)
    except Exception as e:  # no network, hub down, ...: one clear message either way
        raise FileNotFoundError(
            f"No local GSM8K copy, and the hub download failed ({type(e).__name__}: {e}). {HOW_TO_PROVIDE}"
        ) from e
    return [parse_record(r, f"hub openai/gsm8k {split}[{i}]") for i, r in enumerate(rows)]


def load_gsm8k(split: str = "test", data_dir: str | Path | None = None, annotations: bool = True) -> list[dict]:
    """Load one GSM8K split as a list of ``{"question", "solution", "answer"}`` records."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    records = read_jsonl(folder / f"{split}.jsonl") if folder is not None else _from_hub(split)
    if not annotations:
        records = [{**r, "solution": strip_annotations(r["solution"])} for r in records]
    return records


def gsm8k_stats(data: dict[str, list[dict]]):
    """What papers' data tables quote, computed from the records (one row per split).

    Columns: ``rows``, ``mean_question_words``, ``mean_solution_steps`` (reasoning
    lines before ``####``), ``mean_annotations`` (calculator calls per solution),
    ``median_answer`` and ``share_integer_answers``.
    """
    rows = []
    for split, records in data.items():
        answers = [float(r["answer"]) for r in records]
        rows.append(
            {
                "split": split,
                "rows": len(records),
                "mean_question_words": sum(len(r["question"].split()) for r in records) / len(records),
                "mean_solution_steps": sum(len(solution_steps(r["solution"])) for r in records) / len(records),
                "mean_annotations": sum(len(_ANNOTATION.findall(r["solution"])) for r in records) / len(records),
                "median_answer": float(pd.Series(answers).median()),
                "share_integer_answers": sum(a.is_integer() for a in answers) / len(answers),
            }
        )
    return pd.DataFrame(rows).set_index("split")
