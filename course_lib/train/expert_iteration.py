"""Expert iteration (lesson 07): N rounds of sample -> filter -> SFT, each from the last round's model.

Round r samples k completions for fresh training questions, keeps the ones the verifier
accepts (:mod:`course_lib.train.rejection_sampling`) and fine-tunes on them with TRL's
``SFTTrainer`` (:mod:`course_lib.train.sft`). With a ``teacher`` the samples come from a
stronger model that does not change between rounds: distillation. This is the EM-like loop
of expert iteration (Anthony et al. 2017), STaR (Zelikman et al. 2022) and ReST-EM (Singh et
al. 2023): the E-step samples and filters, the M-step is SFT.

Two ways to run the M-step, which write-ups often blur: *continue* one adapter from round to
round (the default here), or *restart* every round from the base model and fine-tune a fresh
adapter on that round's samples only (``restart_from_base=True``), as STaR and ReST-EM do, so
that errors of early rounds' training cannot accumulate; the samples still come from the latest
model, so what improves from round to round is the data.

:class:`RSSettings` configures both halves: the sampling and filtering (k, temperature,
dedup, cap) and the SFT of each round (learning rate, batch, epochs).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from course_lib.config import Profile
from course_lib.models import load_model
from course_lib.report import write_json
from course_lib.train.rejection_sampling import SampledPool, pool_yield, sample_pool, sft_records
from course_lib.train.sft import sft_trainer


@dataclass(frozen=True)
class RSSettings:
    """Everything one rejection-sampling / expert-iteration run depends on."""

    rounds: int = 3  # N: sample -> filter -> SFT, N times
    questions_per_round: int = 128  # fresh training questions each round
    k: int = 8  # samples per question
    temperature: float = 1.0  # sampling temperature (1: the model's own distribution)
    max_new_tokens: int = 160
    dedup: bool = True  # drop identical correct completions of a question
    max_per_question: int | None = 4  # cap on kept samples per question (None: keep all)
    learning_rate: float = 1e-4  # constant, one epoch per round
    batch_size: int = 16  # SFT sequences per optimizer step
    epochs: int = 1
    sample_batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.rounds < 1 or self.k < 1 or self.questions_per_round < 1:
            raise ValueError(
                f"rounds, k and questions_per_round must be >= 1 (got {self.rounds}, "
                f"{self.k}, {self.questions_per_round})"
            )
        if self.temperature <= 0 and self.k > 1:
            raise ValueError(
                f"temperature={self.temperature} with k={self.k}: greedy decoding gives one completion k times. "
                "Sample at temperature > 0 (1 is the model's own distribution), or set k=1"
            )
        if self.max_per_question is not None and self.max_per_question < 1:
            raise ValueError("max_per_question must be >= 1, or None to keep every correct sample")


def expert_iteration(
    model,
    tokenizer,
    profile: Profile,
    settings: RSSettings,
    problems_for_round: Callable[[int], list[dict]],
    output_dir: str | Path,
    teacher=None,
    lora=None,
    system_prompt: str | None = None,
    progress: bool = True,
    on_round: Callable[[dict], None] | None = None,
    restart_from_base: bool = False,
):
    """N rounds of sample -> filter -> SFT. Returns ``(model, yields)``.

    ``problems_for_round(r)`` gives round r's training questions (fresh ones each round, so
    the model never re-learns answers it has already seen). Samples come from ``teacher``
    when one is given (distillation: the teacher does not change between rounds), else from
    the model being trained (expert iteration: each round samples from the last round's
    model). ``lora``: a PEFT ``LoraConfig`` to train an adapter instead of every weight.
    ``yields`` is a DataFrame with one row per round (see :func:`pool_yield`) plus the SFT
    loss; ``on_round`` receives each row as it is made. ``restart_from_base``: every round trains
    a fresh copy of the base model (and a fresh ``lora`` adapter) on that round's samples, as
    STaR and ReST-EM do, instead of continuing the last round's model.
    """
    rows = []
    adapter = lora  # wrapped into the model by the first round that trains, then kept
    base = copy.deepcopy(model) if restart_from_base else None  # the untouched start of every round
    for r in range(settings.rounds):
        problems = problems_for_round(r)
        source = teacher if teacher is not None else model
        pool = sample_pool(
            source,
            tokenizer,
            problems,
            settings.k,
            temperature=settings.temperature,
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.sample_batch_size,
            seed=settings.seed + 1000 * r,
            system_prompt=system_prompt,
            progress=progress,
        )
        records = sft_records(pool, settings.dedup, settings.max_per_question)
        row = {"round": r + 1, **pool_yield(pool, records)}
        if records:
            round_settings = dataclasses.replace(settings, seed=settings.seed + r)
            if base is not None:  # ReST-EM: this round's data, the base's weights, a new adapter
                model, adapter = copy.deepcopy(base), lora
            trainer = sft_trainer(
                profile,
                model,
                tokenizer,
                records,
                Path(output_dir) / f"round{r + 1}",
                round_settings,
                lora=adapter,
                progress=progress,
            )
            result = trainer.train()
            model, adapter = trainer.model, None
            row.update(sft_loss=float(result.training_loss), sft_steps=int(result.global_step))
        else:  # nothing passed the filter: the round teaches nothing (say so, do not crash)
            row.update(sft_loss=float("nan"), sft_steps=0)
        rows.append(row)
        if on_round is not None:
            on_round(row)
    return model, pd.DataFrame(rows).set_index("round")


def cached_pool(
    profile: Profile,
    problems: list[dict],
    settings: RSSettings,
    path: str | Path,
    fingerprint: str,
    fresh: bool = False,
    progress: bool = True,
) -> tuple[SampledPool, float]:
    """The profile's base model's ``settings.k`` graded samples per problem, kept at ``path``: a study's
    arms that learn from the base's samples share one pool, sampled once. A saved pool is reused when
    it was made under the same ``fingerprint`` (and ``fresh`` is False). Returns ``(pool, seconds)``,
    the seconds it took to sample (also when it was loaded)."""
    path = Path(path)
    if path.is_file() and not fresh:
        saved = json.loads(path.read_text())
        if saved["plan"] == fingerprint:
            return SampledPool(list(problems), saved["prompts"], saved["texts"], saved["correct"]), saved["seconds"]
    model, tokenizer = load_model(profile)
    start = time.perf_counter()
    pool = sample_pool(
        model,
        tokenizer,
        problems,
        settings.k,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.sample_batch_size,
        seed=settings.seed,
        system_prompt=profile.system_prompt,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    saved = {"plan": fingerprint, "prompts": pool.prompts, "texts": pool.texts, "correct": pool.correct}
    write_json(path, {**saved, "seconds": seconds})
    return pool, seconds
