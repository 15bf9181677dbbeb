"""``make k8s-check``: the KubeRay manifests and the Serve configs, strictly, without a cluster.

    python -m k8s.check                  # k8s/*.yaml and deployments/*.yaml
    python -m k8s.check FILE.yaml ...

A document with a ``kind`` is a KubeRay manifest, checked against k8s/kuberay.py; a RayService's
``serveConfigV2`` and every document with ``applications`` are Serve configs, checked by
k8s/serve_config.py. Each error names the file and the key path; the exit status is 1 if any.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from pydantic import ValidationError

from k8s.errors import pydantic_errors
from k8s.kuberay import KINDS
from k8s.serve_config import serve_config_errors

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = ("k8s/*.yaml", "deployments/*.yaml")


def file_errors(path: Path, name: str | None = None) -> list[str]:
    """Every problem in one YAML file (all its documents), as ``name: key.path: message`` lines."""
    name = name or str(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as err:
        return [f"{name}: cannot read: {' '.join(str(err).split())}"]
    if not documents:
        return [f"{name}: no YAML document"]
    lines = []
    for n, doc in enumerate(documents, 1):
        where = name if len(documents) == 1 else f"{name} (document {n})"
        lines += [f"{where}: {e}" for e in document_errors(doc)]
    return lines


def document_errors(doc: object) -> list[str]:
    """A KubeRay manifest's errors or a Serve config's, by what the document is."""
    if isinstance(doc, dict) and "kind" in doc:
        return manifest_errors(doc)
    if isinstance(doc, dict) and "applications" in doc:
        return serve_config_errors(doc)
    return ["<root>: neither a KubeRay manifest (kind: ...) nor a Serve config (applications: ...)"]


def manifest_errors(doc: dict) -> list[str]:
    """The manifest against its kind's model, and a RayService's ``serveConfigV2`` as a Serve config."""
    kind = doc["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        return [f"kind: {kind!r} is not one of {', '.join(KINDS)}"]
    try:
        KINDS[kind].model_validate(doc)
    except ValidationError as err:
        errors = pydantic_errors(err)
    else:
        errors = []
    spec = doc.get("spec")
    if kind == "RayService" and isinstance(spec, dict) and isinstance(spec.get("serveConfigV2"), str):
        errors += [f"spec.serveConfigV2: {e}" for e in _serve_text_errors(spec["serveConfigV2"])]
    return errors


def _serve_text_errors(text: str) -> list[str]:
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return [f"not valid YAML: {' '.join(str(err).split())}"]
    return serve_config_errors(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help=f"default: {' '.join(DEFAULT_FILES)}")
    files = parser.parse_args(argv).files
    named = [(f, str(f)) for f in files] or [
        (f, str(f.relative_to(ROOT))) for pattern in DEFAULT_FILES for f in sorted(ROOT.glob(pattern))
    ]
    errors = [e for path, name in named for e in file_errors(path, name)]
    for line in errors:
        print(line)
    print(f"k8s-check: {len(named)} files, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
