"""Free loopback ports, and the local Ray cluster with Serve's proxy that service tests start."""

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(namespace: str, http_options: dict | None = None, **ray_options) -> str:
    """A fresh local Ray cluster of 2 CPUs (never another session's) with Serve's proxy on a free
    port; returns the proxy's base URL. Pair with ``stop_serve``."""
    import ray
    from ray import serve

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace=namespace,
        **ray_options,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, **(http_options or {})})
    return f"http://127.0.0.1:{port}"


def stop_serve() -> None:
    """Shut down Serve and the cluster ``start_serve`` started."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
