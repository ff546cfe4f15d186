"""The sweep's cost per condition against the paper's own loops, on the demo's organism and the paper's prompts.

Model: the demo's Llama organism architecture (config/config.yaml `organisms.architectures.llama`) with its
family tokenizer (`rankaudit.organisms.tokenizer.train_tokenizer` on the organisms' corpus of all the paper's prompts),
randomly initialised: timings do not depend on the weights, and EOS is switched off so that every arm generates
its full length. Prompts: the first `--prompts` safety and control prompts of the paper's `prompts_v4.py`, in the
family's chat format. One condition = the narrow band's layers, a random k-dimensional basis per layer.

Arms (single-threaded, interleaved over `--rounds`, medians of wall and process CPU time):
- `score`: the project scoring one condition: `refusal.last_position_log_probs` of the harmful and the control
  prompts under `interventions.projection_ablation` (refusal log-odds and control KL follow from them);
- `capture`: `capture.capture_residual_stream` of every layer of the safety and control prompts;
- `generate`: the project's judged-generation path for the same condition, `generate_greedy` batched;
- `paper_generate`: the paper's generation loop for one condition, `diagnostics_v4._refusal_rate` (one
  `model.generate` per prompt, 100 new tokens) under the same ablation;
- `paper_capture`: the paper's `diagnostics_v4.collect_acts` (one forward per prompt, `output_hidden_states`)
  of the safety and control prompts.
The paper's `_Ablate` hook reads `out[0]` of a decoder block, which under transformers >= 5 (blocks return a
tensor) is batch row 0 and fails; `projection_ablation` applies the same map h - U U^T h at the same block
outputs, so it stands in for the hook while the paper's loop runs unchanged.

Rows for `make bench`: paper_generate / score >= 50 (speed-up), (paper_capture + paper_generate) /
(capture + score) >= 20. The paper's scripts are read from benchmarks/benchcommon.ANCHORS at run time; without
them the rows are reported as skipped.
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any

import numpy as np
import yaml
from benchcommon import (
    REPO,
    Ratio,
    Timing,
    benchmark_arguments,
    interleaved,
    markdown_table,
    paper_scripts,
    ratio_rows,
    report,
    single_thread,
    wait_for_idle,
)

from rankaudit.capture import capture_residual_stream
from rankaudit.formats import encode_prompts
from rankaudit.interventions import projection_ablation
from rankaudit.organisms.architectures import new_model
from rankaudit.organisms.corpus import tokenizer_corpus
from rankaudit.organisms.generation import generate_greedy
from rankaudit.organisms.tokenizer import train_tokenizer
from rankaudit.padding import pad_token_id
from rankaudit.refusal import kl_rows, last_position_log_probs, refusal_log_odds, refusal_tokens
from rankaudit.sweeps import band_layers, random_basis

FAMILY = "llama"
PAPER_NEW_TOKENS = 100  # diagnostics_v4._refusal_rate's max_new_tokens


def organism(prompts: list[str], seed: int) -> tuple[Any, Any]:
    """The demo's organism architecture and family tokenizer, random weights, EOS off."""
    settings = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["organisms"]
    tokenizer = train_tokenizer(FAMILY, tokenizer_corpus(FAMILY, prompts, [], []), **settings["tokenizer"])
    model = new_model(FAMILY, settings["architectures"][FAMILY], tokenizer, seed).eval().requires_grad_(False)
    model.generation_config.eos_token_id = None
    return model, tokenizer


def condition_bases(model: Any, k: int, seed: int) -> dict[int, np.ndarray]:
    """A random k-dimensional basis at each layer of the narrow band (as the sweep's random-control conditions)."""
    n_blocks, d = model.config.num_hidden_layers, model.config.hidden_size
    rng = np.random.default_rng(seed)
    return {layer: random_basis(d, k, rng) for layer in band_layers(n_blocks, 0.45, 0.70, 5)}


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_arguments(__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=24, help="safety and control prompts each (the demo's n)")
    parser.add_argument("--batch-size", type=int, default=48, help="the demo's causal.batch_size")
    parser.add_argument("--new-tokens", type=int, default=24, help="the demo's causal.generation.max_new_tokens")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    single_thread()
    anchors = paper_scripts()
    if anchors is None:
        report([Ratio("sweep: paper's batch-1 generation / project scoring, one condition (speed-up)", None, ">= 50",
                      note="paper's scripts absent"),
                Ratio("paper's batch-1 loops / project capture + one condition scored (speed-up)", None, ">= 20",
                      note="paper's scripts absent")], args.ratios_json)
        return 0
    import diagnostics_v4
    import prompts_v4

    safety, control = prompts_v4.safety_prompts(args.prompts), prompts_v4.control_prompts(args.prompts)
    every_prompt = [text for name in ("SAFETY_PROMPTS_BASE", "CONTROL_PROMPTS_BASE", "ENGLISH_PROMPTS", "FRENCH_PROMPTS",
                                      "QUESTION_PROMPTS", "STATEMENT_PROMPTS") for text in getattr(prompts_v4, name)]
    model, tokenizer = organism(every_prompt, args.seed)
    harmful = encode_prompts(tokenizer, safety, "chat", mean_last_k=4)
    benign = encode_prompts(tokenizer, control, "chat", mean_last_k=4)
    pad, tokens = pad_token_id(tokenizer), refusal_tokens(tokenizer)
    bases = condition_bases(model, args.k, args.seed)
    rendered = [record.rendered for record in harmful.records]
    all_ids = [*harmful.token_ids, *benign.token_ids]
    reference = last_position_log_probs(model, benign.token_ids, args.batch_size, pad)

    def score() -> tuple[np.ndarray, np.ndarray]:
        with projection_ablation(model, bases):
            bad = last_position_log_probs(model, harmful.token_ids, args.batch_size, pad)
            good = last_position_log_probs(model, benign.token_ids, args.batch_size, pad)
        return refusal_log_odds(bad, tokens.ids), kl_rows(reference, good)

    def capture() -> object:
        return capture_residual_stream(model, all_ids, "all", batch_size=args.batch_size, mean_last_k=4,
                                       post_instruction_len=len(harmful.post_instruction_ids), pad_token_id=pad)

    def generate() -> list[str]:
        with projection_ablation(model, bases):
            return generate_greedy(model, tokenizer, rendered, PAPER_NEW_TOKENS, args.batch_size)

    def paper_generate() -> dict:
        with projection_ablation(model, bases), contextlib.redirect_stdout(io.StringIO()):
            return diagnostics_v4._refusal_rate(model, tokenizer, safety, "cpu")

    def paper_capture() -> tuple[dict, dict]:
        return (diagnostics_v4.collect_acts(model, tokenizer, safety, "cpu", chat=True),
                diagnostics_v4.collect_acts(model, tokenizer, control, "cpu", chat=True))

    check_same_states(model, tokenizer, rendered, paper_capture()[0], args.batch_size)
    print(wait_for_idle(args.idle_load, args.max_wait), flush=True)
    times = interleaved({"score": score, "capture": capture, "generate": generate, "paper_generate": paper_generate,
                         "paper_capture": paper_capture}, args.rounds)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {FAMILY} organism architecture ({n_params / 1e6:.2f}M parameters, d={model.config.hidden_size}, "
          f"{model.config.num_hidden_layers} blocks, vocab {len(tokenizer)}), random init; {args.prompts} safety + "
          f"{args.prompts} control prompts of {anchors.name}/prompts_v4.py (chat format, mean "
          f"{np.mean([len(ids) for ids in all_ids]):.0f} tokens); ablation k={args.k} at layers {sorted(bases)}")
    print(f"\n{'arm':<16}{'median wall s':>15}{'median CPU s':>14}")
    for name, timing in times.items():
        print(f"{name:<16}{timing.wall:>15.3f}{timing.cpu:>14.3f}")
    both = {"ours": Timing(times["capture"].wall + times["score"].wall, times["capture"].cpu + times["score"].cpu, args.rounds),
            "paper": Timing(times["paper_capture"].wall + times["paper_generate"].wall,
                            times["paper_capture"].cpu + times["paper_generate"].cpu, args.rounds)}
    print("\nmore ratios:")
    print(markdown_table([
        ratio_rows("paper's batch-1 generation / project batched generation, 100 tokens (speed-up)",
                   times["paper_generate"], times["generate"], "-", ""),
        ratio_rows("paper's collect_acts / project capture, all layers (speed-up)", times["paper_capture"],
                   times["capture"], "-", ""),
    ]))
    print()
    where = (f"demo llama organism (d={model.config.hidden_size}, {model.config.num_hidden_layers} blocks), random init; "
             f"{args.prompts} + {args.prompts} paper prompts")
    report([
        ratio_rows("sweep: paper's batch-1 generation / project scoring, one condition (speed-up)", times["paper_generate"],
                   times["score"], ">= 50", f"{where}; paper: {args.prompts} harmful x {PAPER_NEW_TOKENS} tokens; "
                   f"project: refusal score + control KL, batch {args.batch_size}"),
        ratio_rows("paper's batch-1 loops / project capture + one condition scored (speed-up)", both["paper"], both["ours"],
                   ">= 20", f"{where}; collect_acts + _refusal_rate vs capture_residual_stream + scoring"),
    ], args.ratios_json)
    return 0


def check_same_states(model: Any, tokenizer: Any, rendered: list[str], paper: dict, batch_size: int) -> None:
    """Both arms run the same model: the project's capture of the paper's own token ids reproduces collect_acts.

    The paper tokenizes the rendered chat text again with special tokens, so its prompts carry a second BOS where
    the template already has one (one token longer than `encode_prompts`' ids); that is kept as the paper ran it.
    """
    ids = [tokenizer(text)["input_ids"] for text in rendered]
    captured = capture_residual_stream(model, ids, "all", batch_size=batch_size, pad_token_id=pad_token_id(tokenizer))
    inner = sorted(paper)[:-1]  # HF's last hidden state is taken after the final norm, not a block output
    worst = max(float(np.max(np.abs(captured[layer + 1]["last"] - paper[layer]))) for layer in inner)
    print(f"check: project capture of the paper's token ids vs the paper's collect_acts, last token, block outputs "
          f"{inner[0]}..{inner[-1]}: max |difference| = {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("the project's capture and the paper's loop disagree on the same prompts and model")


if __name__ == "__main__":
    sys.exit(main())
