"""Benchmark of activation capture (issue 3, performance): ratios measured side by side in one run.

On a random-init Llama (d=512, 8 layers, vocab 32k, batches of 32, as in ARCHITECTURE.md) and the same prompts:

- `plain`: what one would write first, a forward of the full model with logits on batches in input order
  (padded to the longest prompt of each batch);
- `plain_sorted`: the same on the length-sorted, left-padded batches capture forms;
- `hidden_states`: `output_hidden_states=True` on those batches, read positions gathered afterwards;
- `hidden_states_base`: `output_hidden_states=True` on the base transformer only (no LM head);
- `capture`: `rankaudit.capture.capture_residual_stream` of every layer (as the workflow asks) at the read positions;
- `batch1`: the paper's loop, one prompt per forward with `output_hidden_states=True`.

Target for `make bench`: capture / plain <= 0.6 (headless, length-bucketed; early stop helps only when fewer than
all layers are asked for). Capture should also be no slower than `output_hidden_states` with far less peak memory.
Every arm runs single-threaded; medians of interleaved rounds of wall and process CPU time. Peak memory is the
largest net torch CPU allocation during one call, from the profiler's memory events.
Not a test: `make bench` runs it and people read the ratios.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch
from benchcommon import Ratio, benchmark_arguments, interleaved, markdown_table, ratio_rows, report, single_thread, wait_for_idle

from rankaudit.capture import capture_residual_stream
from rankaudit.padding import padded_batch, positions_from_mask

MEAN_LAST_K = 4
POST_INSTRUCTION_LEN = 5


def build_model(seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.eval()
    model.requires_grad_(False)
    return model


def make_prompts(n: int, min_length: int, max_length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, max_length + 1, size=n)
    return [[1] + rng.integers(2, vocab, size=int(length) - 1).tolist() for length in lengths]


def padded_batches(prompts: list[list[int]], batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    """The batches capture forms: sorted by length, left padded, explicit position ids."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = padded_batch([prompts[index] for index in rows], 0)
        batches.append((ids, mask, positions_from_mask(mask), torch.tensor(rows)))
    return batches


def input_order_batches(prompts: list[list[int]], batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    """Batches in the prompts' own order, right padded as a tokenizer pads by default: no length bucketing."""
    batches = []
    for start in range(0, len(prompts), batch_size):
        rows = prompts[start:start + batch_size]
        ids, mask = padded_batch(rows, 0, side="right")
        batches.append((ids, mask, positions_from_mask(mask), torch.arange(start, start + len(rows))))
    return batches


def run_plain(model, batches) -> None:
    with torch.inference_mode():
        for ids, mask, positions, _ in batches:
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits.sum()


def run_hidden_states(model, batches, n: int) -> dict[int, np.ndarray]:
    """Last-token states of every layer from `output_hidden_states` (the last entry is post-norm, kept for timing).

    `model` is the causal LM (logits computed too) or its base transformer (no LM head).
    """
    out: dict[int, np.ndarray] = {}
    with torch.inference_mode():
        for ids, mask, positions, rows in batches:
            states = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                           output_hidden_states=True).hidden_states
            for layer, hidden in enumerate(states):
                kinds = (hidden[:, -1], hidden[:, -MEAN_LAST_K:].mean(1), hidden[:, -POST_INSTRUCTION_LEN:])
                target = out.setdefault(layer, np.zeros((n, hidden.shape[-1]), np.float32))
                target[rows.numpy()] = kinds[0].float().numpy()
    return out


def run_capture(model, prompts, batch_size: int) -> dict[int, dict[str, np.ndarray]]:
    return capture_residual_stream(model, prompts, list(range(model.config.num_hidden_layers + 1)),
                                   batch_size=batch_size, mean_last_k=MEAN_LAST_K,
                                   post_instruction_len=POST_INSTRUCTION_LEN)


def run_batch1(model, prompts) -> None:
    with torch.inference_mode():
        for prompt in prompts:
            states = model(torch.tensor([prompt]), output_hidden_states=True).hidden_states
            [hidden[0, -1].float().numpy() for hidden in states]


def peak_torch_memory(function: Callable[[], object]) -> int:
    """Largest net torch CPU allocation (bytes) while `function` runs, including what it returns."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = function()
    del result
    running = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        running += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_arguments(__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-length", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    single_thread()

    model = build_model(args.seed)
    prompts = make_prompts(args.prompts, args.min_length, args.max_length, model.config.vocab_size, args.seed)
    batches = padded_batches(prompts, args.batch_size)
    unsorted = input_order_batches(prompts, args.batch_size)
    n_tokens = sum(len(p) for p in prompts)
    print(f"model: random Llama d=512, 8 layers, vocab 32000; {len(prompts)} prompts of {args.min_length}-"
          f"{args.max_length} tokens ({n_tokens} tokens), batch {args.batch_size}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread")

    reference = run_hidden_states(model, batches, len(prompts))
    captured = run_capture(model, prompts, args.batch_size)
    agreement = max(float(np.abs(captured[layer]["last"] - reference[layer]).max()) for layer in range(8))
    print(f"check: capture vs output_hidden_states, layers 0-7, max |difference| = {agreement:.2e}")

    print(wait_for_idle(args.idle_load, args.max_wait), flush=True)
    methods: dict[str, Callable[[], object]] = {
        "plain": lambda: run_plain(model, unsorted),
        "plain_sorted": lambda: run_plain(model, batches),
        "hidden_states": lambda: run_hidden_states(model, batches, len(prompts)),
        "hidden_states_base": lambda: run_hidden_states(model.model, batches, len(prompts)),
        "capture": lambda: run_capture(model, prompts, args.batch_size),
        "batch1": lambda: run_batch1(model, prompts),
    }
    times = interleaved(methods, args.rounds)

    one_batch = batches[:1]
    first_rows = [prompts[i] for i in one_batch[0][3].tolist()]
    memory = {
        "plain_sorted": peak_torch_memory(lambda: run_plain(model, one_batch)),
        "hidden_states": peak_torch_memory(lambda: run_hidden_states(model, one_batch, len(prompts))),
        "hidden_states_base": peak_torch_memory(lambda: run_hidden_states(model.model, one_batch, len(prompts))),
        "capture": peak_torch_memory(lambda: run_capture(model, first_rows, args.batch_size)),
    }
    print(f"\n{'method':<20}{'median wall s':>15}{'median CPU s':>14}{'peak MB (1 batch)':>20}")
    for name, timing in times.items():
        peak = f"{memory[name] / 2**20:.1f}" if name in memory else "-"
        print(f"{name:<20}{timing.wall:>15.3f}{timing.cpu:>14.3f}{peak:>20}")
    details = [
        ratio_rows("capture / plain forward, length-sorted batches", times["capture"], times["plain_sorted"], "-", ""),
        ratio_rows("capture / output_hidden_states", times["capture"], times["hidden_states"], "<= 1", ""),
        ratio_rows("capture / base-only output_hidden_states", times["capture"], times["hidden_states_base"], "<= 1", ""),
        Ratio("capture / output_hidden_states (peak memory)", memory["capture"] / memory["hidden_states"], "<= 0.5"),
        ratio_rows("batch-1 loop / batched capture (speed-up)", times["batch1"], times["capture"], ">= 5", ""),
    ]
    print("\nmore ratios:")
    print(markdown_table(details))
    print()
    note = (f"random Llama d=512, 8 blocks, vocab 32k; {args.prompts} prompts of {args.min_length}-{args.max_length} "
            f"tokens, batch {args.batch_size}; all 9 layers; plain = full logits, batches in input order")
    report([ratio_rows("capture / plain forward with logits (time)", times["capture"], times["plain"], "<= 0.6", note)],
           args.ratios_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
