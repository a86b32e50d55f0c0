"""Rejection sampling and expert iteration (lesson 07): learn from answers that check out.

One round, for a set of training questions:

1. **Sample** k completions per question, from the model itself (or from a stronger
   teacher: distillation).
2. **Reject** every completion the verifier marks wrong (``course_lib.rewards.is_correct``):
   what is left are correct worked solutions. Optionally drop duplicates and keep at
   most ``max_per_question`` per question, so that easy questions (8 identical correct
   samples) do not dominate the data set.
3. **Fine-tune** on the kept (prompt, completion) pairs with TRL's ``SFTTrainer``: one
   epoch, constant learning rate, loss on the completion tokens only.

Repeating this, each round sampling from the model the last round produced, is *expert
iteration* (Anthony et al. 2017; STaR, Zelikman et al. 2022; ReST-EM, Singh et al. 2023):
an EM-like loop whose E-step is "sample and filter" and whose M-step is SFT. The same
sampled pool also gives preference pairs (a correct and a wrong completion of the same
question) for ORPO and DPO (lesson 08).

The *yield* of a round is what the filter let through: the questions with at least one
correct sample (only those teach anything) and the number of samples kept.

This module is the data side only (sample, grade, rows, pairs, yields); the loop that trains
on the rows round after round is :mod:`course_lib.train.expert_iteration`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from course_lib.prompts import format_prompt
from course_lib.rewards import is_correct
from course_lib.sampling import sample


@dataclass
class SampledPool:
    """k completions for each of P questions, and which of them the verifier accepts."""

    problems: list[dict]  # P records with "question" and "answer"
    prompts: list[str]  # P formatted prompts (what the model was given)
    texts: list[list[str]]  # P x k completions
    correct: list[list[bool]]  # P x k verdicts of rewards.is_correct

    @property
    def k(self) -> int:
        return len(self.texts[0]) if self.texts else 0

    @classmethod
    def from_result(cls, result, prompts: list[str]) -> SampledPool:
        """The pool an evaluation already drew (an :class:`~course_lib.evaluation.EvalResult`, e.g. a
        saved run): its problems, their ``prompts``, every completion and its verdict."""
        problems = [{"question": r.question, "answer": r.answer} for r in result.per_problem.itertuples()]
        correct = [[is_correct(t, p["answer"]) for t in texts] for p, texts in zip(problems, result.completions)]
        return cls(problems, prompts, [list(t) for t in result.completions], correct)

    def first(self, k: int) -> SampledPool:
        """The same questions with only their first ``k`` samples: what a smaller k would have drawn
        (each completion's draws do not depend on how many were drawn beside it)."""
        return SampledPool(self.problems, self.prompts, [t[:k] for t in self.texts], [c[:k] for c in self.correct])

    def solved(self) -> int:
        """Questions with at least one correct sample: the only ones that yield SFT data."""
        return sum(any(c) for c in self.correct)

    def mixed(self) -> int:
        """Questions with both a correct and a wrong sample: the only ones that yield pairs."""
        return sum(any(c) and not all(c) for c in self.correct)


def sample_pool(
    model,
    tokenizer,
    problems: list[dict],
    k: int = 8,
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 160,
    batch_size: int = 64,
    seed: int = 0,
    system_prompt: str | None = None,
    progress: bool = True,
) -> SampledPool:
    """Sample k completions per problem and grade each one (step 1 and the verdict of step 2)."""
    prompts = [format_prompt(tokenizer, p["question"], system_prompt) for p in problems]
    samples = sample(
        model,
        tokenizer,
        prompts,
        n=k,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    texts = samples.grouped_texts()
    correct = [[is_correct(t, p["answer"]) for t in group] for p, group in zip(problems, texts)]
    return SampledPool(list(problems), prompts, texts, correct)


def sft_records(pool: SampledPool, dedup: bool = True, max_per_question: int | None = None) -> list[dict]:
    """Step 2: the accepted completions as ``{"prompt", "completion"}`` rows (TRL's
    prompt-completion format, which SFTTrainer trains on the completion only).

    ``dedup`` keeps the first of identical completions of a question; ``max_per_question``
    then keeps at most that many (in sampling order, so the choice is reproducible).
    """
    records = []
    for prompt, texts, correct in zip(pool.prompts, pool.texts, pool.correct):
        kept = [t for t, ok in zip(texts, correct) if ok]
        if dedup:
            kept = list(dict.fromkeys(kept))
        records += [{"prompt": prompt, "completion": t} for t in kept[:max_per_question]]
    return records


def gold_records(problems: list[dict], tokenizer, system_prompt: str | None = None) -> list[dict]:
    """The reference solutions of the problems themselves as SFT rows (GSM8K's worked
    solutions; on the pocket track, the generator's): plain SFT on human-style data."""
    return [
        {"prompt": format_prompt(tokenizer, p["question"], system_prompt), "completion": p["solution"]}
        for p in problems
    ]


def wrong_answer_pairs(problems: list[dict], tokenizer, system_prompt: str | None = None) -> list[dict]:
    """``{"prompt", "chosen", "rejected"}`` rows without sampling: each reference solution as chosen, the
    same solution with its final answer off by one as rejected. Fixed data for a launch or a dry run,
    which test the machinery, not the method."""
    return [
        {
            "prompt": r["prompt"],
            "chosen": r["completion"],
            "rejected": r["completion"].rsplit("####", 1)[0] + f"#### {int(float(p['answer'])) + 1}",
        }
        for r, p in zip(gold_records(problems, tokenizer, system_prompt), problems)
    ]


def preference_pairs(pool: SampledPool, pairs_per_question: int = 2, dedup: bool = True, seed: int = 0) -> list[dict]:
    """``{"prompt", "chosen", "rejected"}`` rows for ORPO/DPO: a correct completion as chosen
    and a wrong completion *of the same question* as rejected.

    Only questions with both kinds of samples give pairs (``pool.mixed()``). Each gives up to
    ``pairs_per_question`` pairs, drawn without reusing a completion while distinct ones are
    left (``seed`` makes the draw reproducible).
    """
    rng = random.Random(seed)
    pairs = []
    for prompt, texts, correct in zip(pool.prompts, pool.texts, pool.correct):
        good = [t for t, ok in zip(texts, correct) if ok]
        bad = [t for t, ok in zip(texts, correct) if not ok]
        if dedup:
            good, bad = list(dict.fromkeys(good)), list(dict.fromkeys(bad))
        if not good or not bad:
            continue
        rng.shuffle(good)
        rng.shuffle(bad)
        for i in range(min(pairs_per_question, max(len(good), len(bad)))):
            pairs.append({"prompt": prompt, "chosen": good[i % len(good)], "rejected": bad[i % len(bad)]})
    return pairs


def pool_yield(pool: SampledPool, records: list[dict]) -> dict:
    """One row of the yield table: how much of what was sampled survives the filter.

    ``distinct`` counts the different correct completions (summed over questions) before any
    cap: when it is close to ``solved``, each solved question has essentially one correct text.
    """
    drawn = sum(len(t) for t in pool.texts)
    n_correct = sum(sum(c) for c in pool.correct)
    distinct = sum(len({t for t, ok in zip(ts, c) if ok}) for ts, c in zip(pool.texts, pool.correct))
    return {
        "questions": len(pool.problems),
        "solved": pool.solved(),
        "solved_share": pool.solved() / max(len(pool.problems), 1),
        "samples": drawn,
        "correct": n_correct,
        "correct_share": n_correct / max(drawn, 1),
        "distinct": distinct,
        "kept": len(records),
    }
