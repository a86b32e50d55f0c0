"""GRPO from scratch: the whole algorithm in one readable file (lesson 05).

One training step, for P prompts with G completions each:

1. **Sample** G completions per prompt from the current policy (``course_lib.sampling``).
2. **Score** each completion with the reward (``course_lib.rewards``).
3. **Group-normalise** the rewards into advantages A_i (``course_lib.advantages``);
   optionally drop the groups whose rewards are all equal (their A is 0 anyway), or, with
   DAPO's dynamic sampling, replace them: draw fresh prompts until P groups carry a signal.
4. **Freeze** the log-probs of the sampled tokens under pi_old (the policy that sampled,
   i.e. the current one) and, when beta > 0, under the frozen reference pi_ref.
5. **Update** mu times on this batch: the clipped GRPO loss (``course_lib.losses``),
   backward, gradient clipping, AdamW. With mu = 1, pi = pi_old and the clip never binds.

Stages 4 and 5 run each distinct prompt once and let its G completions read its keys and values
(``course_lib.losses.run_prompts``): the same log-probs and gradients as running every row
whole, for about half the tokens of a batch whose prompts are as long as its completions.

Every step appends one row of metrics to ``history`` and hands it to the callbacks
(e.g. :class:`course_lib.plots.LiveCurves`). ``save``/``load`` write and read a checkpoint
that resumes to exactly the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from course_lib import behaviours
from course_lib.advantages import GroupAdvantages, group_advantages
from course_lib.losses import (
    LOSS_TYPES,
    SharedPrompts,
    completion_logits,
    completion_logits_after,
    grpo_loss,
    run_prompts,
    samples_inputs,
    shares_prompts,
    token_entropy,
    token_logprobs,
)
from course_lib.prompts import format_prompt
from course_lib.rewards import FORMAT_COMPONENTS, RewardConfig, reward_breakdown
from course_lib.sampling import Samples, sample


@dataclass(frozen=True)
class GRPOSettings:
    """Everything one GRPO run depends on (the names follow TRL's GRPOConfig where it has one)."""

    steps: int = 60  # optimizer steps x mu: number of sampled batches
    prompts_per_step: int = 8  # P
    group_size: int = 8  # G, TRL's num_generations
    num_iterations: int = 1  # mu: updates per sampled batch
    learning_rate: float = 5e-5  # constant
    beta: float = 0.0  # weight of the KL to pi_ref (0: no reference model)
    epsilon_low: float = 0.2  # clip range below 1
    epsilon_high: float = 0.2  # clip range above 1 (DAPO clip-higher: 0.28)
    loss_type: str = "dapo"  # grpo | bnpo | dr_grpo | dapo (TRL's default)
    scale_rewards: str = "group"  # group | batch | none
    temperature: float = 1.0
    max_new_tokens: int = 160  # the completion budget, TRL's max_completion_length
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    filter_zero_variance: bool = False  # drop groups whose rewards are all equal
    dynamic_sampling: bool = False  # DAPO: refill flat groups with fresh prompts until P groups have a signal
    max_sampling_rounds: int = 4  # dynamic sampling's cap on draws per step (then it trains on what it has)
    kl_ratio_correction: bool = True  # the KL term times r_it (TRL 1.16's default, from DeepSeek-V3.2)
    micro_batch_size: int = 16  # completions per forward/backward (sorted by length: less padding)
    sample_batch_size: int = 64  # sequences per generate() call
    reward: RewardConfig = RewardConfig()
    seed: int = 0

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 to compare completions (got {self.group_size})")
        if min(self.steps, self.prompts_per_step, self.num_iterations, self.micro_batch_size) < 1:
            raise ValueError("steps, prompts_per_step, num_iterations and micro_batch_size must be >= 1")
        if self.max_sampling_rounds < 1:
            raise ValueError(f"max_sampling_rounds must be >= 1 (got {self.max_sampling_rounds})")
        if self.temperature <= 0:
            raise ValueError(
                f"GRPO samples at temperature > 0 (got {self.temperature}): its groups need different completions "
                "and its loss divides the logits by the temperature. Greedy decoding is for evaluation: "
                "sample(..., temperature=0)"
            )


class GRPOLoop:
    """GRPO on ``policy`` over ``problems`` (dicts with ``question`` and ``answer``).

    ``ref_model``: the frozen pi_ref for the KL term. When ``beta > 0`` and none is given,
    a frozen copy of the starting policy is made (for a PEFT model: the same model with
    its adapters switched off, which costs no memory).
    """

    def __init__(
        self,
        policy,
        tokenizer,
        problems: list[dict],
        settings: GRPOSettings = GRPOSettings(),
        ref_model=None,
        system_prompt: str | None = None,
    ):
        if len(problems) < settings.prompts_per_step:
            raise ValueError(
                f"need at least prompts_per_step={settings.prompts_per_step} problems, got {len(problems)}"
            )
        self.policy, self.tokenizer, self.problems = policy, tokenizer, problems
        self.settings, self.system_prompt = settings, system_prompt
        self.device = next(policy.parameters()).device
        self.ref_model = ref_model
        if settings.beta > 0 and ref_model is None and not hasattr(policy, "disable_adapter"):
            self.ref_model = copy.deepcopy(policy).eval().requires_grad_(False)
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        self.step = 0
        self.cursor = 0  # problems drawn so far (dynamic sampling draws more than P per step)
        self.history: list[dict] = []
        self.last_batch = None  # (Samples, advantages (N,)) of the latest step
        self.last_problems: list[dict] = []  # its P problems, in the order of its groups
        torch.manual_seed(settings.seed)  # the only global randomness in a step: LoRA dropout

    # ------------------------------------------------------------------ data
    def batch_problems(self, step: int) -> list[dict]:
        """The P problems of ``step`` without dynamic sampling (with it, :attr:`last_problems`)."""
        p = self.settings.prompts_per_step
        return self.problems_at(step * p, p)

    def problems_at(self, start: int, count: int) -> list[dict]:
        """Problems ``start .. start + count - 1`` of the stream: a fresh seeded shuffle every epoch."""
        n = len(self.problems)
        orders: dict[int, list[int]] = {}  # a draw can span the end of an epoch
        out = []
        for g in range(start, start + count):
            if g // n not in orders:
                orders[g // n] = list(range(n))
                random.Random(f"{self.settings.seed}/{g // n}").shuffle(orders[g // n])
            out.append(self.problems[orders[g // n][g % n]])
        return out

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """One GRPO step on P prompts x G completions. Returns this step's metrics."""
        s = self.settings
        start = time.perf_counter()

        # Stages 1-3: sample G completions per prompt, score them, group-normalise the rewards
        # (dynamic sampling draws again for the flat groups, at most max_sampling_rounds times)
        problems, samples, scored, adv, drawn = self._draw_batch()
        rewards = torch.tensor([r["total"] for r in scored])  # (N,)
        keep = torch.ones(len(rewards), dtype=torch.bool)  # (N,)
        if s.filter_zero_variance:
            keep = ~adv.zero_variance.repeat_interleave(s.group_size)
        inputs = {k: v[keep] for k, v in samples_inputs(self.tokenizer, samples, self.device).items()}
        advantages = adv.advantages[keep].to(self.device)  # (n,) rows kept
        length = inputs["completion_mask"].sum(1)  # (n,) what a row runs: its completion (and prompt, if not shared)
        if not shares_prompts(self.policy, inputs["prompt_ids"]):
            length = length + inputs["prompt_mask"].sum(1)
        order = torch.argsort(length, stable=True)  # short rows first
        inputs, advantages = {k: v[order] for k, v in inputs.items()}, advantages[order]  # micro-batches pad less
        self.last_batch = (samples, adv.advantages)  # for a look at what was just trained on
        self.last_problems = problems

        update = {}
        if keep.any():
            # Stage 4: freeze log pi_old (mu > 1; with mu = 1 it is the policy itself) and log pi_ref
            old = self._frozen_logprobs(self.policy, inputs) if s.num_iterations > 1 else None  # (n, T)
            ref = self._reference_logprobs(inputs) if s.beta > 0 else None  # (n, T)
            # Stage 5: mu updates of the clipped loss on this batch
            update = self._update(inputs, advantages, old, ref)
        self.step += 1
        row = self._log_row(rewards, scored, adv, samples, keep, update, time.perf_counter() - start)
        row.update(drawn)
        self.history.append(row)
        return row

    def advantages(self, rewards: torch.Tensor) -> GroupAdvantages:
        """Stage 3: the group-relative advantages of a batch's rewards (N,) (``course_lib.advantages``)."""
        return group_advantages(rewards, self.settings.group_size, scale=self.settings.scale_rewards)

    def _sample_and_score(self, problems: list[dict], seed: int) -> tuple[Samples, list[dict]]:
        """Stages 1-2 for ``problems``: G completions each from the current policy, every one scored."""
        s = self.settings
        prompts = [format_prompt(self.tokenizer, p["question"], self.system_prompt) for p in problems]
        samples = sample(
            self.policy,
            self.tokenizer,
            prompts,
            n=s.group_size,
            temperature=s.temperature,
            max_new_tokens=s.max_new_tokens,
            batch_size=s.sample_batch_size,
            seed=seed,
        )  # N = P * G rows
        scored = [
            reward_breakdown(text, problems[i]["answer"], s.reward, int(length))
            for text, i, length in zip(samples.texts, samples.prompt_index, samples.lengths)
        ]
        return samples, scored

    def _draw_batch(self) -> tuple[list[dict], Samples, list[dict], GroupAdvantages, dict]:
        """This step's P problems, their samples, scores and advantages, and what drawing them cost.

        Without dynamic sampling: the step's P problems, sampled once. With it (DAPO): the groups
        whose rewards all agree are dropped and fresh problems drawn in their place, until P groups
        with a signal are in hand or ``max_sampling_rounds`` draws were made; the batch is then the
        first P groups with a signal, topped up with flat ones if the rounds ran out. The step's
        ``accuracy`` and ``frac_zero_std`` then describe the batch trained on; ``accuracy_drawn``
        and ``frac_zero_std_drawn`` every completion and group drawn (the two agree without it).
        """
        s, p = self.settings, self.settings.prompts_per_step
        base_seed = s.seed * 1_000_003 + self.step  # one seed per step: never reused by another step
        if not s.dynamic_sampling:
            problems = self.problems_at(self.cursor, p)
            self.cursor += p
            samples, scored = self._sample_and_score(problems, base_seed)
            adv = self.advantages(torch.tensor([r["total"] for r in scored]))
            drawn = {"completions_sampled": len(scored), "sampling_rounds": 1,
                     "accuracy_drawn": sum(r["correct"] for r in scored) / len(scored),
                     "frac_zero_std_drawn": adv.zero_variance.float().mean().item()}  # fmt: skip
            return problems, samples, scored, adv, drawn
        groups: list[tuple[dict, Samples, list[dict]]] = []  # (problem, its G samples, its G scores), drawn order
        flat: list[bool] = []  # whether each drawn group's rewards all agree
        drawn = rounds = 0
        while flat.count(False) < p and rounds < s.max_sampling_rounds:
            problems = self.problems_at(self.cursor, p - flat.count(False))
            self.cursor += len(problems)
            samples, scored = self._sample_and_score(problems, base_seed + 100_003 * rounds)
            drawn, rounds = drawn + len(scored), rounds + 1
            flat += self.advantages(torch.tensor([r["total"] for r in scored])).zero_variance.tolist()
            groups += [(problem, samples.group(i), scored[i * s.group_size : (i + 1) * s.group_size])
                       for i, problem in enumerate(problems)]  # fmt: skip
        batch = [groups[i] for i in refill(flat, p)]
        problems = [b[0] for b in batch]
        samples = Samples.concat([b[1] for b in batch], self.tokenizer.pad_token_id)
        scored = [r for b in batch for r in b[2]]
        adv = self.advantages(torch.tensor([r["total"] for r in scored]))
        every = [r["correct"] for group in groups for r in group[2]]  # every completion drawn, kept or not
        return problems, samples, scored, adv, {"completions_sampled": drawn, "sampling_rounds": rounds,
                                                "accuracy_drawn": sum(every) / len(every),
                                                "frac_zero_std_drawn": sum(flat) / len(flat)}  # fmt: skip

    def _log_row(self, rewards, scored, adv, samples, keep, update: dict, seconds: float) -> dict:
        """The step's metrics: rewards, accuracy, advantages, zero-variance share, lengths, the share of
        each behaviour among the samples (:mod:`course_lib.behaviours`), the update; with a format
        reward, its mean and each of its components' share of completions that earn it."""
        n = len(scored)
        formats = {}  # the format reward and each component's share of completions that earn it
        if self.settings.reward.format_weight > 0:
            formats = {"format_reward": sum(r["format"] for r in scored) / n}
            formats |= {f"format/{c}": sum(r[c] for r in scored) / n for c in FORMAT_COMPONENTS}
        return {
            "step": self.step,
            "reward": rewards.mean().item(),
            "reward_std": rewards.std().item(),
            "accuracy": sum(r["correct"] for r in scored) / n,
            **formats,
            "advantage_mean": adv.advantages.mean().item(),
            "advantage_std": adv.advantages.std().item(),
            "frac_zero_std": adv.zero_variance.float().mean().item(),
            "completion_length": samples.lengths.float().mean().item(),
            **{f"share_{name}": share for name, share in behaviours.shares(samples.texts).items()},
            "rows_trained": int(keep.sum()),
            **update,
            "seconds": seconds,
            "samples_per_s": len(rewards) / seconds,
        }

    def _micro_batches(self, n_rows: int) -> list[slice]:
        size = self.settings.micro_batch_size
        return [slice(i, min(i + size, n_rows)) for i in range(0, n_rows, size)]

    @torch.no_grad()
    def _frozen_logprobs(self, model, inputs: dict, use_base: bool = False) -> torch.Tensor:
        """Per-token log-probs (N, T) under ``model`` (or its base weights), without gradients."""
        was_training = model.training
        model.eval()
        context = model.disable_adapter() if use_base else nullcontext()
        with context:
            prompts = self._run_prompts(model, inputs)
            out = torch.cat(
                [
                    self._logprobs(model, inputs, rows, prompts=prompts)[0]
                    for rows in self._micro_batches(len(inputs["prompt_ids"]))
                ]
            )
        model.train(was_training)
        return out

    def _reference_logprobs(self, inputs: dict) -> torch.Tensor:
        """log pi_ref (N, T): the frozen copy, or the policy with its adapters switched off."""
        if self.ref_model is not None:
            return self._frozen_logprobs(self.ref_model, inputs)
        return self._frozen_logprobs(self.policy, inputs, use_base=True)

    def _run_prompts(self, model, inputs: dict) -> SharedPrompts | None:
        """The batch's distinct prompts run once (:func:`course_lib.losses.run_prompts`), or None
        where that does not apply (no prompt repeats, gradient checkpointing)."""
        if not shares_prompts(model, inputs["prompt_ids"]):
            return None
        return run_prompts(model, inputs["prompt_ids"], inputs["prompt_mask"])

    def _logprobs(
        self, model, inputs: dict, rows: slice, entropy: bool = False, prompts: SharedPrompts | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logps, entropy or None), each (m, T), of the rows ``rows`` under ``model``.

        With ``prompts``, the rows' prompts are read from the cache of the batch's distinct prompts
        and only the completions run; otherwise each row runs its prompt and completion. The
        micro-batch runs without the padding columns none of its rows needs (rows are sorted by
        length in ``train_step``, so neighbours need about the same width); its results are padded
        back to the batch's width T.
        """
        part = _trim_padding({k: v[rows] for k, v in inputs.items()})
        t = self.settings.temperature
        if prompts is None:
            logits = completion_logits(model, **part, temperature=t)  # (m, T_m, V)
        else:
            logits = completion_logits_after(model, prompts, rows, part["completion_ids"], part["completion_mask"], t)
        logps = token_logprobs(logits, part["completion_ids"])  # (m, T_m)
        width = inputs["completion_ids"].shape[1]
        pad = (0, width - logps.shape[1])
        return F.pad(logps, pad), F.pad(token_entropy(logits.detach()), pad) if entropy else None

    def _update(
        self, inputs: dict, advantages: torch.Tensor, old: torch.Tensor | None, ref: torch.Tensor | None
    ) -> dict:
        """mu optimizer steps on one sampled batch; returns the loss metrics (mean over the mu steps).

        The batch's counts (completions, tokens) are the loss's one normaliser, taken once
        here: each micro-batch's loss is its part of the batch's loss, so their gradients add
        up to the gradient of the whole batch, whatever ``micro_batch_size`` is. The one
        exception is ``bnpo``, done as TRL does it: each micro-batch's token mean, divided by the
        number of micro-batches (gradient accumulation), so its update depends on the split.
        """
        s = self.settings
        mask = inputs["completion_mask"]  # (n, T)
        normaliser = dict(num_sequences=len(mask), num_tokens=mask.sum(), max_completion_length=s.max_new_tokens)
        self.policy.train()
        sums: dict[str, float] = {}
        micro_batches = self._micro_batches(len(mask))
        for _ in range(s.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            metrics: dict[str, float] = {}
            prompts = self._run_prompts(self.policy, inputs)  # each distinct prompt once, for every micro-batch
            for rows in micro_batches:
                counts = normaliser
                if s.loss_type == "bnpo":  # TRL: the micro-batch's own tokens, times the accumulation steps
                    counts = dict(normaliser, num_tokens=mask[rows].sum() * len(micro_batches))
                logps, entropy = self._logprobs(self.policy, inputs, rows, entropy=True, prompts=prompts)  # (m, T)
                out = grpo_loss(
                    logps,
                    None if old is None else old[rows],
                    advantages[rows],
                    mask[rows],
                    ref_logps=None if ref is None else ref[rows],
                    beta=s.beta,
                    epsilon_low=s.epsilon_low,
                    epsilon_high=s.epsilon_high,
                    loss_type=s.loss_type,
                    kl_ratio_correction=s.kl_ratio_correction,
                    entropy=entropy,
                    **counts,
                )
                self._check_finite("loss", out.loss)
                out.loss.backward()  # gradients accumulate
                share = mask[rows].sum().item() / normaliser["num_tokens"].item()  # token share, for the means
                for k, v in out.metrics.items():
                    metrics[k] = metrics.get(k, 0.0) + (v if k == "policy_loss" else v * share)
            if prompts is not None:
                prompts.backward()  # the micro-batches' gradients on the prompts' cache, through the prompts' forward
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.policy.parameters() if p.requires_grad], s.max_grad_norm
            )
            self._check_finite("gradient norm", grad_norm)
            self.optimizer.step()
            metrics["grad_norm"] = grad_norm.item()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v / s.num_iterations
        self.policy.eval()
        return {("loss" if k == "policy_loss" else k): v for k, v in sums.items()}

    def _check_finite(self, what: str, value: torch.Tensor) -> None:
        """The NaN/inf guard: stop before a non-finite update reaches the weights."""
        if not torch.isfinite(value).all():
            raise FloatingPointError(
                f"GRPO step {self.step + 1}: the {what} is {value.item()}, so the model was not updated. "
                "If the rewards or advantages hold a NaN (a division by a zero std, a reward of 0 / 0), "
                f"fix them; else lower the learning rate (now {self.settings.learning_rate}) or max_grad_norm, "
                "and resume from the last checkpoint (GRPOLoop.load)."
            )

    # ------------------------------------------------------------------ the loop
    def train(
        self,
        steps: int | None = None,
        callbacks: Iterable[Callable[[dict], None]] = (),
        checkpoint_every: int = 0,
        checkpoint_path: str | Path | None = None,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Run until ``steps`` (default ``settings.steps``) steps are done in total.

        Each step's metrics go to every callback. With ``checkpoint_every > 0``, a checkpoint
        is written to ``checkpoint_path`` every that many steps. Returns the history.
        """
        total = self.settings.steps if steps is None else steps
        if checkpoint_every and checkpoint_path is None:
            raise ValueError("checkpoint_every needs a checkpoint_path to write to")
        bar = tqdm(total=total, initial=self.step, desc="GRPO", disable=not progress)
        while self.step < total:
            row = self.train_step()
            for callback in callbacks:
                callback(row)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.2f}", acc=f"{row['accuracy']:.2f}")
            if checkpoint_every and self.step % checkpoint_every == 0:
                self.save(checkpoint_path)
        bar.close()
        return self.metrics()

    def metrics(self) -> pd.DataFrame:
        """The history as a table, one row per step."""
        return pd.DataFrame(self.history)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """Write weights, optimizer state, step, history, settings and RNG state to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "cursor": self.cursor,
            "history": self.history,
            "settings": dataclasses.asdict(self.settings),
            "torch_rng": torch.get_rng_state(),
        }
        torch.save(state, path)
        return path

    def load(self, path: str | Path) -> GRPOLoop:
        """Restore a checkpoint written by :meth:`save` into this loop (same settings needed)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No GRPO checkpoint at {path}: pass the path given to save().")
        state = torch.load(path, map_location=self.device, weights_only=False)
        mine = dataclasses.asdict(self.settings)
        changed = {k for k in mine if k != "steps" and state["settings"].get(k) != mine[k]}
        if changed:
            raise ValueError(
                f"the checkpoint was written with other settings ({', '.join(sorted(changed))}); "
                "build the GRPOLoop with the settings it was trained with to resume it"
            )
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.history = state["step"], state["history"]
        self.cursor = state.get("cursor", self.step * self.settings.prompts_per_step)
        torch.set_rng_state(state["torch_rng"])
        return self


def refill(zero_variance: list[bool], prompts: int) -> list[int]:
    """Which of the groups dynamic sampling drew it trains on (DAPO): the first ``prompts`` groups
    with a signal, in the order they were drawn, topped up with the first flat ones when the draws
    ran out before enough had a signal. ``zero_variance[i]``: group i's rewards all agree."""
    signal = [i for i, flat in enumerate(zero_variance) if not flat]
    flat = [i for i, is_flat in enumerate(zero_variance) if is_flat]
    return (signal + flat)[:prompts]


def _trim_padding(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prompt's leading and the completion's trailing columns that are padding in every row."""
    first = int(part["prompt_mask"].any(dim=0).nonzero()[0])  # prompts are left-padded
    last = int(part["completion_mask"].any(dim=0).nonzero()[-1]) + 1  # completions are right-padded
    return {
        "prompt_ids": part["prompt_ids"][:, first:],
        "prompt_mask": part["prompt_mask"][:, first:],
        "completion_ids": part["completion_ids"][:, :last],
        "completion_mask": part["completion_mask"][:, :last],
    }
