"""Serve configs checked with Ray's own schema, strictly, and against nexus_ray's ServiceConfig.

Ray's ``ServeDeploySchema`` ignores unknown keys (for forward compatibility), so a typo such as
``max_ongoing_request: 3`` or ``ray_actor_options: {num_gpu: 1}`` passes it and is silently
dropped. ``serve_config_errors`` walks the config along the schema's own nested models and
reports every key none of them declares, then requires each application's ``import_path`` to
import and its ``args`` to validate as a ``ServiceConfig`` (what ``build_app`` will do with them).
"""

from __future__ import annotations

import importlib
from inspect import isclass
from types import UnionType
from typing import Annotated, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ray.serve.schema import ServeDeploySchema

from k8s.errors import Loc, dotted, pydantic_errors
from nexus_ray.config import ServiceConfig


def serve_config_errors(config: object) -> list[str]:
    """Every problem of one Serve config (a ``serve deploy`` YAML, parsed); [] when it is sound."""
    if not isinstance(config, dict):
        return [f"<root>: expected a mapping, got {type(config).__name__}"]
    errors = unknown_keys(config, ServeDeploySchema, ())
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as err:
        errors += pydantic_errors(err)
    http = config.get("http_options")
    proxy_timeout = http.get("request_timeout_s") if isinstance(http, dict) else None
    for i, app in enumerate(config.get("applications") or []):
        if isinstance(app, dict) and isinstance(app.get("import_path"), str):
            errors += application_errors(app, ("applications", i), proxy_timeout)
    return list(dict.fromkeys(errors))  # a model that forbids extras reports its own, in the same words


def unknown_keys(data: object, annotation: object, loc: Loc) -> list[str]:
    """Keys in ``data`` that the pydantic type ``annotation`` does not declare, at any depth.

    Follows Optional, unions (``Dict | AutoscalingConfig`` checks a mapping as the model), lists
    and nested models; plain ``dict`` fields (``args``, ``runtime_env``) are free-form and not entered.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return unknown_keys(data, args[0], loc)
    if origin in (Union, UnionType):
        shapes = [a for a in args if _fits(data, a)]
        return unknown_keys(data, shapes[0], loc) if shapes else []
    if origin is list and isinstance(data, list):
        return [e for i, item in enumerate(data) for e in unknown_keys(item, args[0], (*loc, i))]
    if _is_model(annotation) and isinstance(data, dict):
        errors = []
        for key, value in data.items():
            field = annotation.model_fields.get(key)
            if field is None:
                errors.append(f"{dotted((*loc, key))}: unknown field")
            else:
                errors += unknown_keys(value, field.annotation, (*loc, key))
        return errors
    return []


def application_errors(app: dict, loc: Loc, proxy_timeout: object = None) -> list[str]:
    """The application's ``import_path`` imports and its ``args`` are a valid ``ServiceConfig``
    whose timeouts end before the proxy's (``proxy_timeout``: None, no proxy timeout)."""
    errors = _import_errors(app["import_path"], (*loc, "import_path"))
    try:
        config = ServiceConfig.model_validate(app.get("args") or {})
    except ValidationError as err:
        return errors + pydantic_errors(err, (*loc, "args"))
    if isinstance(proxy_timeout, int | float):
        for key in ("request_timeout_s", "body_read_timeout_s"):
            if getattr(config, key) >= proxy_timeout:
                errors.append(
                    f"{dotted((*loc, 'args', key))}: {getattr(config, key):g} s is not below "
                    f"http_options.request_timeout_s ({proxy_timeout:g} s): Serve's proxy would "
                    "answer a plain-text 408 first"
                )
    return errors


def _import_errors(import_path: str, loc: Loc) -> list[str]:
    """Ray reads ``module:attribute`` (or ``module.attribute``); both parts must resolve."""
    module_name, colon, attribute = import_path.partition(":")
    if not colon:
        module_name, _, attribute = import_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as err:  # ValueError: an empty module name
        return [f"{dotted(loc)}: cannot import {module_name!r}: {err}"]
    if not hasattr(module, attribute):
        return [f"{dotted(loc)}: module {module_name!r} has no attribute {attribute!r}"]
    return []


def _fits(data: object, annotation: object) -> bool:
    """Whether a union member has the shape of ``data``: a model for a mapping, a list for a list."""
    if isinstance(data, dict):
        return _is_model(annotation)
    return isinstance(data, list) and get_origin(annotation) is list


def _is_model(annotation: object) -> bool:
    return isclass(annotation) and issubclass(annotation, BaseModel)
