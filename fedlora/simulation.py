"""The one launcher in ``fedlora`` that imports the Flower apps: a Ray-backed simulation.

Flower's ``run_simulation`` is deprecated upstream (``flwr run`` is its successor) but it
is the in-process path whose ServerApp errors propagate; it stays behind this one function.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from .config import ExperimentConfig
from .preflight import preflight


def backend_config(cfg: ExperimentConfig) -> dict:
    """Client resources and ``ray.init`` arguments; a private local Ray unless an address is given."""
    init_args: dict = {"address": cfg.simulation.ray_address or "local"}
    if cfg.simulation.ray_num_cpus and not cfg.simulation.ray_address:
        init_args["num_cpus"] = cfg.simulation.ray_num_cpus
    return {
        "client_resources": {
            "num_cpus": cfg.simulation.num_cpus_per_client,
            "num_gpus": cfg.simulation.num_gpus_per_client,
        },
        "init_args": init_args,
    }


def run_experiment(cfg: ExperimentConfig, result: dict | None = None) -> Path:
    """Run the federated experiment ``cfg`` and return its run folder.

    ``result``, if given, also receives ``global_state`` (the final adapter tensors). Bad inputs are
    refused by ``preflight`` before Ray starts, so a refused run leaves no folder behind.
    """
    preflight(cfg)
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.app import create_server_app

    holder: dict = {} if result is None else result
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        run_simulation(
            server_app=create_server_app(cfg, holder),
            client_app=client_app,
            num_supernodes=cfg.federation.num_clients,
            backend_config=backend_config(cfg),
        )
    if "run_dir" not in holder:
        raise RuntimeError("the simulation ended without finishing the run; see the errors logged above")
    return Path(holder["run_dir"])
