"""Where a simulation's centres run: a private Ray instance on this machine, or a running Ray
cluster it attaches to (``--ray-address``, the scenario's ``simulation.ray_address``).

Flower 1.41's Ray backend calls ``ray.init`` only when Ray is not initialised yet, so to run
on a cluster the command connects first (:func:`attach_ray`) and Flower uses that connection;
the cluster's workers were not started from this process, so what the centres need from its
environment goes into the job's runtime environment. An address is checked in a few seconds
before anything is made (:func:`check_reachable`: Ray itself retries a dead one for minutes),
and each centre's ``client_resources`` must fit a node (:func:`check_fits`, Flower's count).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fedmammo.config import Scenario
from fedmammo.errors import ConfigError
from fedmammo.plugins import ENV_VAR as PLUGINS_ENV

__all__ = [
    "attach_ray",
    "backend_config",
    "centre_threads",
    "check_fits",
    "check_reachable",
    "client_resources",
    "fits_here",
    "private_ray",
    "ray_address_of",
]

log = logging.getLogger(__name__)


def centre_threads(num_cpus: float) -> int:
    """The torch threads of a simulated centre with ``num_cpus`` (its Ray actor's): the floor,
    at least 1, as Ray sets ``OMP_NUM_THREADS`` in an actor (``set_omp_num_threads_if_unset``).
    A value of the scenario: an ``OMP_NUM_THREADS`` in the shell does not change it, so the
    run's numbers follow from its scenario and seed."""
    return max(math.floor(num_cpus), 1)


def client_resources(scenario: Scenario) -> dict[str, float]:
    """Each simulated centre's Ray resources: the scenario's ``simulation.client_resources``,
    else the largest of the profiles' ``compute`` blocks."""
    chosen = scenario.simulation.client_resources
    profiles = scenario.resolved_profiles.values()
    if chosen is not None:
        return {"num_cpus": chosen.num_cpus, "num_gpus": chosen.num_gpus}
    return {
        "num_cpus": max((p.compute.num_cpus for p in profiles), default=1),
        "num_gpus": max((p.compute.num_gpus for p in profiles), default=0.0),
    }


def ray_address_of(scenario: Scenario, ray_address: str | None = None) -> tuple[str, str] | None:
    """The Ray cluster to attach to and where that was said: --ray-address, else the
    scenario's ``simulation.ray_address``, else Ray's own RAY_ADDRESS; None: a private Ray."""
    for where, address in (
        ("--ray-address", ray_address),
        ("simulation.ray_address", scenario.simulation.ray_address),
        ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS")),
    ):
        if address and address != "local":  # Ray's own word for "a private instance"
            return address, f"{where} {address}"
    return None


def check_reachable(address: str, what: str) -> str:
    """ConfigError (one line) unless a Ray head answers at ``address`` (HOST:PORT, or auto:
    the cluster `ray start` last recorded on this machine) within a few seconds; Ray itself
    retries a dead address for minutes. Returns the HOST:PORT it checked (ray.init would
    read ``auto`` as RAY_ADDRESS when that is set, even to ``local``)."""
    fix = "start one with `ray start --head` and pass the address it prints"
    if address.startswith("ray://"):
        raise ConfigError(
            f"{what}: Ray Client (ray://) addresses are not supported; run "
            "the command on a node of the cluster with the head's HOST:PORT (or auto)"
        )
    if address == "auto":
        from ray._private.services import find_bootstrap_address

        address = find_bootstrap_address(None) or ""
        if not address:
            raise ConfigError(
                f"{what}: no Ray cluster was started on this machine (`ray start` records "
                f"one in /tmp/ray/ray_current_cluster); {fix}"
            )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{what}: expected HOST:PORT or auto; {fix}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot attach to a Ray cluster there (nothing answers: "
            f"{exc.strerror or exc}); {fix}"
        ) from None
    if problem := _not_a_ray_head(address):
        raise ConfigError(f"{what}: cannot attach to a Ray cluster there ({problem}); {fix}")
    return address


def _not_a_ray_head(address: str, timeout: float = 5) -> str | None:
    """None when Ray's GCS (the head's HOST:PORT) answers at ``address``, else why not: one
    bounded call, where ray.init would retry something else's port for minutes."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.UNAUTHENTICATED:  # a head that wants a token
                return None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return "a gRPC server that is not a Ray head answers (a Flower SuperLink?)"
            return f"no Ray head answers within {timeout:g} s: {code.name}"
    return None


def attach_ray(
    address: str, env_vars: dict[str, str], what: str = ""
) -> tuple[str, list[dict[str, float]]]:
    """Connect this process to the running Ray cluster at ``address`` before Flower starts
    (Flower then uses that connection). The cluster's worker processes were not started from
    this process, so what the centres need from its environment goes in the job's runtime
    environment (``FEDMAMMO_PLUGINS`` too: the plugin modules must be importable on every
    node). Returns the HOST:PORT attached to and the resources of its live nodes.
    ConfigError (one line) when no cluster answers there."""
    import ray

    if PLUGINS_ENV in os.environ:
        env_vars = {PLUGINS_ENV: os.environ[PLUGINS_ENV], **env_vars}

    what = what or f"--ray-address {address}"
    address = check_reachable(address, what)
    if ray.is_initialized():
        ray.shutdown()
    try:
        ray.init(
            address=address,
            logging_level=logging.WARNING,
            log_to_driver=True,
            runtime_env={"env_vars": env_vars},
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{what}: cannot attach to a Ray cluster there ({reason}); start "
            "one with `ray start --head` and pass the address it prints (see docs/deployment.md)"
        ) from None
    nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive")]
    log.info("attached to the Ray cluster at %s: %d nodes", address, len(nodes))
    return address, nodes


def check_fits(resources: dict[str, float], nodes: list[dict[str, float]], where: str) -> int:
    """How many centres run at once (Flower's count: per node, its CPUs (and GPUs) over each
    centre's); ConfigError (one line) when not one fits on any node."""
    fits = 0
    for node in nodes:
        n = int(node.get("CPU", 0) / resources["num_cpus"])
        if resources["num_gpus"] > 0:
            n = min(n, int(node.get("GPU", 0) / resources["num_gpus"]))
        fits += n
    if not fits:
        have = ", ".join(
            f"{n.get('CPU', 0):g} CPU" + (f" {n['GPU']:g} GPU" if "GPU" in n else "") for n in nodes
        )
        raise ConfigError(
            f"{where}: each centre asks for {resources['num_cpus']:g} CPU "
            f"{resources['num_gpus']:g} GPU; no node has that many ({have or 'no nodes'}); "
            "fix: lower simulation.client_resources (or the profiles' compute blocks)"
        )
    return fits


def fits_here(scenario: Scenario) -> int:
    """How many centres a private Ray instance runs at once: this machine's cores over each
    centre's, and its GPUs over each centre's share when centres ask for one (Ray finds the
    GPUs itself: only the cores are checked)."""
    resources = client_resources(scenario)
    fits = check_fits({**resources, "num_gpus": 0}, [{"CPU": os.cpu_count() or 1}], "this machine")
    if resources["num_gpus"] > 0:
        import torch

        fits = max(1, min(fits, int(torch.cuda.device_count() / resources["num_gpus"])))
    return fits


def backend_config(scenario: Scenario, *, attached: bool) -> dict[str, Any]:
    """Flower's Ray backend settings: the centres' resources; a private Ray instance gets
    this machine's cores (an attached cluster's resources are its own)."""
    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if not attached:
        init_args["num_cpus"] = os.cpu_count() or 1
        # a private instance even when `ray start` left /tmp/ray/ray_current_cluster behind
        # (ray.init() without an address joins that cluster, or hangs when it is gone)
        init_args["address"] = "local"
    return {"client_resources": client_resources(scenario), "init_args": init_args}


#: What each worker of a private Ray instance imports before it is given a centre: the Flower
#: apps (torch, Flower, fedmammo's centre code), about 2 s of each centre's start.
CENTRE_MODULES = "fedmammo.apps"
#: Ray's settings (read by its raylet when it starts) for workers started with the instance.
PRESTART_ENV = {"RAY_enable_worker_prestart": "1", "RAY_preload_python_modules": CENTRE_MODULES}


@contextmanager
def private_ray(init_args: dict[str, Any], *, prestart: bool) -> Iterator[Callable[[], None]]:
    """This run's private Ray instance, started in a background thread (``ray.init`` with
    Flower's ``init_args``) while this process goes on (imports, data preparation). Yields a
    function that waits until Ray is up and raises what ``ray.init`` raised; Flower's backend
    then finds Ray running and uses it. On exit Ray is shut down (Flower's backend has
    normally done so already).

    ``prestart``: Ray starts one worker per core at once, each importing
    :data:`CENTRE_MODULES` before it takes work (:data:`PRESTART_ENV`), so the actors Flower
    creates later find their imports done. Worth it when the actors take every core's worker
    (one CPU or less per centre): a worker left idle keeps its memory.

    What the start in the main thread would do is done here: Flower hands ``sys.path`` to the
    workers as a job runtime environment; here it goes in ``PYTHONPATH`` (which Flower also
    sets), so that workers started before the job match the actors' environment and are given
    to them. The workers inherit this process's environment, ``FEDMAMMO_PLUGINS`` with it
    (:mod:`fedmammo.plugins`), and find its modules on that path. Ray's SIGTERM handler
    (exit, so that cleanup runs) is installed from this, the main thread. The starting thread
    lives as long as Ray: Ray's processes die with the thread that started them (Linux's
    parent-death signal).
    """
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(signum))  # as ray.init does
    started, done = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def keep_ray() -> None:
        try:
            import ray

            logging.getLogger("ray._private.worker").addFilter(_not_the_main_thread_warning)
            ray.init(**init_args)
        except BaseException as exc:  # handed to the caller by wait()
            failure.append(exc)
        finally:
            started.set()
        done.wait()

    def up() -> bool:
        """Wait for the start; True when Ray is up."""
        started.wait()
        for name in PRESTART_ENV if prestart else ():
            os.environ.pop(name, None)  # the raylet has read them; no later Ray inherits them
        return not failure

    def wait() -> None:
        if not up():
            raise failure[0]

    if prestart:
        os.environ.update(PRESTART_ENV)
    thread = threading.Thread(target=keep_ray, name="private-ray", daemon=True)
    thread.start()
    try:
        yield wait
    finally:
        if up():
            import ray

            if ray.is_initialized():
                ray.shutdown()
        done.set()
        thread.join()


def _not_the_main_thread_warning(record: logging.LogRecord) -> bool:
    """False for ray.init's warning that it set no SIGTERM handler (private_ray sets it)."""
    return "SIGTERM handler is not set" not in record.getMessage()
