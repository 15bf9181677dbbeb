"""The ``nexus-ray`` command line."""

from __future__ import annotations

import asyncio
import json

import typer

from nexus_ray.search import registry

PRM_FORMATS = ("auto", "token", "local", "qwen-prm")

app = typer.Typer(
    help="nexus_ray: test-time compute allocation for LLM reasoning, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
zoo_app = typer.Typer(help="The built-in tiny models (the embedded default).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
rope_app = typer.Typer(
    help="RoPE context extension: evaluate scalings at long contexts.", no_args_is_help=True
)
app.add_typer(rope_app, name="rope")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def solve(
    problem: str = typer.Argument(
        ...,
        help='A problem: "12+7*3-5" for the arith zoo, free text ("What is 3/4 of 12?") for a chat model.',
    ),
    strategy: str = typer.Option("greedy", help=f"{', '.join(registry.names())}."),
    budget: int = typer.Option(
        8, min=1, max=1024, help=f"Budget in generations (ignored by {', '.join(registry.without_budget())})."
    ),
    policy: str = typer.Option("arith-policy", help="Zoo model name or HF model directory."),
    prm: str | None = typer.Option(
        None, help="Zoo PRM name or HF model directory (default: arith-prm-rewrite on hf, arith-prm on vllm)."
    ),
    seed: int = typer.Option(0, help="Sampling seed."),
    engine: str = typer.Option("hf", help="hf (transformers) or vllm (needs the vllm package)."),
    task: str = typer.Option(
        "auto", help="arith or chat-math (auto: chat-math when the policy's tokenizer has a chat template)."
    ),
    prm_format: str = typer.Option(
        "auto",
        help="auto (what the PRM's config.json declares), token, local (the arith zoo PRM's step "
        "checker) or qwen-prm (Qwen2.5-Math-PRM's).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Solve one problem and print the solution, the answer and the compute it took."""
    from nexus_ray.config import TaskConfig, local_models
    from nexus_ray.engines import build_policy_engine, build_reward_engine
    from nexus_ray.jobs.models import has_chat_template
    from nexus_ray.search.base import ScoredSearchParams, SearchContext
    from nexus_ray.tasks import arith
    from nexus_ray.tasks.format import task_format
    from nexus_ray.zoo.registry import resolve

    if engine not in ("hf", "vllm"):
        _fail(f"--engine must be hf or vllm, got {engine!r}")
    if task not in ("auto", "arith", "chat-math") or prm_format not in PRM_FORMATS:
        _fail(
            f"--task: auto, arith or chat-math; --prm-format: {', '.join(PRM_FORMATS)} "
            f"(got {task}, {prm_format})"
        )
    try:
        if task == "auto":
            task = "chat-math" if has_chat_template(policy) else "arith"
        fmt = task_format(TaskConfig(format=task), resolve(policy))  # type: ignore[arg-type]
        question = fmt.parse(problem)
        _, params = registry.build_params(strategy, budget)  # bad names fail here, before any model loads
        models = local_models(engine, policy, prm)  # type: ignore[arg-type]
        models.prm.format = prm_format  # type: ignore[assignment]
        policy_engine = build_policy_engine(models.policy)
        # Only strategies with scoring knobs read a PRM.
        prm_engine = build_reward_engine(models.prm) if isinstance(params, ScoredSearchParams) else None
    except (FileNotFoundError, ValueError, RuntimeError) as err:  # RuntimeError: vLLM missing
        _fail(str(err))
    ctx = SearchContext.for_problem(policy_engine, prm_engine, fmt, question, seed=seed)
    try:
        result = asyncio.run(registry.run(strategy, ctx, budget))
    finally:
        for engine_ in (policy_engine, prm_engine):
            if engine_ is not None:
                engine_.shutdown()
    led = result.ledger
    cost = (
        f"tokens: {led.policy_prefill_tokens} prompt + {led.policy_generated_tokens} generated"
        + (f" + {led.prm_tokens} PRM" if led.prm_tokens else "")
        + f"  ({led.policy_token_equivalents:.0f} policy-token equivalents)"
    )
    if task != "arith":  # free-form: no gold answer to check against
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=1))
            return
        typer.echo(f"{question}\n\n{result.solution.strip()}\n\nanswer: {result.answer}\n{cost}")
        return
    prompt = ctx.prompt
    gold = arith.evaluate(question)
    verdict = arith.check(question, result.solution)
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "correct": verdict.correct, "gold": str(gold)}, indent=1))
        return
    typer.echo(prompt + result.solution.rstrip("\n"))
    typer.echo("")
    mark = "correct" if verdict.correct else f"wrong (gold {gold}"
    if not verdict.correct and verdict.first_wrong_step is not None:
        mark += f", first wrong step {verdict.first_wrong_step + 1}"
    typer.echo(f"answer: {result.answer}  [{mark}{')' if not verdict.correct else ''}]")
    typer.echo(cost)


@app.command()
def demo(
    per_level: int = typer.Option(10, min=1, help="Problems per difficulty level (2 per level are shown)."),
    n: int = typer.Option(8, min=1, help="Samples for best-of-n."),
    seed: int = typer.Option(0),
    engine: str = typer.Option("hf", help="hf (transformers) or vllm (needs the vllm package)."),
) -> None:
    """Greedy vs. best-of-n with the PRM on built-in problems of rising difficulty."""
    from nexus_ray import demo as demo_module

    if engine not in ("hf", "vllm"):
        _fail(f"--engine must be hf or vllm, got {engine!r}")
    demo_module.main(per_level, n, seed, engine)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def eval(ctx: typer.Context) -> None:
    """Run strategies x budgets over a dataset; records, summary and plot in results/<run>/.

    nexus-ray eval --dataset arith-test --strategy beam,weighted --budget 4,16,64 (see eval --help)
    """
    from nexus_ray.jobs import eval as eval_job

    raise typer.Exit(eval_job.main(ctx.args))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def calibrate(ctx: typer.Context) -> None:
    """Calibrate the planner: sample pools on a calibration set, then the plan table (JSON).

    nexus-ray calibrate --dataset arith-calib --estimator learned (see calibrate --help)
    """
    from nexus_ray.jobs import calibrate as calibrate_job

    raise typer.Exit(calibrate_job.main(ctx.args))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def merge(ctx: typer.Context) -> None:
    """Merge fine-tuned models from a mergekit-style YAML: ties, dare, della, slerp, ...

    nexus-ray merge config.yaml out/ --workers 2 (see merge --help)
    """
    from nexus_ray.jobs import merge as merge_job

    raise typer.Exit(merge_job.main(ctx.args))


@app.command()
def serve(
    config: str = typer.Option("", help="A Serve config YAML (default: deployments/local-cpu.yaml)."),
    port: int = typer.Option(0, min=0, max=65535, help="HTTP port (default: the config's, usually 8000)."),
    smoke: bool = typer.Option(False, "--smoke", help="Send a few real requests, print them, stop."),
) -> None:
    """Run the HTTP service: /v1/solve, /v1/chat/completions, /v1/models, /healthz.

    Starts a local Ray cluster (or joins the one at RAY_ADDRESS), deploys the config's
    'nexus' application and serves until Ctrl-C. The same YAML works with `serve run`.
    """
    import time
    from pathlib import Path

    from nexus_ray.config import ConfigError, load_service_config
    from nexus_ray.serving import local

    path = Path(config) if config else local.DEFAULT_CONFIG
    try:
        service, _ = load_service_config(path)
        url = local.start(path, port or None)
    except (ConfigError, ValueError, TimeoutError) as err:
        _fail(str(err))
    try:
        if smoke:
            typer.echo(f"service up at {url}; a few real requests:")
            ok = local.smoke(url, service, typer.echo)
            raise typer.Exit(0 if ok else 1)
        typer.echo(f"nexus_ray serving at {url} (Ctrl-C to stop). Try:")
        typer.echo("  " + local.curl_example(url, service.api_keys_env))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()


@zoo_app.command("list")
def zoo_list() -> None:
    """List the built-in models with their size and where they live."""
    from nexus_ray.zoo.registry import list_models

    for m in list_models():
        params = f"{m.parameters / 1e6:.2f}M params" if m.parameters else "not built"
        typer.echo(f"{m.name:<14} {params:<14} {m.size_mb:5.1f} MB  {m.description}")
        typer.echo(f"{'':<14} {m.path}")


@rope_app.command("eval")
def rope_eval(
    model: str = typer.Option(
        "rope-base", help="Zoo model name or HF model directory (char-level tokenizer)."
    ),
    methods: str = typer.Option(
        "none,linear,ntk,dynamic,yarn",
        help="Comma-separated: none, linear, ntk, dynamic, yarn. "
        "Each runs at factor = length / trained context.",
    ),
    rope: str = typer.Option(
        "",
        help='A scaling of your own, as JSON, run at every length as line "custom", e.g. '
        '\'{"rope_type": "yarn", "factor": 8, "beta_fast": 16}\'.',
    ),
    lengths: str = typer.Option(
        "", help="Comma-separated context lengths in tokens (default: 1x,2x,4x,8x the trained context)."
    ),
    documents: int = typer.Option(8, min=1, help="Perplexity documents per length."),
    trials: int = typer.Option(
        10, min=1, help="Passkey examples per length and key depth (depths: start, middle, end)."
    ),
    seed: int = typer.Option(0, help="Seed of the documents and passkeys (fixed inputs for every method)."),
    out: str = typer.Option("results/rope-eval", help="Directory for rope_eval.json and rope_eval.png."),
) -> None:
    """Perplexity and passkey retrieval of a model under RoPE scalings, by context length.

    Every method sees the same seeded documents (arith + passkey text) and passkeys.

    Writes OUT/rope_eval.json (per method and length: perplexity, passkey accuracy by key
    depth, answer NLL; the best method per length) and OUT/rope_eval.png; prints a table.

    Example: nexus-ray rope eval --lengths 128,256,512,1024 --rope '{"rope_type": "yarn", "factor": 8}'
    """
    from pathlib import Path

    from pydantic import ValidationError

    from nexus_ray.config import RopeConfig
    from nexus_ray.rope import evaluate as rope_evaluate
    from nexus_ray.rope.apply import load_config
    from nexus_ray.zoo.registry import resolve

    try:
        path = resolve(model)
        original = load_config(path, None).max_position_embeddings
        names = [m.strip() for m in methods.split(",") if m.strip()]
        lines = rope_evaluate.standard_lines(names, original)
        if rope:
            custom = RopeConfig.model_validate_json(rope)
            lines["custom"] = lambda _length: custom
        if lengths and not all(x.strip().isdigit() for x in lengths.split(",")):
            raise ValueError(f"--lengths must be comma-separated integers, got {lengths!r}")
        sizes = [int(x) for x in lengths.split(",")] if lengths else [original * k for k in (1, 2, 4, 8)]
        if not lines:
            raise ValueError("no method to evaluate: give --methods or --rope")
        if min(sizes) < 32:
            raise ValueError(f"lengths must be at least 32 tokens, got {min(sizes)}")
    except ValidationError as err:
        _fail(f"--rope: {'; '.join(e['msg'] for e in err.errors())}")
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    try:
        summary = rope_evaluate.compare(
            path, original, sizes, lines, documents_per_length=documents, trials=trials, seed=seed
        )
    except ValueError as err:
        _fail(str(err))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rope_eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    rope_evaluate.plot(summary, out_dir / "rope_eval.png")
    typer.echo(rope_evaluate.table(summary))
    typer.echo(f"\nwrote {out_dir / 'rope_eval.json'} and {out_dir / 'rope_eval.png'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
