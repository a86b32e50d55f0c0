"""Benchmarks (not tests): ``python -m course_lib.bench {sample,step,grpo}``.

``step`` times one decoding step (:class:`~course_lib.decoding.Decoder` plus the draw) at batch
64 and 256 against its arithmetic floor: the matrix products with the model's own weight shapes
alone (through ``torch.mm``, :func:`matmul_floor_ms`, or straight from C through the BLAS the
compiled step calls, whichever is faster), one roofline line per batch size.

``sample`` draws the same completions (same model, prompts, temperature, token budget) with
``transformers``' ``generate`` and with the course's decoding loop (:mod:`course_lib.sampling`),
one after the other in one process, at one or several batch sizes, and prints completions per
second of each and their ratio; with ``--steps`` it also times one decoding step of each
against the model's forward pass alone.

``grpo`` trains the same starting model with the same settings twice, once with the
course's from-scratch loop and once with TRL's ``GRPOTrainer``, one after the other in
one process, and prints the completions trained per second of each and their ratio.
Both sample, score and update the same P x G completions per step; the clock covers
the training steps only (model loading and trainer construction are excluded).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from transformers.cache_utils import Cache, DynamicCache

from course_lib.config import get_profile, setup_torch
from course_lib.data import eval_problems, train_problems
from course_lib.decoding import Decoder
from course_lib.decoding_kernels import gemm_floor_ms
from course_lib.losses import distinct_prompts, shares_prompts
from course_lib.models import load_model
from course_lib.prompts import format_prompt
from course_lib.sampling import BufferLayer, DrawSettings, draw, sample
from course_lib.streams import row_keys, uniform_table
from course_lib.train.grpo import GRPOLoop, GRPOSettings
from course_lib.train.grpo_trl import grpo_trainer

# --------------------------------------------------------------------------- sampling


@torch.no_grad()
def generate_samples(
    model,
    tokenizer,
    prompts: list[str],
    n: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int = 0,
) -> int:
    """The same completions drawn with ``transformers``' ``generate``, as the course sampled before
    its own loop (rows = prompts x n in batches of ``batch_size``, a static cache on the CPU, and
    ``output_logits=True`` for the log-probs). Returns the number of tokens generated."""
    rows = [p for p in prompts for _ in range(n)]
    device = next(model.parameters()).device
    tokens = 0
    for b, start in enumerate(range(0, len(rows), batch_size)):
        torch.manual_seed(seed + b)
        enc = tokenizer(
            rows[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
            padding_side="left",
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature or None,
            top_p=1.0,
            top_k=0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            return_dict_in_generate=True,
            output_logits=True,
            cache_implementation="static" if device.type == "cpu" else None,
        )
        gen = out.sequences[:, enc["input_ids"].shape[1] :]  # (B, T)
        logp = torch.log_softmax(torch.stack(out.logits, dim=1).float() / (temperature or 1.0), dim=-1)  # (B, T, V)
        logp.gather(-1, gen.unsqueeze(-1))
        tokens += int((gen != tokenizer.pad_token_id).sum())
    return tokens


def bench_sample(
    batch_sizes: tuple[int, ...] = (64,),
    n_problems: int = 64,
    n: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 200,
    profile_name: str = "pocket",
    seed: int = 0,
) -> list[dict]:
    """Completions per second of ``generate`` and of our loop, one row per batch size (lesson settings:
    the profile's test problems, 8 samples each, temperature 1, its token budget)."""
    profile = get_profile(profile_name, fast=False)
    setup_torch(profile, seed)
    model, tokenizer = load_model(profile)
    prompts = [
        format_prompt(tokenizer, p["question"], profile.system_prompt) for p in eval_problems(profile, n_problems)
    ]
    rows = []
    for batch_size in batch_sizes:
        start = time.perf_counter()
        generate_samples(model, tokenizer, prompts, n, temperature, max_new_tokens, batch_size, seed)
        theirs = time.perf_counter() - start
        start = time.perf_counter()
        ours = sample(
            model,
            tokenizer,
            prompts,
            n,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=seed,
        )
        mine = time.perf_counter() - start
        total = len(prompts) * n
        rows.append(
            {
                "batch_size": batch_size,
                "completions": total,
                "generate_per_s": total / theirs,
                "ours_per_s": total / mine,
                "ratio": theirs / mine,
                "mean_length": float(ours.lengths.float().mean()),
            }
        )
    return rows


@torch.no_grad()
def bench_step(
    batch_size: int = 64, context: int = 120, steps: int = 60, group_size: int = 8, profile_name: str = "pocket"
) -> dict:
    """Milliseconds per decoding step, ``batch_size`` rows (``group_size`` per prompt) after a prompt
    of ``context`` tokens, averaged over ``steps`` new tokens:

    * ``generate_ms``: ``generate`` (static cache, ``output_logits=True``), its whole call / steps;
    * ``forward_ms``: the model's own forward pass on one token per row with a :class:`BufferLayer`
      cache, nothing else (each row holding its own copy of the prompt);
    * ``ours_ms``: our :class:`~course_lib.decoding.Decoder` step, the prompt's cache shared by its
      ``group_size`` rows, and the draw of the next token (best of 5 rounds): the whole step in
      one compiled call where it runs (:class:`~course_lib.decoding_kernels.Step`);
      ``python_step_ms`` the same step as PyTorch calls from Python with the kernels for attention,
      norms and SiLU (``whole_step=False``), ``torch_attention_ms`` with those as PyTorch operations
      too (``kernel=False``), ``unfused_ms`` with every projection through its own module
      (``fuse=False``);
    * ``floor_ms``: the step's weight products alone, the faster of :func:`matmul_floor_ms`
      (``torch.mm``, ``torch_floor_ms``) and the same products called from C through the BLAS
      the compiled step uses (:func:`~course_lib.decoding_kernels.gemm_floor_ms`,
      ``blas_floor_ms``, None where that does not run); ``ratio_to_floor`` = ours / floor (best
      against best), ``paired_ratios`` ours / floor within each round.

    The rounds alternate the variants and the floors, so the machine's drift hits them all alike;
    this machine's speed drifts by 20-40 % within minutes, so each round's own ratio is kept too.
    """
    profile = get_profile(profile_name, fast=False)
    setup_torch(profile, 0)
    model, tokenizer = load_model(profile)
    prompts = batch_size // group_size
    ids = torch.randint(10, model.config.vocab_size, (prompts, context))
    mask = torch.ones_like(ids)
    rows, row_mask = ids.repeat_interleave(group_size, dim=0), mask.repeat_interleave(group_size, dim=0)
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(
            input_ids=rows,
            attention_mask=row_mask,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=True,
            top_k=0,
            pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
            cache_implementation="static",
        )
        generate_ms = 1000 * (time.perf_counter() - start) / steps

        cache = Cache(layer_class_to_replicate=lambda: BufferLayer(context + steps + 1))
        model(input_ids=rows, attention_mask=row_mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token, positions = rows[:, -1], torch.full((len(rows),), context)
        start = time.perf_counter()
        for step in range(steps):
            row_mask = torch.cat([row_mask, row_mask[:, :1]], dim=1)
            model(
                input_ids=token[:, None],
                attention_mask=row_mask,
                position_ids=(positions + step)[:, None],
                past_key_values=cache,
                use_cache=True,
            )
        forward_ms = 1000 * (time.perf_counter() - start) / steps

        token = rows[:, -1]
        variants = {
            "ours": dict(fuse=True),
            "python_step": dict(fuse=True, whole_step=False),
            "torch_attention": dict(fuse=True, kernel=False),
            "unfused": dict(fuse=False),
        }
        rounds = {name: [] for name in [*variants, "torch_floor", "blas_floor", "floor"]}
        for _ in range(5):
            rounds["torch_floor"].append(matmul_floor_ms(model, batch_size))
            rounds["blas_floor"].append(gemm_floor_ms(_weights(model), batch_size))
            floors = (rounds["torch_floor"][-1], rounds["blas_floor"][-1])
            rounds["floor"].append(min(t for t in floors if t is not None))
            for name, options in variants.items():
                rounds[name].append(_decoder_ms(model, ids, mask, token, group_size, steps, **options))
    best = {name: min(times) if None not in times else None for name, times in rounds.items()}
    return {
        "batch_size": batch_size,
        "context": context,
        "generate_ms": generate_ms,
        "ours_ms": best["ours"],
        "python_step_ms": best["python_step"],
        "torch_attention_ms": best["torch_attention"],
        "unfused_ms": best["unfused"],
        "forward_ms": forward_ms,
        "torch_floor_ms": best["torch_floor"],
        "blas_floor_ms": best["blas_floor"],
        "floor_ms": best["floor"],
        "ratio_to_floor": best["ours"] / best["floor"],
        "paired_ratios": [ours / floor for ours, floor in zip(rounds["ours"], rounds["floor"])],
    }


def _decoder_ms(model, ids, mask, token, group_size: int, steps: int, **options) -> float:
    """Milliseconds per step of a fresh :class:`Decoder` made with ``options`` (and the draw) over
    ``steps`` new tokens."""
    prefix = DynamicCache()
    model(input_ids=ids, attention_mask=mask, past_key_values=prefix, use_cache=True, logits_to_keep=1)
    keys, values = [layer.keys for layer in prefix.layers], [layer.values for layer in prefix.layers]
    decoder = Decoder(model, keys, values, mask, group_size, steps, **options)
    rule = DrawSettings()
    positions = mask.sum(dim=1).repeat_interleave(group_size)  # (B,)
    start = time.perf_counter()
    table = uniform_table(row_keys(0, [str(i) for i in range(len(ids))], group_size), steps)  # (B, steps), as decode
    for step in range(steps):
        logits = decoder.step(token, positions + step).float()
        token, _ = draw(logits, rule, table[:, step], step)  # the draw is part of a step
    return 1000 * (time.perf_counter() - start) / steps


def _weights(model) -> list[torch.Tensor]:
    """The weight matrices every token goes through: per layer q, k, v, o, gate, up, down, then the LM head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    weights = []
    for layer in base.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        weights += [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    return [m.weight for m in weights] + [base.get_output_embeddings().weight]


@torch.inference_mode()
def matmul_floor_ms(model, batch_size: int, repeats: int = 50) -> float:
    """The arithmetic floor of one decoding step: milliseconds for the matrix products with the
    model's own weight shapes alone (per layer q, k, v, o, gate, up, down, then the LM head), one
    row per sequence, as separate products (the best of ``repeats`` rounds)."""
    weights = _weights(model)
    inputs = [torch.randn(batch_size, w.shape[1], dtype=w.dtype) for w in weights]  # (B, in) each
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for x, w in zip(inputs, weights):
            torch.mm(x, w.T)  # (B, out)
        best = min(best, time.perf_counter() - start)
    return 1000 * best


@torch.inference_mode()
def update_floor_ms(model, tokens: int, repeats: int = 3) -> float:
    """The arithmetic floor of one training update on ``tokens`` tokens: milliseconds for the
    matrix products of the forward pass and of the backward pass (for each weight, the input's
    gradient dY W and the weight's gradient dY^T X) with the model's own weight shapes, one row
    per token, as separate products (the best of ``repeats`` rounds). Attention, norms, the loss
    and the optimizer are left out, as in :func:`matmul_floor_ms`."""
    best = float("inf")
    for _ in range(repeats):
        elapsed = 0.0
        for w in _weights(model):  # one weight at a time: the activations of 10k tokens stay small
            x, grad_y = torch.randn(tokens, w.shape[1], dtype=w.dtype), torch.randn(tokens, w.shape[0], dtype=w.dtype)
            start = time.perf_counter()
            torch.mm(x, w.T)  # forward: (N, out)
            torch.mm(grad_y, w)  # the input's gradient: (N, in)
            torch.mm(grad_y.T, x)  # the weight's gradient: (out, in)
            elapsed += time.perf_counter() - start
        best = min(best, elapsed)
    return 1000 * best


# --------------------------------------------------------------------------- GRPO


def bench_grpo(
    steps: int = 10,
    prompts_per_step: int = 8,
    group_size: int = 8,
    max_new_tokens: int = 160,
    learning_rate: float = 1e-4,
    profile_name: str = "pocket",
    seed: int = 0,
) -> dict:
    """Completions per second of our loop and of TRL's trainer on the same model and settings."""
    profile = get_profile(profile_name, fast=False)
    setup_torch(profile, seed)
    settings = GRPOSettings(
        steps=steps,
        prompts_per_step=prompts_per_step,
        group_size=group_size,
        max_new_tokens=max_new_tokens,
        learning_rate=learning_rate,
        seed=seed,
    )
    problems = train_problems(profile, steps * prompts_per_step, seed=seed)
    completions = steps * prompts_per_step * group_size

    model, tokenizer = load_model(profile)
    loop = GRPOLoop(model, tokenizer, problems, settings, system_prompt=profile.system_prompt)
    updates = time_updates(loop)
    start = time.perf_counter()
    loop.train(progress=False)
    ours_s = time.perf_counter() - start
    update_ms = 1000 * sum(u["seconds"] for u in updates) / len(updates)
    tokens = round(sum(u["tokens"] for u in updates) / len(updates))
    tokens_run = round(sum(u["tokens_run"] for u in updates) / len(updates))
    floor_ms = update_floor_ms(model, tokens_run)

    trl_s, trl_length = _train_trl(profile, problems, settings, course_sampler=False)
    fast_s, fast_length = _train_trl(profile, problems, settings, course_sampler=True)
    ours, trl, fast = completions / ours_s, completions / trl_s, completions / fast_s
    return {
        "steps": steps,
        "completions_per_step": prompts_per_step * group_size,
        "max_new_tokens": max_new_tokens,
        "threads": torch.get_num_threads(),
        "ours_seconds": ours_s,
        "trl_seconds": trl_s,
        "trl_course_sampler_seconds": fast_s,
        "ours_samples_per_s": ours,
        "trl_samples_per_s": trl,
        "trl_course_sampler_samples_per_s": fast,
        "ratio_ours_over_trl": ours / trl,
        "ratio_trl_course_sampler_over_trl": fast / trl,
        "ours_mean_length": float(loop.metrics()["completion_length"].mean()),
        "update_ms": update_ms,
        "update_tokens": tokens,
        "update_tokens_run": tokens_run,
        "update_floor_ms": floor_ms,
        "update_ratio_to_floor": update_ms / floor_ms,
        "trl_mean_length": trl_length,
        "trl_course_sampler_mean_length": fast_length,
    }


def time_updates(loop: GRPOLoop) -> list[dict]:
    """Time each call of the loop's update stage (forward, backward and optimizer step on the sampled
    batch) and count its real tokens, row by row (``tokens``) and as run (``tokens_run``: each
    distinct prompt once where the loop shares them): a list that fills as the loop runs."""
    calls, update = [], loop._update

    def timed(inputs, *args):
        start = time.perf_counter()
        out = update(inputs, *args)
        seconds = time.perf_counter() - start
        prompt, completion = inputs["prompt_mask"].sum(1), int(inputs["completion_mask"].sum())  # (n,), tokens
        prompts_once = int(distinct_prompts(inputs["prompt_ids"], inputs["prompt_mask"])[1].sum())  # each once
        run = completion + (prompts_once if shares_prompts(loop.policy, inputs["prompt_ids"]) else int(prompt.sum()))
        calls.append({"seconds": seconds, "tokens": int(prompt.sum()) + completion, "tokens_run": run})
        return out

    loop._update = timed
    return calls


def _train_trl(profile, problems: list[dict], settings: GRPOSettings, course_sampler: bool) -> tuple[float, float]:
    """Seconds of TRL's training steps, and its mean completion length, from a fresh copy of the model."""
    model, tokenizer = load_model(profile)
    with tempfile.TemporaryDirectory() as out:
        trainer = grpo_trainer(
            profile,
            model,
            tokenizer,
            problems,
            out,
            settings,
            system_prompt=profile.system_prompt,
            disable_tqdm=True,
            course_sampler=course_sampler,
        )  # no per-step log lines
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return seconds, _mean_logged(trainer.state.log_history, "completions/mean_length")


def _mean_logged(log_history: list[dict], key: str) -> float:
    values = [row[key] for row in log_history if key in row]
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> dict | list[dict]:
    parser = argparse.ArgumentParser(prog="python -m course_lib.bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="which", required=True)
    grpo = commands.add_parser("grpo", help="our GRPO loop vs TRL's GRPOTrainer, completions per second")
    grpo.add_argument("--steps", type=int, default=10)
    grpo.add_argument("--prompts", type=int, default=8, help="prompts per step (P)")
    grpo.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    grpo.add_argument("--max-new-tokens", type=int, default=160)
    grpo.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "pocket"))
    sampling = commands.add_parser("sample", help="transformers' generate vs our decoding loop, completions per second")
    sampling.add_argument(
        "--batch-sizes", default="64", help="comma-separated, e.g. 16,64,256 (default: 64, the lessons')"
    )
    sampling.add_argument("--problems", type=int, default=64, help="test problems (default 64)")
    sampling.add_argument("--n", type=int, default=8, help="samples per problem (default 8)")
    sampling.add_argument("--temperature", type=float, default=1.0)
    sampling.add_argument("--max-new-tokens", type=int, default=200)
    sampling.add_argument("--steps", action="store_true", help="also time one decoding step against the forward pass")
    sampling.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "pocket"))
    step = commands.add_parser("step", help="one decoding step against its arithmetic floor (a roofline line)")
    step.add_argument("--batch-sizes", default="64,256", help="comma-separated (default 64,256)")
    step.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "pocket"))
    args = parser.parse_args(argv)
    if args.which == "sample":
        return _print_sample(args)
    if args.which == "step":
        return _print_step(args)
    return _print_grpo(args)


def _print_sample(args: argparse.Namespace) -> list[dict]:
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    rows = bench_sample(batch_sizes, args.problems, args.n, args.temperature, args.max_new_tokens, args.profile)
    print(
        f"sampling {rows[0]['completions']} completions (temperature {args.temperature}, at most "
        f"{args.max_new_tokens} new tokens), {torch.get_num_threads()} torch threads:"
    )
    for r in rows:
        print(
            f"  batch {r['batch_size']:4d}: generate {r['generate_per_s']:7.1f} completions/s, course_lib "
            f"{r['ours_per_s']:7.1f} completions/s, ratio {r['ratio']:.2f} (mean length {r['mean_length']:.0f})"
        )
    if args.steps:
        for b in batch_sizes:
            t = bench_step(b, profile_name=args.profile)
            print(
                f"  one decoding step, batch {b} after {t['context']} prompt tokens: "
                f"generate {t['generate_ms']:.1f} ms, "
                f"the model's forward alone {t['forward_ms']:.1f} ms, course_lib's step {t['ours_ms']:.1f} ms"
            )
    return rows


def _print_step(args: argparse.Namespace) -> list[dict]:
    rows = [bench_step(int(b), profile_name=args.profile) for b in args.batch_sizes.split(",")]
    print(f"one decoding step after {rows[0]['context']} prompt tokens, {torch.get_num_threads()} torch threads:")
    for r in rows:
        blas = "not available" if r["blas_floor_ms"] is None else f"{r['blas_floor_ms']:.2f} ms"
        paired = ", ".join(f"{ratio:.2f}" for ratio in r["paired_ratios"])
        print(
            f"  batch {r['batch_size']:4d}: floor (weight products alone) {r['floor_ms']:5.2f} ms, "
            f"course_lib's step with its draw {r['ours_ms']:5.2f} ms, ratio {r['ratio_to_floor']:.2f}x\n"
            f"              each round's ratio: {paired}\n"
            f"              floor through torch.mm {r['torch_floor_ms']:.2f} ms, through BLAS from C {blas}; "
            f"step from Python {r['python_step_ms']:.2f} ms, attention in PyTorch {r['torch_attention_ms']:.2f} ms, "
            f"unfused {r['unfused_ms']:.2f} ms, the model's forward {r['forward_ms']:.2f} ms, "
            f"generate {r['generate_ms']:.2f} ms"
        )
    return rows


def _print_grpo(args: argparse.Namespace) -> dict:
    result = bench_grpo(args.steps, args.prompts, args.group, args.max_new_tokens, profile_name=args.profile)
    print(
        f"GRPO, {result['steps']} steps x {result['completions_per_step']} completions "
        f"(max {result['max_new_tokens']} new tokens), {result['threads']} torch threads:"
    )
    print(f"  course_lib loop : {result['ours_samples_per_s']:6.2f} completions/s ({result['ours_seconds']:.1f} s)")
    print(f"  TRL GRPOTrainer : {result['trl_samples_per_s']:6.2f} completions/s ({result['trl_seconds']:.1f} s)")
    print(
        f"  TRL GRPOTrainer, course_lib's sampler as its rollout_func: "
        f"{result['trl_course_sampler_samples_per_s']:6.2f} completions/s "
        f"({result['trl_course_sampler_seconds']:.1f} s)"
    )
    print(
        f"  ratio (ours / TRL): {result['ratio_ours_over_trl']:.2f}  (mean completion length "
        f"{result['ours_mean_length']:.0f} vs {result['trl_mean_length']:.0f} tokens)"
    )
    print(
        f"  our update (forward, backward, optimizer) {result['update_ms']:.0f} ms a step on "
        f"{result['update_tokens']:,} tokens ({result['update_tokens_run']:,} run: each distinct prompt once); "
        f"floor for the tokens run (their weight products alone) {result['update_floor_ms']:.0f} ms; "
        f"ratio {result['update_ratio_to_floor']:.1f}x"
    )
    return result


if __name__ == "__main__":
    main()
