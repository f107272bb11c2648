"""Held-out evaluation in units that compare across tokenizers.

Method (documented in `bardterm eval --help`): the split is tokenized as one text and `<|endoftext|>` (the
tokenizer's bos) is put in front. The token stream is cut into **non-overlapping windows** of `block_size`
predicted tokens; each window's inputs are the `block_size` tokens before its targets. So every token of the
split is predicted exactly once, the first from `<|endoftext|>` alone, and each token sees on average half a
block of context (as in nanoGPT's validation loss on random blocks). With `stride < block_size` a
**sliding window** is used instead: windows of `block_size` inputs advance by `stride` tokens and only the
last `stride` targets of each window (all of the first) are scored, so every scored token has at least
`block_size - stride` tokens of context. Either way, every token is scored exactly once and

    loss/token = total nats / tokens,  perplexity = exp(loss/token),
    nats/char  = total nats / characters of the split text,  bits/char = nats/char / ln 2.
"""

from __future__ import annotations

import math


def window_plan(n_targets: int, block_size: int, stride: int | None = None):
    """(input_start, input_end, score_from) per window over a stream seq = [bos] + ids of n_targets ids.

    Window w feeds seq[input_start:input_end] and is scored on targets seq[input_start+1+k] for
    k >= score_from. Every target index 1..n_targets is scored exactly once.
    """
    stride = block_size if not stride or stride >= block_size else stride
    plan = []
    prev_end = 0
    for begin in range(0, max(n_targets, 1), stride):
        end = min(begin + block_size, n_targets)
        plan.append((begin, end, prev_end - begin))
        prev_end = end
        if end >= n_targets:
            break
    return plan


def evaluate_ids(model, ids, n_chars: int, block_size: int, *, bos: int, batch_size: int = 32,
                 stride: int | None = None, device=None, autocast=None, per_token: bool = False) -> dict:
    """Score a 1-D LongTensor of token ids; returns loss/token, perplexity, nats/char, bits/char, counts, and
    with `per_token` also `token_nats`, each token's loss in order."""
    import torch
    import torch.nn.functional as F

    device = device or next(model.parameters()).device
    seq = torch.cat([torch.tensor([bos], dtype=torch.long), ids.to(torch.long).cpu()])
    n_targets = len(ids)
    plan = window_plan(n_targets, block_size, stride)
    was_training = model.training
    model.eval()
    total = 0.0
    counted = 0
    token_nats = torch.zeros(n_targets, dtype=torch.float64) if per_token else None
    # Group windows of equal length so they batch; in practice all but the last are full.
    groups: dict[int, list] = {}
    for start, end, score_from in plan:
        groups.setdefault(end - start, []).append((start, end, score_from))
    with torch.inference_mode():
        for length, windows in groups.items():
            for i in range(0, len(windows), batch_size):
                chunk = windows[i:i + batch_size]
                x = torch.stack([seq[s:e] for s, e, _ in chunk]).to(device)
                y = torch.stack([seq[s + 1:e + 1] for s, e, _ in chunk]).to(device)
                if autocast is not None:
                    with autocast():
                        logits = model(input_ids=x).logits
                else:
                    logits = model(input_ids=x).logits
                nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                      reduction="none").view(len(chunk), length)
                for row, (start, end, score_from) in enumerate(chunk):
                    total += float(nll[row, score_from:].sum(dtype=torch.float64))
                    counted += length - score_from
                    if per_token:  # window targets are ids[start:end]
                        token_nats[start + score_from:end] = nll[row, score_from:].double().cpu()
    if was_training:
        model.train()
    assert counted == n_targets, (counted, n_targets)
    loss = total / max(1, n_targets)
    nats_per_char = total / max(1, n_chars)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700)),
        "nats_per_char": nats_per_char,
        "bits_per_char": nats_per_char / math.log(2),
        "tokens": n_targets,
        "chars": n_chars,
        "total_nats": total,
        "block_size": block_size,
        "stride": stride if stride and stride < block_size else block_size,
        **({"token_nats": token_nats} if per_token else {}),
    }


def costliest_tokens(ids, token_nats, tokenizer, n: int) -> list[dict]:
    """The n token strings that cost the most nats in all, with their count, mean and share of the total."""
    import torch

    sums = torch.zeros(int(ids.max()) + 1, dtype=torch.float64).index_add_(0, ids, token_nats)
    counts = torch.bincount(ids, minlength=len(sums))
    total = float(token_nats.sum())
    return [{"id": i, "token": tokenizer.decode([i]), "count": int(counts[i]), "nats": float(sums[i]),
             "mean": float(sums[i]) / int(counts[i]), "share": float(sums[i]) / total}
            for i in torch.argsort(sums, descending=True)[:n].tolist() if counts[i]]


def run_eval(args) -> int:
    """`bardterm eval`: load a checkpoint and print its figures on one or more splits."""
    import json
    import time

    from bardterm.data import load_dataset
    from bardterm.errors import BardtermError
    from bardterm.training.checkpoint import load_model
    from bardterm.training.tokenizer import bos_id, encode

    from bardterm.hub_cli import resolve_with_progress

    checkpoint = resolve_with_progress(args.checkpoint)  # a directory, or a Hub id downloaded to the cache
    model, tokenizer = load_model(checkpoint, device=args.device, dtype=getattr(args, "dtype", "float32"))
    n_positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    block = args.block_size or _trained_block_size(checkpoint) or n_positions
    if block < 1:
        raise BardtermError(f"invalid --block-size {block}: must be at least 1")
    if block > n_positions:
        raise BardtermError(f"--block-size {block} is longer than the model's context ({n_positions}); use at most {n_positions}")
    if args.worst < 0:
        raise BardtermError(f"invalid --worst {args.worst}: give a number of tokens, at least 1 (0: off)")
    if args.stride is not None and args.stride < 1:
        raise BardtermError(f"invalid --stride {args.stride}: must be at least 1")
    dataset = load_dataset(args.dataset, data_file=args.data_file)
    splits = ["validation", "test", "valtest"] if args.split == "all" else [args.split]
    results = {}
    for split in splits:
        text = dataset.split(split)
        if not text:
            raise BardtermError(f"split {split} of {dataset.name} is empty; nothing to evaluate")
        ids = encode(tokenizer, text)
        t0 = time.perf_counter()
        metrics = evaluate_ids(model, ids, len(text), block, bos=bos_id(tokenizer), batch_size=args.batch_size,
                               stride=args.stride, per_token=bool(args.worst))
        metrics["seconds"] = time.perf_counter() - t0
        if args.worst:
            metrics["costliest"] = costliest_tokens(ids, metrics.pop("token_nats"), tokenizer, args.worst)
        results[split] = metrics
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "dataset": dataset.name, "splits": results}, indent=2))
        return 0
    window = (f"sliding window, stride {args.stride}" if args.stride and args.stride < block
              else "non-overlapping windows")
    print(f"checkpoint {args.checkpoint} on {dataset.name} (block {block}, {window}; every token scored once)")
    print(f"{'split':<11}{'chars':>9}{'tokens':>9}{'loss/token':>12}{'perplexity':>12}{'nats/char':>11}{'bits/char':>11}")
    for split, m in results.items():
        print(f"{split:<11}{m['chars']:>9}{m['tokens']:>9}{m['loss']:>12.4f}{m['perplexity']:>12.3f}"
              f"{m['nats_per_char']:>11.4f}{m['bits_per_char']:>11.4f}")
    for split, m in results.items():
        if "costliest" in m:
            print(f"\n{split}: the {len(m['costliest'])} tokens that cost the most in all")
            print(f"{'token':<16}{'count':>7}{'nats':>10}{'mean':>8}{'share':>8}")
            for row in m["costliest"]:  # repr: quotes, and escapes newlines and control characters
                print(f"{repr(row['token']):<16}{row['count']:>7}{row['nats']:>10.1f}{row['mean']:>8.2f}"
                      f"{row['share']:>8.1%}")
    return 0


def _trained_block_size(checkpoint) -> int | None:
    import json
    from pathlib import Path

    meta = Path(checkpoint) / "bardterm.json"
    try:
        return int(json.loads(meta.read_text())["config"]["block_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
