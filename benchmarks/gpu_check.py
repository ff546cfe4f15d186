"""GPU check: the project's own capture, scoring, generation and abliteration code on the paper's three
architectures, and from the measured rates the GPU-hours of the whole study in config/paper.yaml.

`python benchmarks/gpu_check.py` (one H100/H200, no downloads, a few minutes): Llama-3.1-8B, Gemma-2-9B and
Qwen-2.5-7B built from their published configs with random weights, directly on the GPU in bfloat16. Per model:
- capture: `capture.capture_residual_stream` of every layer (last, mean of the last 4, 5 post-instruction
  positions), batch `runtime.batch_size`: tokens/s and model FLOP utilisation (decoder-block matmul and attention
  FLOPs of the real tokens, no LM head, against the device's dense bf16 peak: `PEAK_BF16_TFLOPS`, or --peak-tflops);
- scoring: one sweep condition = `refusal.last_position_log_probs` of `causal.evaluation.n` harmful and control
  prompts under `interventions.projection_ablation` (k = 10 at the narrow band), batch `causal.batch_size`: conditions/s;
  and the same rows packed `--wide-batch` to a batch, as a sweep batched across conditions runs them;
- generation: `organisms.generation.generate_greedy` under the same ablation, `causal.generation.max_new_tokens`
  new tokens (EOS off), at `causal.batch_size` and at `--wide-batch` rows: generated tokens/s;
- peak GPU memory over capture, scoring and generation (peak RSS of the process with --tiny);
- abliteration: every layer's residual stream under `interventions.direction_ablation` against the model edited by
  `abliteration.orthogonalize_weights`, in bf16: max relative difference (what `causal.abliteration_tolerance` bounds).
Then the study: captures of every model x cell x prompt (`plan.captured_models`, `plan.model_cells`), Arditi
selection, all-layer ablation and sweeps (`sweeps.plan_conditions`) with their prompt and token counts, priced at
the measured rates, as configured and with conditions batched. Prompt lengths are assumed (--prompt-tokens).

`--tiny` runs the same code on the CPU with miniature configs in seconds (its figures mean nothing; a test checks
that every field is printed and finite). `--json PATH` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from bench_dag import dataset_rows

REPO = Path(__file__).resolve().parents[1]
# the post-instruction suffix of all three chat templates is 5 tokens (Llama-3 "<|eot_id|>...\n\n", Gemma-2
# "<end_of_turn>\n<start_of_turn>model\n", Qwen "<|im_end|>\n<|im_start|>assistant\n")
POST_INSTRUCTION_LEN = 5
SWEEP_K = 10
ABLITERATION_PROMPTS = 8

# Published configs (config.json of each Hugging Face repository), by the family names config/paper.yaml uses.
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("Llama-3.1-8B", {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
    "gemma2": ("Gemma-2-9B", {
        "model_type": "gemma2", "vocab_size": 256000, "hidden_size": 3584, "intermediate_size": 14336,
        "num_hidden_layers": 42, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
    "qwen2": ("Qwen-2.5-7B", {
        "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "use_sliding_window": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}),
}
TINY_SIZES = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 16384,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

# Dense bf16 tensor-core peaks (TFLOPS, no sparsity) by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
                    ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0))


@dataclass
class Figures:
    """What one model measured (rates per second of wall time, memory in GiB)."""

    model: str
    parameters_b: float
    capture_tokens_per_s: float
    capture_mfu: float
    condition_prompts: int
    conditions_per_s: float
    wide_conditions_per_s: float
    generation_tokens_per_s: float
    wide_generation_tokens_per_s: float
    peak_memory_gib: float
    abliteration_max_relative_difference: float


class IdTokenizer:
    """Just enough of a tokenizer for generate_greedy on prompts written as space-separated token ids (no downloads)."""

    pad_token_id = 0
    eos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(token) for token in text.split()]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(token) for token in ids)


def build(family: str, tiny: bool, device: str) -> Any:
    """A random-init model of the family's published config, created on `device` in bfloat16."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(ARCHITECTURES[family][1])
    if tiny:
        settings.update(TINY_SIZES, **({"sliding_window": 64} if "sliding_window" in settings else {}))
    config = AutoConfig.for_model(**settings)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    model.generation_config.eos_token_id = None
    return model


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function: Any, device: str) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def prompts(n: int, low: int, high: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=int(length)).tolist() for length in rng.integers(low, high + 1, size=n)]


def block_flops(model: Any, lengths: list[int]) -> float:
    """Forward FLOPs of the decoder blocks on these prompts: 2 x block matrix entries per token plus causal attention
    (QK^T and AV: 2 x heads x head_dim x s(s+1) per prompt of s tokens); no embedding, no LM head."""
    from rankaudit.capture import decoder_blocks

    _, blocks = decoder_blocks(model)
    matrix_entries = sum(p.numel() for p in blocks.parameters() if p.dim() == 2)
    text = model.config.get_text_config()
    attention_width = text.num_attention_heads * text.head_dim * text.num_hidden_layers
    return sum(2.0 * matrix_entries * s + 2.0 * attention_width * s * (s + 1) for s in lengths)


def peak_tflops(device: str, override: float | None) -> tuple[float, str]:
    import torch

    if override:
        return override, "given by --peak-tflops"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, value in PEAK_BF16_TFLOPS:
            if key in name:
                return value, f"{name}: dense bf16 peak from the table"
        raise SystemExit(f"no bf16 peak known for {name!r}: pass --peak-tflops")
    return 1.0, "CPU: nominal 1 TFLOPS (MFU meaningless)"


def measure(family: str, args: argparse.Namespace, config: dict, device: str, peak: float) -> Figures:
    import torch

    from rankaudit.abliteration import orthogonalize_weights
    from rankaudit.capture import capture_residual_stream
    from rankaudit.interventions import direction_ablation, projection_ablation
    from rankaudit.organisms.generation import generate_greedy
    from rankaudit.refusal import last_position_log_probs
    from rankaudit.sweeps import band_layers, random_basis

    causal = config["causal"]
    batch, capture_batch = int(causal["batch_size"]), int(config["runtime"]["batch_size"])
    n_eval, new_tokens = int(causal["evaluation"]["n"]), int(causal["generation"]["max_new_tokens"])
    if args.tiny:
        n_eval, new_tokens, batch, capture_batch = 8, 4, 4, 4
    low, high = args.prompt_tokens
    mean_last_k = int(config["capture"]["mean_last_k"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model = build(family, args.tiny, device)
    text = model.config.get_text_config()
    print(f"{ARCHITECTURES[family][0]}{' (tiny)' if args.tiny else ''}: built in {time.perf_counter() - started:.1f} s",
          flush=True)
    vocab, d = text.vocab_size, text.hidden_size
    n_capture = args.capture_prompts if not args.tiny else 16
    capture_prompts = prompts(n_capture, low, high, vocab, 1)

    def capture(rows: list[list[int]]) -> object:
        return capture_residual_stream(model, rows, "all", batch_size=capture_batch, mean_last_k=mean_last_k,
                                       post_instruction_len=POST_INSTRUCTION_LEN)

    capture(capture_prompts[:capture_batch])  # warm-up
    capture_seconds = timed(lambda: capture(capture_prompts), device)
    lengths = [len(p) for p in capture_prompts]
    mfu = block_flops(model, lengths) / capture_seconds / (peak * 1e12)

    rng = np.random.default_rng(2)
    k = min(SWEEP_K, d)
    narrow = causal["bands"]["narrow"]
    bases = {layer: random_basis(d, k, rng) for layer in band_layers(text.num_hidden_layers, *narrow["range"], narrow["count"])}
    condition = prompts(2 * n_eval, low, high, vocab, 3)
    wide = args.wide_batch if not args.tiny else 16
    packed = condition * math.ceil(wide / len(condition))

    def score(rows: list[list[int]], size: int) -> float:
        with projection_ablation(model, bases):
            last_position_log_probs(model, rows[:size], size, 0)  # warm-up
            return timed(lambda: last_position_log_probs(model, rows, size, 0), device)

    conditions_per_s = args.conditions / sum(score(condition, batch) for _ in range(args.conditions))
    wide_conditions_per_s = (len(packed) / len(condition)) / score(packed, wide)

    tokenizer = IdTokenizer()
    texts = [" ".join(map(str, p)) for p in prompts(wide, low, high, vocab, 4)]

    def generation_rate(rows: list[str], size: int) -> float:
        with projection_ablation(model, bases):
            generate_greedy(model, tokenizer, rows[:size], 2, size)  # warm-up
            return len(rows) * new_tokens / timed(lambda: generate_greedy(model, tokenizer, rows, new_tokens, size), device)

    generation = generation_rate(texts[:batch], batch)
    wide_generation = generation_rate(texts, wide)
    peak_memory = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    difference = abliteration_difference(model, capture_prompts[:ABLITERATION_PROMPTS], direction_ablation,
                                         orthogonalize_weights, capture_residual_stream)
    n_parameters = sum(p.numel() for p in model.parameters()) / 1e9
    model = None  # frees the weights (the closures above share this variable) before the next family
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return Figures(ARCHITECTURES[family][0], n_parameters, sum(lengths) / capture_seconds, mfu, len(condition), conditions_per_s,
                   wide_conditions_per_s, generation, wide_generation, peak_memory, difference)


def abliteration_difference(model: Any, rows: list[list[int]], direction_ablation: Any, orthogonalize_weights: Any,
                            capture: Any) -> float:
    """Worst layer's max |hooks - edited weights| / max |hooks| of the last-token residual stream (edits `model`)."""
    d = model.config.get_text_config().hidden_size
    direction = np.random.default_rng(5).standard_normal(d)
    with direction_ablation(model, direction):
        hooked = capture(model, rows, "all", batch_size=len(rows))
    orthogonalize_weights(model, direction)
    edited = capture(model, rows, "all", batch_size=len(rows))
    return max(float(np.max(np.abs(hooked[layer]["last"] - edited[layer]["last"])) /
                     max(1e-12, float(np.max(np.abs(hooked[layer]["last"]))))) for layer in hooked)


def sweep_conditions(config: dict, family: str) -> tuple[int, int]:
    """(all conditions, conditions other than random draws) of one (family, basis) sweep, from
    `sweeps.plan_conditions` with full-rank placeholder bases (M has one row per training safety prompt)."""
    from rankaudit import plan
    from rankaudit.sweeps import band_layers, k_grid, plan_conditions

    causal = config["causal"]
    n_blocks = plan.model_n_layers(config, config["families"][family]["aligned"])
    rank = int(config["datasets"]["safety"]["n"])
    ks = k_grid(causal["k_grid"], rank)
    k_max = min(rank, max(max(ks), causal["n_single"]))
    placeholder = np.zeros((max(ks), k_max))
    bases = {name: {layer: placeholder for layer in band_layers(n_blocks, *spec["range"], spec["count"])}
             for name, spec in causal["bands"].items()}
    conditions = plan_conditions(bases, ks, causal["n_single"], causal["random_draws"], causal["seed"])
    return len(conditions), sum(condition.kind != "random" for condition in conditions)


def study_hours(config: dict, figures: dict[str, Figures], mean_tokens: float, load_seconds: float) -> list[dict[str, Any]]:
    """GPU-hours of each GPU stage of the study at the measured rates, three ways: as configured (every condition
    scored and generated at `causal.batch_size`), with conditions batched (`--wide-batch` rows), and batched with
    the random-draw conditions scored only (their refusal then reported as a score, not a rate)."""
    from rankaudit import plan

    causal = config["causal"]
    rows = []
    for model in plan.captured_models(config):
        family = plan.model_families(config, model)[0]
        prompts_n = sum(dataset_rows(config, key) for _, key in plan.model_cells(config, model))
        hours = (prompts_n * mean_tokens / figures[family].capture_tokens_per_s + load_seconds) / 3600
        rows.append({"stage": f"capture {model}", "jobs": 1, "conditions": 0, "prompts": prompts_n,
                     "generated_tokens": 0, "hours": hours, "hours_batched": hours, "hours_batched_scored_random": hours})
    n_eval, new_tokens = int(causal["evaluation"]["n"]), int(causal["generation"]["max_new_tokens"])
    per_condition = n_eval * (2 if causal["evaluation"]["control_generation"] else 1) * new_tokens
    n_sel, n_bases = int(causal["selection"]["n"]), len(causal["bases"])
    for family in causal["families"]:
        f = figures[family]
        n_blocks = plan.model_n_layers(config, config["families"][family]["aligned"])
        candidates = POST_INSTRUCTION_LEN * n_blocks
        arditi = 3 + int(causal["random_draws"])
        sweep, sweep_not_random = sweep_conditions(config, family)
        stages = {  # jobs, conditions, prompts scored, tokens generated, tokens generated with random draws scored only
            # baseline + per (position, layer) candidate: bypass and KL under ablation, induce under addition
            "selection": (1, candidates, 2 * n_sel + 3 * n_sel * candidates, n_sel * new_tokens, n_sel * new_tokens),
            "arditi": (1, arditi, 2 * n_eval * arditi, per_condition * arditi, per_condition * 3),
            "sweeps": (n_bases, n_bases * sweep, 2 * n_eval * n_bases * sweep, per_condition * n_bases * sweep,
                       per_condition * n_bases * sweep_not_random),
        }
        for stage, (jobs, count, scored, tokens, fewer_tokens) in stages.items():
            def hours(score_rate: float, generation_rate: float, generated: float) -> float:
                # called within this iteration only, so the loop variables are the current ones
                return (scored / (f.condition_prompts * score_rate) + generated / generation_rate + jobs * load_seconds) / 3600  # noqa: B023

            rows.append({"stage": f"{stage} {family}", "jobs": jobs, "conditions": count, "prompts": scored,
                         "generated_tokens": tokens,
                         "hours": hours(f.conditions_per_s, f.generation_tokens_per_s, tokens),
                         "hours_batched": hours(f.wide_conditions_per_s, f.wide_generation_tokens_per_s, tokens),
                         "hours_batched_scored_random": hours(f.wide_conditions_per_s, f.wide_generation_tokens_per_s,
                                                              fewer_tokens)})
    return rows


HOURS = (("hours", "as configured"), ("hours_batched", "conditions batched"),
         ("hours_batched_scored_random", "batched, random draws scored only"))


def print_report(figures: dict[str, Figures], rows: list[dict[str, Any]], device_label: str, peak_label: str,
                 wide: int, batch: int) -> None:
    size = next(iter(figures.values())).condition_prompts
    print(f"\n## GPU check on {device_label} ({peak_label})\n")
    print(f"| model | params (B) | capture tokens/s | capture MFU | conditions scored/s ({size} prompts, batch {batch}) | "
          f"conditions scored/s (batch {wide}) | generation tokens/s (batch {batch}) | generation tokens/s (batch {wide}) "
          "| peak memory GiB | abliteration hooks vs weights (max rel. diff, bf16) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for f in figures.values():
        print(f"| {f.model} | {f.parameters_b:.2f} | {f.capture_tokens_per_s:,.0f} | {100 * f.capture_mfu:.1f}% | "
              f"{f.conditions_per_s:.2f} | {f.wide_conditions_per_s:.2f} | {f.generation_tokens_per_s:,.0f} | "
              f"{f.wide_generation_tokens_per_s:,.0f} | {f.peak_memory_gib:.1f} | {f.abliteration_max_relative_difference:.2e} |")
    if not rows:
        return
    print("\n| stage | jobs | conditions | prompts scored | generated tokens (as configured) | "
          + " | ".join(f"GPU-hours, {label}" for _, label in HOURS) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(HOURS))
    for row in rows:
        print(f"| {row['stage']} | {row['jobs']} | {row['conditions']:,} | {row['prompts']:,} | {row['generated_tokens']:,} | "
              + " | ".join(f"{row[key]:.3f}" for key, _ in HOURS) + " |")
    totals = ", ".join(f"{sum(row[key] for row in rows):.2f} {label}" for key, label in HOURS)
    print(f"\nwhole study (config/paper.yaml), GPU-hours on {device_label}: {totals} "
          f"(batch {batch} as configured, {wide} rows batched)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="miniature configs on the CPU, seconds (for the test)")
    parser.add_argument("--families", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--config", type=Path, default=REPO / "config" / "paper.yaml")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak when it is not in the table")
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(32, 96), metavar=("MIN", "MAX"),
                        help="prompt lengths drawn uniformly (chat-formatted refusal prompts are ~40-90 tokens)")
    parser.add_argument("--capture-prompts", type=int, default=512)
    parser.add_argument("--conditions", type=int, default=3, help="sweep conditions scored to time one")
    parser.add_argument("--wide-batch", type=int, default=512, help="rows per batch when conditions are batched")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="assumed model-load time per GPU job")
    parser.add_argument("--json", type=Path, help="also write the figures and the estimate here")
    args = parser.parse_args(argv)
    import torch

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible; use --tiny to run the same code on the CPU")
    if args.tiny:
        torch.set_num_threads(1)
    config = yaml.safe_load(args.config.read_text())
    missing = [family for family in config["causal"]["families"] if family not in args.families]
    if missing and not args.tiny:
        print(f"note: families {missing} not measured; the estimate needs every family of causal.families")
    peak, peak_label = peak_tflops(device, args.peak_tflops)
    device_label = torch.cuda.get_device_name() if device == "cuda" else "CPU (--tiny)"
    started = time.perf_counter()
    figures = {family: measure(family, args, config, device, peak) for family in args.families}
    rows = study_hours(config, figures, sum(args.prompt_tokens) / 2, args.load_seconds) if not missing else []
    batch = 4 if args.tiny else int(config["causal"]["batch_size"])
    print_report(figures, rows, device_label, peak_label, 16 if args.tiny else args.wide_batch, batch)
    tolerance = float(config["causal"]["abliteration_tolerance"])
    worst = max(f.abliteration_max_relative_difference for f in figures.values())
    print(f"abliteration hooks vs weights in bf16: worst {worst:.2e}, {'within' if worst <= tolerance else 'above'} "
          f"causal.abliteration_tolerance = {tolerance:g} (bf16 keeps 8 bits of mantissa: ~4e-3 per rounding)")
    print("not priced: CPU jobs (spectra, limits, calibration, tables), downloads, queueing")
    print(f"gpu_check took {time.perf_counter() - started:.0f} s")
    if args.json:
        totals = {f"total_{key}": sum(row[key] for row in rows) for key, _ in HOURS}
        args.json.write_text(json.dumps({"device": device_label, "figures": {k: asdict(v) for k, v in figures.items()},
                                         "study": rows, **totals}, indent=1))
    finite = all(math.isfinite(value) for f in figures.values() for value in asdict(f).values() if isinstance(value, float))
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
