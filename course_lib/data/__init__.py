"""Data: real GSM8K, the synthetic pocket-math problems, and the small world of facts."""

from course_lib.data import facts, pocket_math
from course_lib.data.gsm8k import (GSM8KFormatError, gsm8k_stats, load_gsm8k, read_jsonl,
                                   solution_steps, strip_annotations)

__all__ = ["facts", "pocket_math", "GSM8KFormatError", "gsm8k_stats", "load_gsm8k",
           "read_jsonl", "solution_steps", "strip_annotations"]
