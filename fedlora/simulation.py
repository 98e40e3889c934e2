"""The one launcher in ``fedlora`` that imports the Flower apps: a Ray-backed simulation.

Flower's ``run_simulation`` is deprecated upstream (``flwr run`` is its successor) but it
is the in-process path whose ServerApp errors propagate; it stays behind this one function.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from . import interrupt
from .config import ExperimentConfig
from .preflight import preflight

LOCALHOST = "127.0.0.1"
# Ray maps a node address of 127.0.0.1 to the machine's routable IP, and its servers then listen on
# every interface, unless this is 0 (its switch for laptops): read when ray is imported, and by
# the processes it starts.
RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def bind_private_ray_to_localhost() -> None:
    """Make the private Ray instance listen on 127.0.0.1 only (GCS, raylet, workers, agents)."""
    os.environ[RAY_CLUSTER_SWITCH] = "0"
    if "ray" in sys.modules:  # imported before this call: its constant is already read
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def on_loopback(cfg: ExperimentConfig) -> bool:
    """A private Ray, or a cluster whose head is on 127.0.0.1 (all its nodes on this machine; a Ray Client
    ``ray://`` address runs the driver remotely and is not one)."""
    address = cfg.simulation.ray_address
    return not address or address.rsplit(":", 1)[0] in (LOCALHOST, "localhost")


def backend_config(cfg: ExperimentConfig) -> dict:
    """Client resources and ``ray.init`` arguments; a private Ray on 127.0.0.1 unless an address is given."""
    init_args: dict = {"address": cfg.simulation.ray_address or "local"}
    if on_loopback(cfg):  # the driver's node is 127.0.0.1 too, not the machine's routable address
        init_args["_node_ip_address"] = LOCALHOST
    if not cfg.simulation.ray_address:
        if cfg.simulation.ray_num_cpus:
            init_args["num_cpus"] = cfg.simulation.ray_num_cpus
    return {
        "client_resources": {
            "num_cpus": cfg.simulation.num_cpus_per_client,
            "num_gpus": cfg.simulation.num_gpus_per_client,
        },
        "init_args": init_args,
    }


def run_experiment(cfg: ExperimentConfig, result: dict | None = None, resume: Path | None = None) -> Path:
    """Run the federated experiment ``cfg`` (or continue the run folder ``resume``) and return its folder.

    ``result``, if given, also receives ``global_view`` (the final global model). Bad inputs are
    refused by ``preflight`` before Ray starts, so a refused run leaves no folder behind. The first
    Ctrl-C stops after the round in flight and raises ``RunInterrupted`` (fedlora.interrupt).
    """
    preflight(cfg)
    if on_loopback(cfg):
        bind_private_ray_to_localhost()
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.app import create_server_app

    holder: dict = {} if result is None else result
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with warnings.catch_warnings(), interrupt.stop_on_first_sigint():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            run_simulation(
                server_app=create_server_app(cfg, holder, resume=resume),
                client_app=client_app,
                num_supernodes=cfg.federation.num_clients,
                backend_config=backend_config(cfg),
            )
        finally:
            _end_private_ray(cfg)
    if "run_dir" not in holder:
        raise RuntimeError("the simulation ended without finishing the run; see the errors logged above")
    return Path(holder["run_dir"])


def _end_private_ray(cfg: ExperimentConfig) -> None:
    """Flower ends its Ray instance on success; on an error or an interrupt make sure it is gone too."""
    if cfg.simulation.ray_address:
        return
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
