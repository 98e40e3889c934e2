"""One array per message (``fedlora.packing``): exact round trips, and the messages Flower's mods act on stay as
they are; a ClientApp answers a packed message with a packed reply that unpacks to the unpacked answer."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from test_flower_apps import context, message

from clients import app as client_module
from clients import handlers
from fedlora.config import load_config
from fedlora.packing import PACKING, is_packed, pack, unpack
from fedlora.protocol import CONFIG_KEY
from fedlora.runtime import get_runtime


def content(arrays, config=None):
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord(config or {"server-round": 1}),
            "metrics": MetricRecord({"num-examples": 4}),
        }
    )


def test_pack_then_unpack_is_exact_and_keeps_the_other_records():
    rng = np.random.default_rng(0)
    arrays = {"b.lora_B": rng.normal(size=(4, 2)), "a.lora_A": rng.normal(size=(2, 3, 1, 1)), "c": np.ones(5)}
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    packed = pack(content(arrays))
    assert is_packed(packed) and len(packed["arrays"]) == 1
    back = unpack(packed)
    assert PACKING not in back.config_records and list(back.array_records) == ["arrays"]
    assert list(back["arrays"].keys()) == list(arrays)  # the order too (Flower's clipping pairs by position)
    assert all(
        np.array_equal(back["arrays"][k].numpy(), v) and back["arrays"][k].numpy().shape == v.shape
        for k, v in arrays.items()
    )
    assert dict(back["config"]) == {"server-round": 1} and dict(back["metrics"]) == {"num-examples": 4}
    plain = content(arrays)
    assert unpack(plain) is plain  # not packed: as it is


@pytest.mark.parametrize(
    "arrays, config",
    [
        ({"a": np.ones(3, np.float32), "b": np.ones(2, np.float64)}, None),  # not all float32
        ({"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}, {"clipping_norm": 0.1}),  # dp-fedavg's mod
        ({"a": np.ones(3, np.float32)}, None),  # one array already
    ],
)
def test_what_flowers_mods_act_on_or_what_gains_nothing_is_not_packed(arrays, config):
    plain = content(arrays, config)
    assert pack(plain) is plain


def test_a_packed_layout_that_does_not_match_is_refused():
    packed = pack(content({"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}))
    packed["arrays"] = ArrayRecord({"packed": Array(np.ones(4, np.float32))})
    with pytest.raises(ValueError, match="holds 4 values; its layout describes 5"):
        unpack(packed)


def test_a_packed_train_message_gets_a_packed_reply_equal_to_the_plain_one(tiny_base):
    cfg = load_config("configs/smoke.toml", [f"model.base_model='{tiny_base}'", "data.dataset='digits'"])
    record = handlers.record_of(get_runtime(cfg).get_lora())
    body = RecordDict({"arrays": record, "config": ConfigRecord({"server-round": 1, CONFIG_KEY: cfg.to_toml()})})
    plain = client_module.train(message(body, "train"), context(0))
    packed = client_module.train(message(pack(body), "train"), context(0))
    assert is_packed(packed.content) and not is_packed(plain.content)
    a, b = handlers.arrays_of(plain.content["arrays"]), handlers.arrays_of(unpack(packed.content)["arrays"])
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_flower_keys_packing_spells_out_are_flowers():
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    from fedlora import packing

    assert (packing.CLIPPING_NORM, packing.SECAGG_CONFIGS) == (KEY_CLIPPING_NORM, RECORD_KEY_CONFIGS)
