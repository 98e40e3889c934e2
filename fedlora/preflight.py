"""Refuse a run's bad inputs before anything starts: before Ray, the clients or a run folder exist.

A missing, empty or corrupt image folder, too few samples for the clients and split sizes, or a
base model that cannot be loaded or was pretrained on the private data were found only once the
simulation was running and ``runs/<name>/`` held a config and an empty metrics file (the next run
then got ``-2``). Here they are found in seconds. Everything loaded stays in the process's caches
(dataset, splits, model runtime), so the run itself does not repeat the work.
"""

from __future__ import annotations

import logging

from .config import ExperimentConfig
from .data import ImageDataset, Splits, load_dataset
from .runtime import check_base_matches_data, get_runtime, get_splits

logger = logging.getLogger("fedlora")
SHOWN_SKIPPED = 5  # file names on the console line; summary.json lists every one

_warned: set[int] = set()  # datasets whose skipped files were already reported by this process


def warn_skipped(dataset: ImageDataset, data_dir: str) -> None:
    """One console line per loaded dataset naming the images its loader skipped."""
    if not dataset.skipped_files or id(dataset) in _warned:
        return
    _warned.add(id(dataset))
    names = ", ".join(dataset.skipped_files[:SHOWN_SKIPPED])
    more = len(dataset.skipped_files) - SHOWN_SKIPPED
    logger.warning(
        "data.on_bad_image = 'skip': %d undecodable image(s) in %s left out: %s%s",
        len(dataset.skipped_files),
        data_dir,
        names,
        f" and {more} more (all listed in summary.json)" if more > 0 else "",
    )


def preflight(cfg: ExperimentConfig) -> Splits:
    """Check the base model, the data and the splits of ``cfg``; raise (ConfigError, DatasetError,
    BaseModelError: all ValueErrors naming the key or file) instead of starting a run that would fail.

    Cheapest first: the base model's pretraining record, the dataset, the splits, then the base
    model itself (the run loads it next anyway, from the same cache).
    """
    check_base_matches_data(cfg)
    dataset = load_dataset(cfg.data)
    warn_skipped(dataset, cfg.data.data_dir)
    splits = get_splits(cfg)
    get_runtime(cfg)
    return splits
