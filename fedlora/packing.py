"""One array per message on the deployment engine: a message's adapter travels as a single float32 vector.

flwr 1.42 moves a message as a tree of objects, one (or more) per array, and every hop (SuperLink <-> SuperNode
<-> ClientApp process) pulls or pushes each object with its own request. An adapter of ~100 LoRA tensors is
~200 objects, which cost most of a deployment round's wall time on a loaded 2-core host (measured:
``scripts/deploy_round_time.py``). ``pack`` replaces the ``arrays`` record with one flat vector and a layout
(names and shapes, in order); ``unpack`` restores it exactly. Only plain float32 records are packed: SecAgg+'s
messages and those Flower's client-side clipping acts on (dp-fedavg) keep Flower's own format, so its mods see
what they expect. Simulation does not pack (its object store is in memory).
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from .protocol import ARRAYS, CONFIG

PACKING = "fedlora-packing"  # ConfigRecord: the layout of the packed ``arrays`` record
LAYOUT = "layout"  # JSON [[name, shape], ...] in the record's order
VECTOR = "packed"  # the one Array of a packed ``arrays`` record
# Flower's keys, spelt out: importing their modules would add ~0.3 s to every ClientApp process (a test pins them)
CLIPPING_NORM = "clipping_norm"  # flwr.supercore.differential_privacy.KEY_CLIPPING_NORM
SECAGG_CONFIGS = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS


def is_packed(content: RecordDict) -> bool:
    return PACKING in content.config_records


def packable(content: RecordDict) -> bool:
    """Plain float32 adapter arrays, not a message Flower's DP clipping or SecAgg+ mods act on."""
    if ARRAYS not in content.array_records or is_packed(content) or SECAGG_CONFIGS in content.config_records:
        return False
    config = content.config_records.get(CONFIG)
    if config is not None and CLIPPING_NORM in config:
        return False
    arrays = content.array_records[ARRAYS]
    return len(arrays) > 1 and all(a.dtype == "float32" for a in arrays.values())


def pack(content: RecordDict) -> RecordDict:
    """The same content with ``arrays`` as one float32 vector (unchanged when not ``packable``)."""
    if not packable(content):
        return content
    arrays = {k: a.numpy() for k, a in content.array_records[ARRAYS].items()}
    layout = [[k, list(v.shape)] for k, v in arrays.items()]
    flat = np.concatenate([v.reshape(-1) for v in arrays.values()]).astype(np.float32, copy=False)
    out = RecordDict()
    for key, record in content.items():
        out[key] = ArrayRecord({VECTOR: Array(flat)}) if key == ARRAYS else record
    out[PACKING] = ConfigRecord({LAYOUT: json.dumps(layout)})
    return out


def unpack(content: RecordDict) -> RecordDict:
    """The content as it was before ``pack`` (unchanged when it is not packed)."""
    if not is_packed(content):
        return content
    layout = json.loads(str(content.config_records[PACKING][LAYOUT]))
    flat = content.array_records[ARRAYS][VECTOR].numpy()
    sizes = [int(np.prod(shape)) for _, shape in layout]
    if sum(sizes) != flat.size:
        raise ValueError(f"a packed 'arrays' record holds {flat.size} values; its layout describes {sum(sizes)}")
    arrays, start = {}, 0
    for (name, shape), size in zip(layout, sizes, strict=True):
        arrays[name] = Array(np.ascontiguousarray(flat[start : start + size].reshape(shape)))
        start += size
    out = RecordDict()
    for key, record in content.items():
        if key == PACKING:
            continue
        out[key] = ArrayRecord(arrays) if key == ARRAYS else record
    return out
