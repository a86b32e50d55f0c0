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
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from course_lib.prompts import format_prompt
from course_lib.rewards import is_correct
from course_lib.sampling import sample


@dataclass
class RSSettings:
    """Everything one rejection-sampling / expert-iteration run depends on."""

    rounds: int = 3                       # N: sample -> filter -> SFT, N times
    questions_per_round: int = 128        # fresh training questions each round
    k: int = 8                            # samples per question
    temperature: float = 1.0              # sampling temperature (1: the model's own distribution)
    max_new_tokens: int = 160
    dedup: bool = True                    # drop identical correct completions of a question
    max_per_question: int | None = 4      # cap on kept samples per question (None: keep all)
    learning_rate: float = 1e-4           # constant, one epoch per round
    batch_size: int = 16                  # SFT sequences per optimizer step
    epochs: int = 1
    sample_batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.rounds < 1 or self.k < 1 or self.questions_per_round < 1:
            raise ValueError(f"rounds, k and questions_per_round must be >= 1 (got {self.rounds}, "
                             f"{self.k}, {self.questions_per_round})")
        if self.max_per_question is not None and self.max_per_question < 1:
            raise ValueError("max_per_question must be >= 1, or None to keep every correct sample")


@dataclass
class SampledPool:
    """k completions for each of P questions, and which of them the verifier accepts."""

    problems: list[dict]          # P records with "question" and "answer"
    prompts: list[str]            # P formatted prompts (what the model was given)
    texts: list[list[str]]        # P x k completions
    correct: list[list[bool]]     # P x k verdicts of rewards.is_correct

    @property
    def k(self) -> int:
        return len(self.texts[0]) if self.texts else 0

    def solved(self) -> int:
        """Questions with at least one correct sample: the only ones that yield SFT data."""
        return sum(any(c) for c in self.correct)

    def mixed(self) -> int:
        """Questions with both a correct and a wrong sample: the only ones that yield pairs."""
        return sum(any(c) and not all(c) for c in self.correct)


def sample_pool(model, tokenizer, problems: list[dict], k: int = 8, *, temperature: float = 1.0,
                max_new_tokens: int = 160, batch_size: int = 64, seed: int = 0,
                system_prompt: str | None = None, progress: bool = True) -> SampledPool:
    """Sample k completions per problem and grade each one (step 1 and the verdict of step 2)."""
    prompts = [format_prompt(tokenizer, p["question"], system_prompt) for p in problems]
    samples = sample(model, tokenizer, prompts, n=k, temperature=temperature, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, seed=seed, progress=progress)
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
    return [{"prompt": format_prompt(tokenizer, p["question"], system_prompt), "completion": p["solution"]}
            for p in problems]


def preference_pairs(pool: SampledPool, pairs_per_question: int = 2, dedup: bool = True,
                     seed: int = 0) -> list[dict]:
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
    return {"questions": len(pool.problems), "solved": pool.solved(),
            "solved_share": pool.solved() / max(len(pool.problems), 1),
            "samples": drawn, "correct": n_correct, "correct_share": n_correct / max(drawn, 1),
            "distinct": distinct, "kept": len(records)}


def expert_iteration(model, tokenizer, profile, settings: RSSettings,
                     problems_for_round: Callable[[int], list[dict]], output_dir: str | Path,
                     teacher=None, lora=None, system_prompt: str | None = None,
                     progress: bool = True, on_round: Callable[[dict], None] | None = None):
    """N rounds of sample -> filter -> SFT. Returns ``(model, yields)``.

    ``problems_for_round(r)`` gives round r's training questions (fresh ones each round, so
    the model never re-learns answers it has already seen). Samples come from ``teacher``
    when one is given (distillation: the teacher does not change between rounds), else from
    the model being trained (expert iteration: each round samples from the last round's
    model). ``lora``: a PEFT ``LoraConfig`` to train an adapter instead of every weight.
    ``yields`` is a DataFrame with one row per round (see :func:`pool_yield`) plus the SFT
    loss; ``on_round`` receives each row as it is made.
    """
    from course_lib.train.recipes import sft_trainer

    rows = []
    adapter = lora          # wrapped into the model by the first round that trains, then kept
    for r in range(settings.rounds):
        problems = problems_for_round(r)
        source = teacher if teacher is not None else model
        pool = sample_pool(source, tokenizer, problems, settings.k, temperature=settings.temperature,
                           max_new_tokens=settings.max_new_tokens, batch_size=settings.sample_batch_size,
                           seed=settings.seed + 1000 * r, system_prompt=system_prompt, progress=progress)
        records = sft_records(pool, settings.dedup, settings.max_per_question)
        row = {"round": r + 1, **pool_yield(pool, records)}
        if records:
            round_settings = dataclasses.replace(settings, seed=settings.seed + r)
            trainer = sft_trainer(profile, model, tokenizer, records, Path(output_dir) / f"round{r + 1}",
                                  round_settings, lora=adapter, progress=progress)
            result = trainer.train()
            model, adapter = trainer.model, None
            row.update(sft_loss=float(result.training_loss), sft_steps=int(result.global_step))
        else:   # nothing passed the filter: the round teaches nothing (say so, do not crash)
            row.update(sft_loss=float("nan"), sft_steps=0)
        rows.append(row)
        if on_round is not None:
            on_round(row)
    return model, pd.DataFrame(rows).set_index("round")
