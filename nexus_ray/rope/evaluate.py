"""Long-context evaluation of a RoPE scaling: perplexity and passkey retrieval by length.

``evaluate(model_dir, rope, lengths)`` is the whole protocol in one call (a Ray Tune
objective calls it per trial); ``compare`` runs it for several methods and ``plot`` draws
the result. Both measures use fixed, seeded inputs generated from the zoo's tasks
(``nexus_ray.tasks.passkey``), so every method and every trial sees the same tokens.

- Perplexity (jquesnelle/yarn's protocol): sliding windows of ``window`` tokens moved by
  ``stride``, each scoring only the tokens the previous window did not; the result is
  exp(mean of per-window mean losses). By default the window is the length under test and
  each document is exactly that long, so one window covers a document (the paper's
  "truncate" mode).
- Passkey: the key at several depths of the filler, ``trials`` examples per (length, depth).
  Success is greedy decoding reproducing the key; it is read from one teacher-forced pass
  (every answer token the argmax, which is exactly when greedy decoding returns the key), so
  no generation loop is needed. The mean negative log-likelihood of the answer tokens
  (LongRoPE2's needle perplexity) is reported too: a smoother signal for a search.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nexus_ray.config import RopeConfig
from nexus_ray.rope.apply import load_causal_lm
from nexus_ray.tasks import passkey

DEFAULT_DEPTHS = (0.0, 0.5, 1.0)
METHODS = ("none", "linear", "ntk", "dynamic", "yarn")


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text).input_ids


def documents(tokenizer, length: int, count: int, seed: int) -> list[list[int]]:
    """``count`` task documents of exactly ``length`` tokens (``<s>`` included), fixed by
    ``seed`` and ``length`` alone. Passkey examples in them span up to the whole length."""
    rng = random.Random(f"doc-{seed}-{length}")
    docs = []
    for _ in range(count):
        ids = _tokens(tokenizer, passkey.document(length - 1, rng, max_passkey_chars=length - 1))
        if len(ids) != length:
            raise ValueError("evaluation needs a one-token-per-character tokenizer (the zoo's)")
        docs.append(ids)
    return docs


@torch.inference_mode()
def sliding_window_nll(model, ids: list[int], window: int, stride: int) -> list[float]:
    """Per-window mean NLL over ``ids``: each window scores only its tokens past the previous end."""
    losses, prev_end = [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        chunk = torch.tensor([ids[begin:end]])
        labels = chunk.clone()
        labels[:, : -(end - prev_end)] = -100  # already scored by an earlier window
        losses.append(model(input_ids=chunk, labels=labels).loss.item())
        prev_end = end
        if end == len(ids):
            break
    return losses


@torch.inference_mode()
def passkey_batch(model, tokenizer, length: int, depth: float, trials: int, seed: int) -> dict[str, float]:
    """Accuracy and answer NLL over ``trials`` examples of ``length`` tokens, key at ``depth``."""
    rng = random.Random(f"passkey-{seed}-{length}-{depth}")
    rows, starts, answers = [], [], []
    for _ in range(trials):
        example = passkey.passkey(length - 1, depth, rng)
        prompt = _tokens(tokenizer, example.prompt)
        answer = _tokens(tokenizer, example.answer)[1:]  # without <s>
        rows.append(prompt + answer)
        starts.append(len(prompt))
        answers.append(answer)
    logits = model(input_ids=torch.tensor(rows)).logits
    logprobs = torch.log_softmax(logits.float(), -1)
    correct, nll = 0, 0.0
    for r, (start, answer) in enumerate(zip(starts, answers)):
        positions = torch.arange(start - 1, start - 1 + len(answer))  # logits that predict the answer
        target = torch.tensor(answer)
        correct += bool((logits[r, positions].argmax(-1) == target).all())
        nll -= logprobs[r, positions, target].mean().item()
    return {"accuracy": correct / trials, "answer_nll": nll / trials}


def evaluate(
    model_dir: str | Path,
    rope: RopeConfig | None,
    lengths: list[int],
    *,
    documents_per_length: int = 8,
    trials: int = 10,
    depths: tuple[float, ...] = DEFAULT_DEPTHS,
    window: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    model=None,
) -> dict[str, Any]:
    """Perplexity and passkey retrieval of ``model_dir`` under ``rope`` at each length.

    Lengths are in tokens (``<s>`` included) and run in increasing order, which transformers'
    dynamic NTK needs (it keeps the largest base it has seen). ``window``/``stride`` default to
    the length under test. Pass ``model`` to reuse one already loaded with this scaling.
    """
    from transformers import AutoTokenizer

    if not lengths or min(lengths) < passkey.MIN_PASSKEY_CHARS + 1:
        raise ValueError(f"lengths must be at least {passkey.MIN_PASSKEY_CHARS + 1} tokens, got {lengths}")
    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = model if model is not None else load_causal_lm(model_dir, rope)
    out: dict[str, Any] = {
        "model": str(model_dir),
        "rope": rope.model_dump(exclude_none=True) if rope else None,
        "perplexity": {},
        "passkey": {},
    }
    for length in sorted(set(lengths)):
        win = window or length
        losses = [
            loss
            for doc in documents(tokenizer, length, documents_per_length, seed)
            for loss in sliding_window_nll(model, doc, win, stride or win)
        ]
        out["perplexity"][str(length)] = math.exp(sum(losses) / len(losses))
        by_depth = {str(d): passkey_batch(model, tokenizer, length, d, trials, seed) for d in depths}
        out["passkey"][str(length)] = {
            "accuracy": sum(r["accuracy"] for r in by_depth.values()) / len(by_depth),
            "answer_nll": sum(r["answer_nll"] for r in by_depth.values()) / len(by_depth),
            "by_depth": by_depth,
        }
    out["seconds"] = round(time.time() - start, 2)
    return out


def method_config(method: str, factor: float) -> RopeConfig | None:
    """A standard method at ``factor`` (target / original) with its default parameters."""
    if method == "none":
        return None
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return RopeConfig(rope_type=method, factor=factor)  # type: ignore[arg-type]


Line = Callable[[int], "RopeConfig | None"]


def standard_lines(methods: list[str], original: int) -> dict[str, Line]:
    """Each method at factor = length / original (at least 1) for each length it is evaluated at."""
    for method in methods:
        method_config(method, 1.0)  # unknown names fail before any evaluation
    return {m: (lambda length, m=m: method_config(m, max(1.0, length / original))) for m in methods}


def compare(
    model_dir: str | Path, original: int, lengths: list[int], lines: dict[str, Line], **kwargs: Any
) -> dict[str, Any]:
    """``evaluate`` for every line (a name and the scaling it uses at each length) at every length,
    with a progress bar, and the best lines per length (lowest perplexity; highest passkey
    accuracy, ties broken by answer NLL; every line tied for the best is named)."""
    from tqdm import tqdm

    results: dict[str, Any] = {name: {"perplexity": {}, "passkey": {}, "rope": {}} for name in lines}
    bar = tqdm(total=len(lines) * len(lengths), desc="rope eval", unit="run")
    for name, line in lines.items():
        for length in sorted(lengths):
            bar.set_postfix_str(f"{name} @ {length}")
            r = evaluate(model_dir, line(length), [length], **kwargs)
            for key in ("perplexity", "passkey"):
                results[name][key] |= r[key]
            results[name]["rope"][str(length)] = r["rope"]
            bar.update()
    bar.close()
    best = {}
    for length in map(str, sorted(lengths)):
        ppl = {m: round(results[m]["perplexity"][length], 9) for m in results}
        key = {
            m: (r["passkey"][length]["accuracy"], -round(r["passkey"][length]["answer_nll"], 9))
            for m, r in results.items()
        }
        best[length] = {  # every method tied for the best (at factor 1 they all are)
            "perplexity": [m for m in results if ppl[m] == min(ppl.values())],
            "passkey": [m for m in results if key[m] == max(key.values())],
        }
    return {
        "model": str(model_dir),
        "original_context": original,
        "lengths": sorted(lengths),
        "methods": results,
        "best": best,
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    """Perplexity (log scale) and passkey accuracy vs. context length, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = summary["lengths"]
    fig, (ax_ppl, ax_key) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, r in summary["methods"].items():
        ax_ppl.plot(lengths, [r["perplexity"][str(n)] for n in lengths], marker="o", label=method)
        ax_key.plot(lengths, [r["passkey"][str(n)]["accuracy"] for n in lengths], marker="o", label=method)
    for ax in (ax_ppl, ax_key):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlabel("context length (tokens)")
        ax.axvline(summary["original_context"], color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    ax_ppl.set_yscale("log")
    ax_ppl.set_ylabel("perplexity")
    ax_ppl.set_title("task documents, one window per document")
    ax_key.set_ylabel("passkey accuracy")
    ax_key.set_ylim(-0.03, 1.03)
    ax_key.set_title("passkey retrieval (key at start, middle, end)")
    ax_key.legend()
    name, trained = Path(summary["model"]).name, summary["original_context"]
    fig.suptitle(f"RoPE scaling on {name} (trained at {trained} tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(summary: dict[str, Any]) -> str:
    """A Markdown table: perplexity / passkey accuracy per method and length, best per length."""
    lengths = [str(n) for n in summary["lengths"]]
    rows = [
        "| method | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
        "|---" * (len(lengths) + 1) + "|",
    ]
    for method, r in summary["methods"].items():
        cells = [f"{r['perplexity'][n]:.3f} / {r['passkey'][n]['accuracy']:.0%}" for n in lengths]
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    best = summary["best"]

    def names(tied: list[str]) -> str:
        return "all equal" if len(tied) == len(summary["methods"]) > 1 else ", ".join(tied)

    rows.append(
        "| **best** | "
        + " | ".join(f"{names(best[n]['perplexity'])} / {names(best[n]['passkey'])}" for n in lengths)
        + " |"
    )
    return "\n".join(rows)
