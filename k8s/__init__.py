"""The project's own checks of its deployment files (``make k8s-check``, ``python -m k8s.check``).

A regular package, so that ``import k8s`` from the repository root finds this folder first.
"""
