"""A profile's whole code path, run small: every stage a full session runs, in a minute on the CPU.

A profile's bugs (a tokenizer that names the wrong EOS, a chat template without the system
prompt, a dtype a trainer refuses, a recipe that does not fit its model) surface at the first
stage that meets them, long before a GPU hour is spent. :func:`dry_run` runs, in order:

1. ``load``: the profile's model and tokenizer, as every lesson loads them (:func:`course_lib.models.load_model`);
2. ``prompt``: a GSM8K-style prompt with the profile's system prompt, through the chat template;
3. ``sample``: our sampler, a few completions per prompt, stopping at every end-of-turn id;
4. ``rewards``: the course's reward on each completion, as TRL's trainers call it;
5. ``grpo``: one step of our GRPO loop (lesson 05) on a LoRA policy;
6. ``grpo-trl``: one step of TRL's ``GRPOTrainer`` with the course's rewards (lesson 06);
7. ``sft``: one step of TRL's ``SFTTrainer`` on reference solutions (lesson 07);
8. ``orpo``: one step of ORPO on pairs of a solution and a wrong answer (lesson 08);
9. ``plan``: the showdown's plan for the profile (lesson 09).

The training stages use the profile's recipes with only the counts shrunk (:class:`DryRunSettings`),
so what runs is what a full session runs. ``python -m course_lib.dryrun --profile laptop``
prints the report; :func:`tiny_gpu_profile` is the GPU profile with a random model of its
architecture built locally, so the GPU track's path runs where no GPU and no Hub exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from course_lib.config import Profile, get_profile, setup_torch
from course_lib.data import train_problems
from course_lib.models import count_parameters, load_model, load_policy
from course_lib.prompts import format_prompt
from course_lib.rewards import make_reward
from course_lib.sampling import decoding_path, sample, stop_token_ids
from course_lib.showdown import plan_for, plan_table
from course_lib.train.grpo import GRPOLoop
from course_lib.train.grpo_trl import grpo_trainer
from course_lib.train.orpo import orpo_trainer
from course_lib.train.recipes import grpo_recipe, orpo_recipe, rs_recipe
from course_lib.train.rejection_sampling import gold_records, wrong_answer_pairs
from course_lib.train.sft import sft_trainer

STAGES = ("load", "prompt", "sample", "rewards", "grpo", "grpo-trl", "sft", "orpo", "plan")


@dataclass(frozen=True)
class DryRunSettings:
    """How small the dry run is: everything else comes from the profile and its recipes."""

    problems: int = 4  # training problems (GSM8K train on the GSM8K profiles)
    group_size: int = 2  # completions per prompt, in sampling and in GRPO
    max_new_tokens: int = 24  # enough to see the format, not to finish a solution
    batch_size: int = 2  # rows per TRL step
    seed: int = 0


@dataclass
class StageResult:
    """One stage of a dry run: its name, how long it took, what it found (for the report)."""

    stage: str
    seconds: float
    detail: dict


def dry_run(
    profile: Profile,
    settings: DryRunSettings = DryRunSettings(),
    output_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> list[StageResult]:
    """Run every stage of :data:`STAGES` on ``profile``; a failing stage raises with its name."""
    setup_torch(profile, seed=settings.seed)
    out = Path(output_dir or tempfile.mkdtemp(prefix="dryrun-"))
    state: dict = {"problems": train_problems(profile, settings.problems, seed=settings.seed)}
    results = []
    for stage in STAGES:
        start = time.perf_counter()
        try:
            detail = _STAGE_FUNCTIONS[stage](profile, settings, state, out / stage)
        except Exception as e:
            raise RuntimeError(f"dry run of profile {profile.name!r} failed at stage {stage!r}: {e}") from e
        results.append(StageResult(stage, time.perf_counter() - start, detail))
        log(f"{stage:>9}  {results[-1].seconds:6.1f} s  {json.dumps(detail, default=str)}")
    return results


# --------------------------------------------------------------------------- the stages


def _load(profile: Profile, s: DryRunSettings, state: dict, out: Path) -> dict:
    model, tokenizer = load_model(profile)
    state["model"], state["tokenizer"] = model, tokenizer
    return {
        "model": type(model).__name__,
        "parameters": count_parameters(model),
        "dtype": str(next(model.parameters()).dtype),
        "eos": tokenizer.eos_token,
        "pad": tokenizer.pad_token,
        "stops": stop_token_ids(model, tokenizer),
        "decoding": decoding_path(model),
    }


def _prompt(profile: Profile, s: DryRunSettings, state: dict, out: Path) -> dict:
    tokenizer = state["tokenizer"]
    prompts = [format_prompt(tokenizer, p["question"], profile.system_prompt) for p in state["problems"]]
    if profile.system_prompt and profile.system_prompt not in prompts[0]:
        raise ValueError("the chat template dropped the profile's system prompt")
    state["prompts"] = prompts
    return {"tokens": len(tokenizer(prompts[0], add_special_tokens=False).input_ids), "start": prompts[0][:60]}


def _sample(profile: Profile, s: DryRunSettings, state: dict, out: Path) -> dict:
    model, tokenizer = state["model"], state["tokenizer"]
    samples = sample(
        model,
        tokenizer,
        state["prompts"],
        n=s.group_size,
        temperature=profile.temperature,
        max_new_tokens=s.max_new_tokens,
        batch_size=profile.sample_batch_size,
        seed=s.seed,
    )
    stops = torch.tensor(stop_token_ids(model, tokenizer))
    last = [ids[mask.bool()][-1:] for ids, mask in zip(samples.completion_ids, samples.completion_mask)]
    ended = [bool(torch.isin(token, stops).any()) for token in last]  # else cut at the token budget
    state["samples"] = samples
    return {
        "completions": len(samples.texts),
        "mean_tokens": round(samples.lengths.float().mean().item(), 1),
        "ended_by_a_stop": sum(ended),
    }


def _rewards(profile: Profile, s: DryRunSettings, state: dict, out: Path) -> dict:
    samples, problems = state["samples"], state["problems"]
    answers = [p["answer"] for p in problems for _ in range(s.group_size)]
    reward = make_reward(grpo_recipe(profile)[0].reward)
    values = reward(prompts=samples.prompts, completions=samples.texts, answer=answers)
    if len(values) != len(samples.texts) or not all(isinstance(v, float) for v in values):
        raise ValueError(f"the reward returned {values!r} for {len(samples.texts)} completions")
    return {"rewards": [round(v, 2) for v in values]}


def _grpo_settings(profile: Profile, s: DryRunSettings, prompts_per_step: int):
    """The profile's GRPO recipe for one step, its reward plus a coin flip per completion: a
    completion cut after a few tokens earns nothing, a group whose rewards are all equal has no
    advantage, and without the coin no gradient would flow and the step would prove nothing."""
    settings, lora = grpo_recipe(
        profile,
        steps=1,
        prompts_per_step=prompts_per_step,
        group_size=s.group_size,
        max_new_tokens=s.max_new_tokens,
        micro_batch_size=s.batch_size,
    )
    reward = dataclasses.replace(settings.reward, random_weight=1.0, random_seed=s.seed)
    return dataclasses.replace(settings, reward=reward), lora


def _grpo(profile: Profile, s: DryRunSettings, state: dict, out: Path) -> dict:
    settings, lora = _grpo_settings(profile, s, prompts_per_step=min(2, s.problems))
    policy, tokenizer = load_policy(profile, lora, seed=s.seed)
    loop = GRPOLoop(policy, tokenizer, state["problems"], settings, system_prompt=profile.system_prompt)
    metrics = loop.train_step()
    if not metrics["grad_norm"] > 0:
        raise ValueError(f"the GRPO step moved nothing (gradient norm {metrics['grad_norm']})")
    return {k: round(float(metrics[k]), 4) for k in ("reward", "reward_std", "completion_length", "grad_norm")}


def _grpo_trl(profile: Profile, s: DryRunSettings, state: dict, out: Path) -> dict:
    settings, lora = _grpo_settings(profile, s, prompts_per_step=2)
    model, tokenizer = load_policy(profile, lora, seed=s.seed)
    trainer = grpo_trainer(
        profile,
        model,
        tokenizer,
        state["problems"],
        out,
        settings,
        system_prompt=profile.system_prompt,
        max_steps=1,
        disable_tqdm=True,
    )
    detail = _train(trainer)
    return detail | {"stops_after": stop_token_ids(trainer.model, tokenizer)}


def _sft(profile: Profile, s: DryRunSettings, state: dict, out: Path) -> dict:
    settings, lora = rs_recipe(profile, batch_size=s.batch_size, seed=s.seed)
    model, tokenizer = load_policy(profile, lora, seed=s.seed)
    rows = gold_records(state["problems"], tokenizer, profile.system_prompt)
    return _train(sft_trainer(profile, model, tokenizer, rows, out, settings, progress=False, max_steps=1))


def _orpo(profile: Profile, s: DryRunSettings, state: dict, out: Path) -> dict:
    settings, lora = orpo_recipe(profile, batch_size=s.batch_size, seed=s.seed)
    model, tokenizer = load_policy(profile, lora, seed=s.seed)
    pairs = wrong_answer_pairs(state["problems"], tokenizer, profile.system_prompt)
    return _train(orpo_trainer(profile, model, tokenizer, pairs, out, settings, progress=False, max_steps=1))


def _plan(profile: Profile, s: DryRunSettings, state: dict, out: Path) -> dict:
    per_step = grpo_recipe(profile)[0].prompts_per_step
    plan = plan_for(profile, questions=max(per_step, profile.study_questions))
    table = plan_table(plan)
    return {"arms": list(table.index), "questions": plan.questions, "completions_per_arm": plan.completions_per_arm}


_STAGE_FUNCTIONS = {
    "load": _load,
    "prompt": _prompt,
    "sample": _sample,
    "rewards": _rewards,
    "grpo": _grpo,
    "grpo-trl": _grpo_trl,
    "sft": _sft,
    "orpo": _orpo,
    "plan": _plan,
}


def _train(trainer) -> dict:
    """One optimizer step of a TRL trainer: a finite loss and a gradient that is not zero."""
    trainer.train()
    row = next((r for r in trainer.state.log_history if "loss" in r), {})
    loss, grad_norm = row.get("loss", float("nan")), row.get("grad_norm", 0.0)
    if trainer.state.global_step != 1 or not math.isfinite(loss) or not grad_norm > 0:
        raise ValueError(f"expected one step, a finite loss and a gradient; got {trainer.state.log_history}")
    return {"steps": trainer.state.global_step, "loss": round(loss, 4), "grad_norm": round(grad_norm, 4)}


# --------------------------------------------------------------------------- the GPU profile, built locally

#: The GPU profile's model, Qwen2.5-0.5B-Instruct, as its config.json has it (vocabulary, special
#: token ids, tied embeddings), with the width and depth shrunk so that it runs in seconds.
QWEN25_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
QWEN25_VOCAB_SIZE = 151936  # embedding rows (the tokenizer has 151,665 tokens; the rest is padding)
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tiny_qwen2(folder: str | Path, seed: int = 0) -> Path:
    """A random Qwen2 model with Qwen2.5-Instruct's vocabulary size, special-token ids, two EOS ids
    (``<|im_end|>``, ``<|endoftext|>``) and chat template, saved with a stand-in tokenizer at ``folder``.

    The tokenizer is byte-level (each byte one token, no merges) with Qwen2.5's special tokens at
    their real ids: nothing of Qwen's can be downloaded here, and a dry run needs the ids, the
    template and the stops to be right, not the merges.
    """
    folder = Path(folder)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab |= {f"<|filler_{i}|>": i for i in range(len(vocab), min(QWEN25_SPECIALS.values()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(QWEN25_SPECIALS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=QWEN25_CHAT_TEMPLATE
    )
    assert all(tokenizer.convert_tokens_to_ids(t) == i for t, i in QWEN25_SPECIALS.items())
    config = Qwen2Config(
        vocab_size=QWEN25_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=QWEN25_SPECIALS["<|endoftext|>"],
        eos_token_id=[QWEN25_SPECIALS["<|im_end|>"], QWEN25_SPECIALS["<|endoftext|>"]],
        pad_token_id=QWEN25_SPECIALS["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_gpu_profile(folder: str | Path, fast: bool = True) -> Profile:
    """The GPU profile with :func:`build_tiny_qwen2`'s model at ``folder``, everything else as it is
    (GSM8K, the system prompt, bfloat16, Unsloth asked for: skipped without CUDA)."""
    if not (Path(folder) / "config.json").is_file():
        build_tiny_qwen2(folder)
    return dataclasses.replace(get_profile("gpu", fast=fast), model_name=str(folder))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.dryrun", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="pocket, laptop or gpu (default: $COURSE_PROFILE or pocket)")
    parser.add_argument(
        "--tiny", action="store_true", help="the GPU profile with a random model of its architecture, built locally"
    )
    parser.add_argument("--max-new-tokens", type=int, default=DryRunSettings.max_new_tokens)
    args = parser.parse_args(argv)
    settings = DryRunSettings(max_new_tokens=args.max_new_tokens)
    try:
        if args.tiny:
            profile = tiny_gpu_profile(Path(tempfile.mkdtemp(prefix="tiny-qwen2-")), fast=True)
        else:
            profile = get_profile(args.profile, fast=True)
        results = dry_run(profile, settings)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"dry run of {profile.name!r}: {len(results)} stages in {sum(r.seconds for r in results):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
