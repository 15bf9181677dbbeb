"""Which models a batch job runs, and in which task format: flags or a config file.

eval and calibrate share this, so ``--config deployments/local-cpu-chat.yaml`` runs a job on
exactly the models, PRM format and task format the service would use. Without a config the
flags name zoo models or model directories; without ``--task`` a policy whose tokenizer has a
chat template gets ``chat-math``, any other the format its dataset's answers call for.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nexus_ray.config import ConfigError, ModelsConfig, TaskConfig, load_models_config, local_models
from nexus_ray.tasks import datasets
from nexus_ray.tasks.chat import ChatTemplate, ChatTemplateError
from nexus_ray.tasks.format import ARITH, TaskFormat, task_format
from nexus_ray.tasks.grading import answer_kind
from nexus_ray.zoo.registry import resolve


def add_arguments(p: argparse.ArgumentParser, policy: str = "arith-policy") -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a Serve config (deployments/*.yaml) or a models YAML (policy, prm, task);\n"
        "its models and formats replace --engine/--policy/--prm/--task/--prm-format",
    )
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    p.add_argument("--policy", default=policy, help="zoo model name or model directory")
    p.add_argument(
        "--prm",
        default=None,
        help="zoo model name or model directory (default: arith-prm-rewrite on hf, arith-prm on vllm)",
    )
    p.add_argument(
        "--task",
        choices=["arith", "chat-math"],
        default=None,
        help="prompt/step/answer format (default: chat-math when the policy has a chat template)",
    )
    p.add_argument(
        "--prm-format",
        choices=["auto", "token", "local", "qwen-prm"],
        default=None,
        help="default: auto (the format the PRM's config.json declares, else token or qwen-prm)",
    )


def resolve_models(
    args: argparse.Namespace, examples: list[datasets.Example]
) -> tuple[ModelsConfig, TaskFormat]:
    """The models config and the task format of a job; ConfigError/ValueError with a clear message."""
    if args.config is not None:
        models = load_models_config(args.config)
    else:
        models = local_models(args.engine, args.policy, args.prm)
        if args.prm_format is not None:
            models.prm.format = args.prm_format
        task = args.task or ("chat-math" if has_chat_template(args.policy) else None)
        if task is None:  # no format named: the one the dataset's answers call for (Q: lines)
            guessed = (
                ARITH
                if answer_kind([e.answer for e in examples]) == "arith"
                else TaskFormat(answer_kind="math")
            )
            return models, guessed
        models.task = TaskConfig(format=task)
    try:
        return models, task_format(models.task, resolve(models.policy.model))
    except (ChatTemplateError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None


def has_chat_template(policy: str) -> bool:
    try:
        ChatTemplate.from_model_dir(resolve(policy))
    except (ChatTemplateError, FileNotFoundError):
        return False
    return True
