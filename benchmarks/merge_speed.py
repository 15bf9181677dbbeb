"""Merge speed and peak memory: nexus_ray vs. mergekit, side by side, same checkpoints, CPU.

    python benchmarks/merge_speed.py --layers 3            # 0.27 B params: ties / dare_ties / della / linear
    python benchmarks/merge_speed.py                       # 0.49 B params
    python benchmarks/merge_speed.py --layers 2 --methods ties --repeats 1   # a quick check

Generates (once, seeded, under --data) a random Llama-shaped bf16 base and three "fine-tunes"
(base + small noise), then runs ``mergekit-yaml`` (from .venv-mergekit, with ``--lazy-unpickle``)
and ``python -m nexus_ray.jobs.merge`` with --workers 1 and 2 as separate processes, each on the
same config (weights 0.5/0.3/0.2, density 0.5), interleaved: every repeat runs every method and
tool in turn, so load that comes and goes hits them alike; a cell is the median over repeats.
Wall time is the process's (start-up included); peak memory is the highest sum of RSS over the
process and all its children, sampled every 0.1 s (memory-mapped input pages count, for both).

The I/O floor, measured in each repeat too: reading every input byte from the page cache and
writing the output's bytes with fsync, in one process. Before timing, one untimed nexus_ray merge
per method compiles the fused kernels into numba's cache (a fresh clone's first merge pays this
once); its time is recorded as ``first_run_s``. Writes benchmarks/results/merge/merge_speed.json
(or --out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
import yaml
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "merge" / "merge_speed.json"
MERGEKIT_YAML = ROOT / ".venv-mergekit" / "bin" / "mergekit-yaml"


def llama_shapes(layers: int, hidden: int, inter: int, vocab: int, kv_dim: int) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    return shapes


def make_checkpoints(data: Path, args) -> list[Path]:
    """base + 3 experts, bf16, one safetensors file each (skipped when already there)."""
    shapes = llama_shapes(args.layers, args.hidden, args.intermediate, args.vocab, args.hidden // 4)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": args.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "hidden_act": "silu",
    }
    names = ["base", "expert0", "expert1", "expert2"]
    dirs = [data / n for n in names]
    stamp = data / f"shapes-{args.layers}-{args.hidden}-{args.intermediate}-{args.vocab}.done"
    if stamp.exists():
        return dirs
    shutil.rmtree(data, ignore_errors=True)
    g = torch.Generator().manual_seed(0)
    base = {}
    for name, shape in shapes.items():
        base[name] = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    for i, d in enumerate(dirs):
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(config, indent=1))
        if i == 0:
            tensors = base
        else:
            tensors = {
                n: (t.float() + 0.002 * torch.randn(t.shape, generator=g)).to(torch.bfloat16)
                for n, t in base.items()
            }
        save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
        del tensors
    stamp.touch()
    return dirs


def config_for(method: str, dirs: list[Path]) -> dict:
    models = []
    for d, w in zip(dirs[1:], (0.5, 0.3, 0.2)):
        params = {"weight": w}
        if method != "linear":
            params["density"] = 0.5
        models.append({"model": str(d), "parameters": params})
    cfg = {"merge_method": method, "models": models, "dtype": "bfloat16"}
    if method != "linear":
        cfg["base_model"] = str(dirs[0])
    return cfg


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Wall seconds and peak RSS (process tree) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(peak / 1e9, 3)}


def io_floor(dirs: list[Path], out_bytes: int, scratch: Path) -> float:
    """Seconds to read every input safetensors from the page cache and write ``out_bytes`` + fsync."""
    start = time.perf_counter()
    buf = bytearray(1 << 24)
    for d in dirs:
        with open(d / "model.safetensors", "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    path = scratch / "io-floor.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = out_bytes
        while left > 0:
            left -= os.write(fd, memoryview(buf)[: min(left, len(buf))])
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--layers", type=int, default=8, help="3 -> 0.27 B parameters, 8 -> 0.49 B")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--methods", default="ties,dare_ties,della,linear")
    parser.add_argument("--workers", default="1,2", help="nexus_ray --workers values to run")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; cells are medians")
    parser.add_argument("--data", type=Path, default=Path("/tmp/nexus_merge_bench"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not MERGEKIT_YAML.exists():
        sys.exit(f"{MERGEKIT_YAML} is missing: run `make setup-mergekit`")

    dirs = make_checkpoints(args.data, args)
    params = sum(
        t.numel()
        for t in [
            torch.empty(s, device="meta")
            for s in llama_shapes(
                args.layers, args.hidden, args.intermediate, args.vocab, args.hidden // 4
            ).values()
        ]
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)  # this machine alone
    methods, workers = args.methods.split(","), args.workers.split(",")
    configs = {}
    for method in methods:
        configs[method] = args.data / f"{method}.yaml"
        configs[method].write_text(yaml.safe_dump(config_for(method, dirs)))

    def nexus(method: str, w: str) -> dict:
        out = args.data / f"out-nexus-{w}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "nexus_ray.jobs.merge", str(configs[method]), str(out), "--workers", w]
        return measure(cmd, env)

    first_run = {m: nexus(m, "1")["wall_s"] for m in methods}  # compiles the kernels once (cached)
    print(f"first runs (kernels compiled into numba's cache if not there): {first_run}", flush=True)
    samples: dict[str, dict[str, list[dict]]] = {m: {} for m in methods}
    floors = []
    for r in range(args.repeats):
        floors.append(round(io_floor(dirs, params * 2, args.data), 2))
        for method in methods:
            out = args.data / "out-mergekit"
            shutil.rmtree(out, ignore_errors=True)
            runs = {
                "mergekit": measure([str(MERGEKIT_YAML), str(configs[method]), str(out), "--lazy-unpickle"])
            }
            for w in workers:
                runs[f"nexus_ray_w{w}"] = nexus(method, w)
            for tool, run in runs.items():
                samples[method].setdefault(tool, []).append(run)
            print(json.dumps({"repeat": r, "method": method, **runs}), flush=True)
    floor = round(statistics.median(floors), 2)
    rows = []
    for method in methods:
        row = {"method": method}
        for tool, runs in samples[method].items():
            row[tool] = {
                "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
                "peak_rss_gb": round(statistics.median(r["peak_rss_gb"] for r in runs), 3),
                "runs": runs,
            }
        for tool in samples[method]:
            row[tool]["speedup_vs_mergekit"] = round(row["mergekit"]["wall_s"] / row[tool]["wall_s"], 2)
            row[tool]["x_io_floor"] = round(row[tool]["wall_s"] / floor, 1)
        rows.append(row)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 1e9:.0f} GB RAM"
        ),
        "load_average_at_end": os.getloadavg(),
        "parameters": params,
        "checkpoints": "base + 3 experts, bf16, Llama-shaped, random",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "repeats": args.repeats,
        "io_floor_s": floor,
        "io_floor_runs_s": floors,
        "first_run_s": first_run,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"\n{params / 1e9:.2f} B parameters per checkpoint; median wall s / peak RSS GB over {args.repeats} "
        f"interleaved repeats (speed-up vs. mergekit; x the I/O floor of {floor} s)\n"
    )
    print("| method | mergekit | " + " | ".join(f"nexus_ray --workers {w}" for w in workers) + " |")
    print("|---|---|" + "---|" * len(workers))
    for r in rows:
        m = r["mergekit"]
        cells = [f"{m['wall_s']} s / {m['peak_rss_gb']} GB ({m['x_io_floor']}x floor)"]
        for w in workers:
            x = r[f"nexus_ray_w{w}"]
            cells.append(
                f"{x['wall_s']} s / {x['peak_rss_gb']} GB "
                f"(**{x['speedup_vs_mergekit']}x**; {x['x_io_floor']}x floor)"
            )
        print(f"| {r['method']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
