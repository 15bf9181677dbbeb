"""A mergekit-style YAML config -> a validated per-tensor plan.

Accepted keys (mergekit's ``models`` form): ``merge_method``, ``base_model``, ``models`` (each
``model`` with optional ``parameters``), global ``parameters``, ``dtype``, ``out_dtype``,
``tokenizer_source`` (``base`` or a model path). A parameter value is a number, a gradient
(a list of numbers interpolated over the layer index, t = layer / (layers - 1); tensors
outside the layers take t = 0), or a list of ``{filter, value}`` entries where the first
entry whose ``filter`` is a substring of the tensor name (or is missing / ``*``) applies.

Everything is checked here, from the safetensors headers alone, before any tensor is read
or written: unknown method or keys, missing models, tensor names or shapes that differ,
densities outside (0, 1], DELLA's density +/- epsilon outside (0, 1). Each error names the
key, model or tensor at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nexus_ray.config import ConfigError, read_yaml
from nexus_ray.merge import methods
from nexus_ray.merge.io import ModelReader
from nexus_ray.zoo.registry import resolve

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
TOP_KEYS = {
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "name",
}
_LAYER = re.compile(r"\.layers\.(\d+)\.")


class MergeConfigError(ValueError):
    """A config that cannot be merged; the message names the key, model or tensor."""


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    model_params: dict[str, list[float]]  # per non-base model, in ``Plan.models`` order
    global_params: dict[str, Any]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.out_dtype.itemsize


@dataclass(frozen=True)
class Plan:
    method: methods.Method
    base: Path | None
    models: tuple[Path, ...]  # the merged inputs besides the base
    tensors: tuple[TensorPlan, ...]
    work_dtype: torch.dtype | None  # inputs are cast to it before merging (mergekit's ``dtype``)
    out_dtype: torch.dtype | None  # None: each tensor keeps its reference model's dtype
    config_source: Path  # config.json and generation_config.json come from here
    tokenizer_source: Path


def load_config(config: dict | str | Path) -> dict:
    """A config as given, or read from a YAML file (``config.read_yaml``'s errors, as ours)."""
    if isinstance(config, dict):
        return config
    try:
        return read_yaml(Path(config))
    except ConfigError as err:
        raise MergeConfigError(str(err)) from None


def _model_path(ref: Any, where: str) -> Path:
    if not isinstance(ref, (str, Path)):
        raise MergeConfigError(f"{where}: expected a model path, got {ref!r}")
    try:
        path = resolve(str(ref))
    except FileNotFoundError as err:
        raise MergeConfigError(f"{where}: {err}") from None
    if not ((path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists()):
        raise MergeConfigError(f"{where}: {path} has no model.safetensors or model.safetensors.index.json")
    return path


def _t_of(name: str, num_layers: int) -> float:
    m = _LAYER.search(name)
    if not m or num_layers <= 1:
        return 0.0
    return int(m.group(1)) / (num_layers - 1)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def resolve_value(setting: Any, tensor_name: str, t: float, key: str) -> Any:
    """A parameter's value for one tensor: scalar, gradient over layers, or filter list."""
    if isinstance(setting, (bool, int, float)):
        return setting
    if isinstance(setting, list) and setting and all(_is_number(v) for v in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    if isinstance(setting, list) and all(isinstance(v, dict) for v in setting):
        for entry in setting:
            unknown = set(entry) - {"filter", "value"}
            if unknown or "value" not in entry:
                raise MergeConfigError(
                    f"parameter {key!r}: filter entries are {{filter, value}}, got {entry!r}"
                )
            f = entry.get("filter")
            if f is None or f == "*" or f in tensor_name:
                return resolve_value(entry["value"], tensor_name, t, key)
        return None
    raise MergeConfigError(
        f"parameter {key!r}: expected a number, a list of numbers or {{filter, value}} entries, "
        f"got {setting!r}"
    )


def build(config: dict | str | Path) -> Plan:
    cfg = load_config(config)
    unknown = set(cfg) - TOP_KEYS
    if "slices" in cfg or "modules" in cfg:
        raise MergeConfigError(
            "only the 'models' form of mergekit configs is supported (not 'slices'/'modules')"
        )
    if unknown:
        raise MergeConfigError(f"unknown top-level key(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    if "merge_method" not in cfg:
        raise MergeConfigError("missing key 'merge_method'")
    try:
        method = methods.get(str(cfg["merge_method"]))
    except ValueError as err:
        raise MergeConfigError(str(err)) from None
    entries = cfg.get("models")
    if not isinstance(entries, list) or not entries:
        raise MergeConfigError("'models' must be a non-empty list of {model, parameters}")

    base = _model_path(cfg["base_model"], "base_model") if cfg.get("base_model") else None
    if method.needs_base and base is None:
        raise MergeConfigError(f"merge_method {method.name} needs 'base_model'")
    inputs: list[tuple[Path, dict]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "model" not in entry:
            raise MergeConfigError(
                f"models[{i}]: expected {{model: <path>, parameters: {{...}}}}, got {entry!r}"
            )
        path = _model_path(entry["model"], f"models[{i}].model")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise MergeConfigError(f"models[{i}].parameters must be a mapping")
        if method.needs_base and path == base:
            continue  # mergekit lists the base among the models; it is not a task vector
        for key in params:
            if key not in method.model_params:
                raise MergeConfigError(
                    f"models[{i}].parameters.{key}: not a per-model parameter of {method.name} "
                    f"(known: {sorted(method.model_params) or 'none'})"
                )
        inputs.append((path, params))
    if not inputs:
        raise MergeConfigError("no model to merge besides the base_model")
    if method.name == "slerp" and len(inputs) != 1:
        raise MergeConfigError(
            f"slerp needs base_model and exactly one other model, got {len(inputs)} others"
        )

    global_cfg = cfg.get("parameters") or {}
    if not isinstance(global_cfg, dict):
        raise MergeConfigError("'parameters' must be a mapping")
    for key in global_cfg:
        if key not in method.global_params and key not in method.model_params:
            raise MergeConfigError(
                f"parameters.{key}: not a parameter of {method.name} "
                f"(known: {sorted(set(method.global_params) | set(method.model_params))})"
            )

    work_dtype = _dtype(cfg, "dtype")
    out_dtype = _dtype(cfg, "out_dtype") or work_dtype

    reference = base or inputs[0][0]
    ref_reader = ModelReader(reference)
    others = [p for p, _ in inputs if p != reference]
    readers = {p: ModelReader(p) for p in others}
    names = ref_reader.names()
    for path, reader in readers.items():
        got = set(reader.names())
        missing, extra = sorted(set(names) - got), sorted(got - set(names))
        if missing:
            raise MergeConfigError(
                f"tensor {missing[0]!r} of {reference} is missing from {path} ({len(missing)} missing)"
            )
        if extra:
            raise MergeConfigError(
                f"tensor {extra[0]!r} of {path} is not in {reference} ({len(extra)} extra)"
            )
        for name in names:
            if reader.shape(name) != ref_reader.shape(name):
                raise MergeConfigError(
                    f"tensor {name!r}: shape {reader.shape(name)} in {path} "
                    f"!= {ref_reader.shape(name)} in {reference}"
                )
    num_layers = 1 + max((int(m.group(1)) for n in names if (m := _LAYER.search(n))), default=0)

    tensors = []
    for name in names:
        t = _t_of(name, num_layers)
        model_params: dict[str, list[float]] = {}
        for key, default in method.model_params.items():
            values = []
            for i, (path, params) in enumerate(inputs):
                setting = params.get(key, global_cfg.get(key))
                value = resolve_value(setting, name, t, key) if setting is not None else None
                if value is None:
                    value = default
                if value is None:
                    raise MergeConfigError(
                        f"model {path}: parameter {key!r} is required by {method.name} (tensor {name!r})"
                    )
                values.append(float(value))
            model_params[key] = values
        global_params = {}
        for key, default in method.global_params.items():
            value = resolve_value(global_cfg[key], name, t, key) if key in global_cfg else None
            value = default if value is None else value
            if value is None:
                raise MergeConfigError(f"parameters.{key} is required by {method.name} (tensor {name!r})")
            global_params[key] = value
        _check_ranges(method.name, name, inputs, model_params, global_params)
        dtype = out_dtype or ref_reader.dtype(name)
        tensors.append(TensorPlan(name, ref_reader.shape(name), dtype, model_params, global_params))

    tok = cfg.get("tokenizer_source", "base")
    if tok == "union":
        raise MergeConfigError(
            "tokenizer_source: union is not supported (models must share one tokenizer); use base or a path"
        )
    tokenizer_source = reference if tok in ("base", None) else _model_path(tok, "tokenizer_source")
    return Plan(
        method=method,
        base=base,
        models=tuple(p for p, _ in inputs),
        tensors=tuple(tensors),
        work_dtype=work_dtype,
        out_dtype=out_dtype,
        config_source=reference,
        tokenizer_source=tokenizer_source,
    )


def _dtype(cfg: dict, key: str) -> torch.dtype | None:
    value = cfg.get(key)
    if value is None:
        return None
    if value not in DTYPES:
        raise MergeConfigError(f"{key}: {value!r} is not one of {sorted(DTYPES)}")
    return DTYPES[value]


def _check_ranges(method: str, tensor: str, inputs: list, model_params: dict, global_params: dict) -> None:
    for i, density in enumerate(model_params.get("density", [])):
        if not 0 < density <= 1:
            raise MergeConfigError(
                f"model {inputs[i][0]}: density {density} for tensor {tensor!r} is outside (0, 1]"
            )
        if method.startswith("della") and density < 1:
            eps = model_params["epsilon"][i]
            if not (0 < density - eps and density + eps < 1):
                raise MergeConfigError(
                    f"model {inputs[i][0]}: della needs 0 < density - epsilon and density + epsilon < 1, "
                    f"got density {density}, epsilon {eps} (tensor {tensor!r})"
                )
    for i, gamma in enumerate(model_params.get("gamma", [])):
        if not 0 <= gamma < 1:
            raise MergeConfigError(
                f"model {inputs[i][0]}: gamma {gamma} for tensor {tensor!r} is outside [0, 1)"
            )
    if "t" in global_params and not 0 <= float(global_params["t"]) <= 1:
        raise MergeConfigError(f"parameters.t = {global_params['t']} for tensor {tensor!r} is outside [0, 1]")
