"""Benchmark of generation under ablation hooks (issue 4, performance): batched vs the paper's batch-1 loop.

Both arms run `rankaudit.organisms.generation.generate_greedy` (greedy, KV cache, left padding) on the same
prompts with the same `projection_ablation` hooks active (k directions at the narrow band's layers), once with
`--batch-size` prompts per call and once one prompt per call, as the paper's scripts did. EOS is disabled so that
both arms generate exactly `--new-tokens` tokens per prompt. The arms are interleaved over `--rounds` and the
median times give the throughput ratio (target >= 5).

Then the cost of a paper-sized sweep is extrapolated from the measured per-token costs (assumptions printed):
generated tokens = families x bases x conditions x prompts x new tokens, per-token cost scaled linearly with the
parameter count to 8B (compute-bound decoding), and a GPU figure from an assumed batch-1 GPU latency per token
divided by the measured batching speed-up (a lower bound for a GPU, where batch-1 decoding is memory-bound).

`--model DIR` uses a saved model + tokenizer (e.g. resources/organisms/llama/aligned); the default is a random
Llama (d=512, 8 layers, vocab 32k) with prompts of random token ids. Not a test: people read the numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
from benchcommon import wait_for_idle

from rankaudit.interventions import projection_ablation
from rankaudit.organisms.generation import generate_greedy
from rankaudit.sweeps import band_layers

PAPER_PARAMETERS = 8.0e9


class IdTokenizer:
    """Just enough of a tokenizer for generate_greedy over prompts that are space-separated token ids."""

    pad_token_id = 0
    eos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)



def load(args: argparse.Namespace) -> tuple[Any, Any, list[str]]:
    rng = np.random.default_rng(args.seed)
    if args.model:
        from rankaudit.models import load_model, load_tokenizer

        model = load_model(args.model, attn_implementation="eager")
        tokenizer = load_tokenizer(args.model)
        words = ["bread", "poem", "sea", "lock", "bicycle", "language", "France", "novel", "garden", "music"]
        texts = [" ".join(rng.choice(words, size=int(rng.integers(6, 18)))) for _ in range(args.prompts)]
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True) for t in texts]
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(args.seed)
        config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                             num_key_value_heads=8, max_position_embeddings=1024, tie_word_embeddings=False)
        model = LlamaForCausalLM(config).eval().requires_grad_(False)
        tokenizer = IdTokenizer()
        prompts = [" ".join(str(t) for t in rng.integers(3, 32000, size=int(rng.integers(24, 49)))) for _ in range(args.prompts)]
    model.generation_config.eos_token_id = None
    return model, tokenizer, prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="saved model + tokenizer directory (default: random Llama d=512, 8 layers)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=10, help="directions ablated per band layer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--idle-threshold", type=float, default=1.0)
    parser.add_argument("--max-wait", type=float, default=120.0)
    parser.add_argument("--sweep-prompts", type=int, default=200, help="held-out harmful + control prompts per condition")
    parser.add_argument("--sweep-new-tokens", type=int, default=100)
    parser.add_argument("--gpu-batch1-ms", type=float, default=25.0,
                        help="assumed batch-1 HF generate latency per token of an 8B model on one GPU (bf16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(wait_for_idle(args.idle_threshold, args.max_wait))
    model, tokenizer, prompts = load(args)
    n_params = sum(p.numel() for p in model.parameters())
    n_blocks, d = model.config.num_hidden_layers, model.config.hidden_size
    rng = np.random.default_rng(args.seed + 1)
    bases = {layer: np.linalg.qr(rng.standard_normal((d, args.k)))[0] for layer in band_layers(n_blocks, 0.45, 0.70, 5)}

    def run(batch_size: int) -> tuple[float, list[str]]:
        started = time.perf_counter()
        with projection_ablation(model, bases):
            texts = generate_greedy(model, tokenizer, prompts, args.new_tokens, batch_size)
        return time.perf_counter() - started, texts

    run(args.batch_size)
    times: dict[str, list[float]] = {"batched": [], "batch1": []}
    outputs = {}
    for _ in range(args.rounds):
        for arm, size in (("batched", args.batch_size), ("batch1", 1)):
            seconds, outputs[arm] = run(size)
            times[arm].append(seconds)
    medians = {arm: statistics.median(values) for arm, values in times.items()}
    tokens = args.prompts * args.new_tokens
    ratio = medians["batch1"] / medians["batched"]
    identical = sum(a == b for a, b in zip(outputs["batched"], outputs["batch1"]))
    print(f"model: {args.model or 'random Llama d=512 L=8 vocab 32k'} ({n_params / 1e6:.1f}M parameters), hooks: k={args.k} at layers {sorted(bases)}")
    print(f"{args.prompts} prompts x {args.new_tokens} new tokens, {args.rounds} interleaved rounds, {args.threads} thread(s)")
    for arm in ("batched", "batch1"):
        print(f"  {arm:8s}: median {medians[arm]:.2f}s  ({tokens / medians[arm]:.1f} tokens/s, {1e3 * medians[arm] / tokens:.2f} ms/token)"
              f"  runs {[round(t, 2) for t in times[arm]]}")
    print(f"  throughput ratio batched / batch-1: {ratio:.1f}x (target >= 5x); identical continuations: {identical}/{args.prompts}")

    ks, draws, singles, bands, families, bases_count = 6, 10, 5, 2, 3, 3
    ours = 1 + bands * (ks + singles + ks * draws)
    paper = 1 + bands * (ks + singles + ks * 1)
    scale = PAPER_PARAMETERS / n_params
    print("\nPaper-sized sweep (assumptions): 3 families x 3 bases; per family-basis 1 baseline + 2 bands x (6 k + 5 single"
          f" + 6 k x 10 random) = {ours} conditions (the paper's design: 1 random draw, {paper});"
          f" {args.sweep_prompts} prompts x {args.sweep_new_tokens} new tokens per condition; per-token cost scaled by 8e9 / {n_params:.3g} parameters.")
    for label, conditions in (("this project's sweep", ours), ("the paper's sweep size", paper)):
        total = families * bases_count * conditions * args.sweep_prompts * args.sweep_new_tokens
        cpu_batched = total * medians["batched"] / tokens * scale / 3600
        cpu_batch1 = total * medians["batch1"] / tokens * scale / 3600
        gpu_batch1 = total * args.gpu_batch1_ms / 1e3 / 3600
        print(f"  {label}: {total / 1e6:.1f}M generated tokens; on this CPU scaled to 8B: batched {cpu_batched:,.0f} h vs batch-1 "
              f"{cpu_batch1:,.0f} h; GPU at {args.gpu_batch1_ms:g} ms/token batch-1: {gpu_batch1:,.1f} GPU-h batch-1 vs "
              f"<= {gpu_batch1 / ratio:,.1f} GPU-h batched (measured ratio; batch-1 GPU decoding is memory-bound, so the real gain is larger)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
