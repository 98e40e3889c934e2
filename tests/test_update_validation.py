"""The server validates every client update: poisoned, malformed or duplicated replies are rejected,
counted and left out, the global model stays the aggregate of the valid clients, and failures show.

The strategy is driven directly with hand-made replies (and once through Flower's own round loop on
the in-process grid): no model, no Ray, no training."""

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata
from flwr.clientapp import ClientApp
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity
from local_grid import LocalGrid

from clients import handlers as client_module
from fedlora.config import ConfigError, load_config
from fedlora.outputs import SUMMARY_FILE
from fedlora.privacy.dp import build_dp_mode
from fedlora.protocol import (
    CONFIG_KEY,
    EVAL_ONLY_PREFIX,
    NUM_EXAMPLES,
    PARTITION_ID,
    PAYLOAD_KEYS,
    SECAGG_MAX_WEIGHT,
    UPLOAD_KEYS,
)
from fedlora.reports import Failures, RunFolder, RunSummary, render_html, render_markdown
from fedlora.rounds import RoundLog, RoundRecord
from fedlora.rules import build_rule, client_rank
from fedlora.secure_aggregation import SecAggSettings
from fedlora.update_validation import (
    BAD_WEIGHT,
    DTYPE,
    DUPLICATE,
    KEYS,
    NON_FINITE,
    NORM,
    NOT_SAMPLED,
    SHAPE,
    WRONG_SENDER,
    Reply,
    check_upload,
    rejection_kind,
    screen,
    update_norm,
)
from server.secure_aggregation import SecureRound
from server.strategy import AccountedFedAvgStrategy, LoraStrategy, to_record

LIN, CONV = "blk.attn.to_q", "blk.res.conv1"
A, B = ".lora_A.weight", ".lora_B.weight"
N = 4  # clients
RANKS = {"svd": (2, 4, 8), "flora": (2, 4, 8)}


@pytest.fixture(autouse=True)
def task_identity():
    """What a ServerApp process knows about itself (Flower's Message needs it)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def init_adapter(rank: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        LIN + A: rng.normal(size=(rank, 5)).astype(np.float32),
        LIN + B: np.zeros((6, rank), np.float32),
        CONV + A: rng.normal(size=(rank, 3, 3, 3)).astype(np.float32),
        CONV + B: np.zeros((4, rank, 1, 1), np.float32),
    }


def cfg_for(rule: str, *extra: str):
    overrides = [f"federation.aggregation='{rule}'", f"federation.num_clients={N}", "model.lora_rank=4"]
    if rule in RANKS:
        overrides.append(f"federation.client_ranks={list(RANKS[rule])}")
    return load_config(None, [*overrides, *extra])


def reply_message(pid, arrays, weight=10.0, *, src=None, metrics=None, mid=None):
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({NUM_EXAMPLES: weight, PARTITION_ID: pid, "train_loss": 0.5, **(metrics or {})}),
        }
    )
    meta = Metadata(
        run_id=1,
        message_id=mid or f"r{pid}-{time.perf_counter_ns()}",
        src_node_id=1000 + pid if src is None else src,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type="train",
    )
    return Message(content, metadata=meta)


class Federation:
    """One round of a rule's protocol, with each honest client's upload at hand."""

    def __init__(self, rule: str, *extra: str, strategy_cls=LoraStrategy):
        self.cfg = cfg_for(rule, *extra)
        self.rule = build_rule(self.cfg).start(init_adapter(4))
        self.strategy = strategy_cls(
            rule=self.rule,
            log=RoundLog(),
            partition_of={1000 + k: k for k in range(N)},
            fraction=1.0,
            seed=0,
            config_text="",
            max_update_norm=self.cfg.federation.max_update_norm,
            min_clients=self.cfg.federation.min_clients_per_round,
        )
        self.uploads, self.eval_only = {}, {}
        self.uniform = self.cfg.privacy.dp == "dp-fedavg"  # Flower's accounted wrapper needs equal weights

    def weight(self, pid):
        return 10.0 if self.uniform else 10.0 + pid

    def configure(self, server_round=1, runner=None):
        runner = runner or self.strategy
        runner.configure_train(server_round, to_record(self.rule.carried()), ConfigRecord(), None)
        for pid in range(N):
            rank = client_rank(self.cfg, pid)
            setup = self.rule.client_setup(pid, self.strategy.sent[pid], {}, init_adapter(rank, seed=7))
            rng = np.random.default_rng(10 * server_round + pid)
            trained = {k: (v + 0.3 * rng.normal(size=v.shape)).astype(np.float32) for k, v in setup.adapter.items()}
            self.uploads[pid] = self.rule.client_upload(trained)
            self.eval_only[pid] = self.rule.client_eval_only(self.rule.client_keep(trained, setup))
        return self

    def honest(self, pid, **kw):
        audit = {EVAL_ONLY_PREFIX + k: v for k, v in self.eval_only[pid].items()}
        return reply_message(pid, {**self.uploads[pid], **audit}, weight=self.weight(pid), **kw)

    def reference(self, pids):
        """The global model a fresh server reaches from the same clients' uploads alone."""
        ref = build_rule(self.cfg).start(init_adapter(4))
        for pid in range(N):
            ref.payload(pid)
            ref.mark_sent(pid)
        ref.aggregate(
            {p: self.uploads[p] for p in pids},
            {p: self.weight(p) for p in pids},
            {p: self.eval_only[p] for p in pids if self.eval_only[p]},
        )
        return ref.global_view()


def view_arrays(view) -> dict[str, np.ndarray]:
    return {**(view.lora or {}), **{"delta/" + k: v for k, v in (view.deltas or {}).items()}}


def assert_same_view(got, expected):
    got, expected = view_arrays(got), view_arrays(expected)
    assert got.keys() == expected.keys() and got
    for k in expected:
        assert np.all(np.isfinite(got[k])), k
        np.testing.assert_array_equal(got[k], expected[k])


# ---- the checks on one upload (pure numpy) ------------------------------------------------------


def test_each_kind_of_bad_upload_is_named():
    sent = init_adapter(4)
    expected = {k: (v.shape, v.dtype) for k, v in sent.items()}
    good = {k: v + 0.1 for k, v in sent.items()}
    assert check_upload(good, expected, sent) is None

    def kind(**changes):
        upload = {**good, **changes}
        return check_upload({k: v for k, v in upload.items() if v is not None}, expected, sent, max_norm=10.0)

    nan = good[LIN + A].copy()
    nan[0, 0] = np.nan
    assert kind(**{LIN + A: nan}) == (NON_FINITE, f"{LIN + A} holds 1 NaN and 0 infinite values")
    assert kind(**{CONV + B: np.full((4, 4, 1, 1), np.inf, np.float32)})[0] == NON_FINITE
    assert kind(**{"evil.weight": np.zeros(3, np.float32)}) == (KEYS, "extra evil.weight (the rule expects 4 arrays)")
    assert kind(**{LIN + B: None})[0] == KEYS
    assert kind(**{LIN + B: np.zeros((6, 8), np.float32)}) == (
        SHAPE,
        f"{LIN + B} has shape (6, 8), the server expects (6, 4)",
    )
    assert kind(**{LIN + B: np.zeros((6, 4), np.float64)})[0] == DTYPE
    scaled = {k: v * np.float32(1e30) for k, v in good.items()}
    found, detail = check_upload(scaled, expected, sent, max_norm=10.0)
    assert found == NORM and "exceeds federation.max_update_norm = 10" in detail
    assert check_upload(scaled, expected, sent, max_norm=0.0) is None  # 0: no limit


def test_the_update_norm_is_relative_to_what_was_sent_where_the_shapes_match():
    sent = {"x": np.ones((2, 2), np.float32), "y": np.ones((3,), np.float32)}
    upload = {"x": np.ones((2, 2), np.float32) + 3.0, "y": np.full((4,), 2.0, np.float32), "z": np.ones(1)}
    # x: (upload - sent) = 3 x 4 entries; y: sent in another shape, its own norm (4 x 2); z: not sent, its own
    assert update_norm(upload, sent) == pytest.approx(np.sqrt(4 * 9 + 4 * 4 + 1))


def test_screening_rejects_duplicates_strangers_and_bad_weights_whatever_the_order():
    up = {"x": np.zeros(2, np.float32)}
    expected = {"x": ((2,), np.dtype(np.float32))}
    replies = [
        Reply(0, up, 1.0, sender=0, index=0),
        Reply(1, up, 1.0, sender=1, index=1),
        Reply(1, up, 1.0, sender=1, index=2),  # the same partition twice: neither is kept
        Reply(0, up, 1.0, sender=2, index=3),  # partition 2's node claims partition 0: only it is rejected
        Reply(3, up, 1.0, sender=None, index=4),
        Reply(4, up, 1.0, sender=4, index=5),  # not sampled
        Reply(5, up, float("nan"), sender=5, index=6),
    ]
    for order in (replies, replies[::-1]):
        accepted, rejected = screen(
            order, sampled=[0, 1, 2, 3, 5], expected=lambda p: expected, sent=lambda p: {}, max_norm=0.0
        )
        assert [r.partition for r in accepted] == [0]
        kinds = [(r.who, r.kind) for r in rejected]
        assert kinds.count(("partition 1", DUPLICATE)) == 2
        assert ("partition 0", WRONG_SENDER) in kinds and ("partition 3", WRONG_SENDER) in kinds
        assert ("partition 4", NOT_SAMPLED) in kinds and ("partition 5", BAD_WEIGHT) in kinds
        assert [r.who for r in rejected] == sorted((r.who for r in rejected), key=lambda w: int(w.split()[1]))
        assert rejection_kind(rejected[0].line()) == rejected[0].kind


# ---- the strategy: rejected, counted, left out -------------------------------------------------


def poisoned(fed: Federation, how: str) -> list[Message]:
    """Replies of a round in which partition 1 (or, for a duplicate, partition 2 twice) misbehaves."""
    replies = [fed.honest(p) for p in range(N)]
    up = dict(fed.uploads[1])
    key = next(iter(up))
    if how == "nan":
        up[key] = up[key].copy()
        up[key].flat[0] = np.nan
    elif how == "inf":
        up[key] = np.full_like(up[key], np.inf)
    elif how == "scaled":
        up = {k: v * np.float32(1e30) for k, v in up.items()}
    elif how == "extra-key":
        up["evil.weight"] = np.ones((3, 3), np.float32)
    elif how == "wrong-shape":
        up[key] = np.zeros((up[key].shape[0] + 1, *up[key].shape[1:]), np.float32)
    if how == "duplicate":
        replies.append(fed.honest(2, mid="again"))
    else:
        replies[1] = reply_message(1, up, weight=fed.weight(1))
    return replies


CASES = {
    "nan": ([1], NON_FINITE),
    "inf": ([1], NON_FINITE),
    "scaled": ([1], NORM),
    "extra-key": ([1], KEYS),
    "wrong-shape": ([1], SHAPE),
    "duplicate": ([2, 2], DUPLICATE),
}


@pytest.mark.parametrize("how", list(CASES))
def test_a_bad_update_is_rejected_counted_and_left_out_of_fedavg(how):
    fed = Federation("fedavg", "federation.max_update_norm=100").configure()
    arrays, metrics = fed.strategy.aggregate_train(1, poisoned(fed, how)[::-1])  # arrival order does not matter
    bad, kind = CASES[how]
    entry = fed.strategy.log[1]
    assert [rejection_kind(line) for line in entry.rejected] == [kind] * len(bad)
    assert all(line.startswith(f"partition {bad[0]}: ") for line in entry.rejected)
    assert entry.failures == [] and entry.skipped is None
    valid = [p for p in range(N) if p not in bad]
    assert sorted(entry.clients) == [str(p) for p in valid]
    assert_same_view(fed.rule.global_view(), fed.reference(valid))
    assert all(np.all(np.isfinite(a.numpy())) for a in arrays.values())  # what Flower carries on
    assert metrics["train_loss"] == pytest.approx(0.5)
    row = entry.row()
    assert json.loads(json.dumps(row))["rejected"] == entry.rejected  # plain text in metrics.jsonl
    totals = fed.strategy.log.failures()
    assert totals.rejected_updates == len(bad) and totals.reasons == {f"rejected: {kind}": len(bad)}


@pytest.mark.parametrize("rule", ["fedavg", "ffa", "fedsa", "svd", "flora"])
def test_a_nan_upload_never_reaches_the_global_model_of_any_rule(rule):
    fed = Federation(rule).configure()
    fed.strategy.aggregate_train(1, poisoned(fed, "nan"))
    assert [rejection_kind(line) for line in fed.strategy.log[1].rejected] == [NON_FINITE]
    assert_same_view(fed.rule.global_view(), fed.reference([0, 2, 3]))


def test_fedsas_audit_only_b_is_checked_too():
    """FedSA's audited global model is built from each client's own B, sent beside the upload."""
    fed = Federation("fedsa").configure()
    replies = [fed.honest(p) for p in range(N)]
    audit = {EVAL_ONLY_PREFIX + k: np.full_like(v, np.nan) for k, v in fed.eval_only[3].items()}
    replies[3] = reply_message(3, {**fed.uploads[3], **audit}, weight=fed.weight(3))
    fed.strategy.aggregate_train(1, replies)
    (line,) = fed.strategy.log[1].rejected
    assert line.startswith("partition 3: non-finite values: audit-only arrays: ")
    assert_same_view(fed.rule.global_view(), fed.reference([0, 1, 2]))


@pytest.mark.parametrize("rule", ["svd", "flora"])
def test_heterogeneous_ranks_are_checked_against_each_clients_own_rank(rule):
    fed = Federation(rule).configure()
    replies = [fed.honest(p) for p in range(N)]
    replies[2] = reply_message(2, fed.uploads[1], weight=fed.weight(2))  # rank 4 where partition 2 trains rank 8
    fed.strategy.aggregate_train(1, replies)
    (line,) = fed.strategy.log[1].rejected
    assert line.startswith("partition 2: wrong shape:") and "expects (8, 5)" in line
    assert_same_view(fed.rule.global_view(), fed.reference([0, 1, 3]))


def test_every_client_sending_the_same_wrong_shape_is_rejected_and_stops_the_run():
    fed = Federation("fedavg").configure()
    wrong = {k: np.zeros((v.shape[0] + 1, *v.shape[1:]), np.float32) for k, v in fed.uploads[0].items()}
    before = view_arrays(fed.rule.global_view())
    arrays, metrics = fed.strategy.aggregate_train(1, [reply_message(p, wrong) for p in range(N)])
    assert arrays is None and metrics is None
    entry = fed.strategy.log[1]
    assert len(entry.rejected) == N and all(rejection_kind(line) == SHAPE for line in entry.rejected)
    assert entry.skipped.startswith("no accepted update") and not entry.trained
    after = view_arrays(fed.rule.global_view())
    assert all(np.array_equal(before[k], after[k]) for k in before)  # the global did not take the shape
    with pytest.raises(RuntimeError, match=r"round 1: every one of the 4 sampled clients .* wrong shape"):
        fed.strategy.stop_if_no_client_left()


def test_when_every_client_fails_the_run_stops_after_that_round():
    """Through Flower's own round loop: round 1 is recorded (and evaluated), round 2 never starts."""
    app = ClientApp()

    @app.train()
    def train(msg, context):
        raise RuntimeError("disk full")

    fed = Federation("fedavg")
    evaluated = []

    def evaluate(server_round, arrays):
        evaluated.append(server_round)
        fed.strategy.stop_if_no_client_left()
        return MetricRecord({})

    with pytest.raises(RuntimeError, match="round 1: every one of the 4 sampled clients failed") as err:
        fed.strategy.start(
            grid=LocalGrid(app, N),
            initial_arrays=to_record(fed.rule.carried()),
            num_rounds=5,
            evaluate_fn=evaluate,
        )
    assert "partition 0: disk full" in str(err.value)
    assert evaluated == [0, 1] and sorted(fed.strategy.log.rounds) == [1]
    assert fed.strategy.log[1].failures == [f"partition {p}: disk full" for p in range(N)]


def test_the_rounds_go_on_with_the_valid_clients_in_flowers_loop():
    fed = Federation("fedavg")
    app = ClientApp()

    @app.train()
    def train(msg, context):
        pid = int(context.node_config[PARTITION_ID])
        arrays = {k: a.numpy() + 0.1 for k, a in msg.content["arrays"].items()}
        if pid == 3:
            arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
        metrics = MetricRecord({NUM_EXAMPLES: 10, PARTITION_ID: pid})
        return Message(RecordDict({"arrays": client_module.record_of(arrays), "metrics": metrics}), reply_to=msg)

    result = fed.strategy.start(
        grid=LocalGrid(app, N), initial_arrays=to_record(fed.rule.carried()), num_rounds=3, evaluate_fn=None
    )
    log = fed.strategy.log
    assert all(len(log[r].rejected) == 1 and sorted(log[r].clients) == ["0", "1", "2"] for r in (1, 2, 3))
    final = {k: a.numpy() for k, a in result.arrays.items()}
    init = init_adapter(4)
    assert all(np.allclose(final[k], init[k] + 0.3) for k in init)  # three rounds of +0.1 from the valid three
    assert log.failures().rejected_updates == 3


def test_fewer_valid_updates_than_min_clients_per_round_skip_the_round():
    fed = Federation("fedavg", "federation.min_clients_per_round=4").configure()
    before = view_arrays(fed.rule.global_view())
    arrays, _ = fed.strategy.aggregate_train(1, poisoned(fed, "nan"))
    entry = fed.strategy.log[1]
    assert arrays is None and entry.skipped.startswith("too few accepted updates: 3 of 4")
    assert "federation.min_clients_per_round = 4" in entry.skipped
    after = view_arrays(fed.rule.global_view())
    assert all(np.array_equal(before[k], after[k]) for k in before)
    fed.strategy.stop_if_no_client_left()  # some client was valid: the run goes on
    assert fed.strategy.log.failures().skipped_rounds == 1


def test_missing_replies_and_malformed_ones_are_counted_too():
    fed = Federation("fedavg").configure()
    malformed = fed.honest(2)
    malformed.content["metrics"] = MetricRecord({PARTITION_ID: 2})  # no num-examples
    fed.strategy.aggregate_train(1, [fed.honest(0), malformed, fed.honest(3)])  # partition 1 never answers
    entry = fed.strategy.log[1]
    assert entry.failures == ["partition 1: no reply within the round's timeout (federation.round_timeout_s)"]
    assert entry.rejected[0].startswith("partition 2: malformed reply: ") and "num-examples" in entry.rejected[0]
    assert_same_view(fed.rule.global_view(), fed.reference([0, 3]))


# ---- dp-fedavg: Flower aggregates, the wrapper accounts -----------------------------------------


@pytest.mark.parametrize("amplified", [False, True])  # Flower's accountant, or fedlora's sampled one
def test_under_dp_fedavg_a_rejected_update_skips_the_release(amplified):
    fed = Federation(
        "fedavg",
        "privacy.dp='dp-fedavg'",
        f"privacy.dp_sampling_amplification={str(amplified).lower()}",
        strategy_cls=AccountedFedAvgStrategy,
    )
    dp = build_dp_mode(fed.cfg)
    wrapper = dp.wrap(fed.strategy)
    fed.configure(runner=wrapper)
    replies = poisoned(fed, "extra-key")  # Flower alone would end the run: replies' keys differ
    replies[2].content["metrics"]["extra_metric"] = 1.0  # and so would one client's extra metric
    arrays, _ = wrapper.aggregate_train(1, replies)
    entry = fed.strategy.log[1]
    assert arrays is None and entry.skipped.startswith("incomplete DP round: 3 of 4")
    assert dp.releases() == 0 and [rejection_kind(line) for line in entry.rejected] == [KEYS]

    fed.configure(2, runner=wrapper)
    honest = [fed.honest(p) for p in range(N)]
    honest[2].content["metrics"]["extra_metric"] = 1.0
    arrays, metrics = wrapper.aggregate_train(2, honest)
    assert arrays is not None and dp.releases() == 1 and "extra_metric" not in metrics
    assert fed.strategy.log[2].rejected == [] and sorted(fed.strategy.log[2].clients) == ["0", "1", "2", "3"]


# ---- secure aggregation: the client checks its own upload, the server the aggregate -------------


def test_a_non_finite_secure_aggregate_is_skipped():
    fed = Federation("fedavg", "federation.secure_aggregation=true").configure()
    settings = SecAggSettings.from_config(fed.cfg, max_weight=13.0)
    face = SecureRound(fed.strategy, build_dp_mode(fed.cfg), settings, SimpleNamespace(run=None))
    before = view_arrays(fed.rule.global_view())
    decoded = [np.full_like(fed.uploads[0][k], np.nan) for k in face.upload_keys]
    results = [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(decoded), 10, {PARTITION_ID: p})) for p in range(N)
    ]
    assert face.aggregate_fit(1, results, []) == (None, {})
    assert fed.strategy.log[1].skipped.startswith("non-finite aggregate")
    after = view_arrays(fed.rule.global_view())
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_secure_client_refuses_to_mask_a_non_finite_upload(monkeypatch):
    cfg = cfg_for("fedavg", "federation.secure_aggregation=true")
    payload = init_adapter(4)
    upload = {k: np.full_like(v, np.nan) for k, v in payload.items()}
    result = SimpleNamespace(upload=upload, eval_only={}, stats=SimpleNamespace(num_examples=10))
    monkeypatch.setattr(client_module, "train_locally", lambda *args: (result, {}))
    config = {
        CONFIG_KEY: cfg.to_toml(),
        "server-round": 1,
        PAYLOAD_KEYS: "\n".join(payload),
        UPLOAD_KEYS: "\n".join(payload),
        SECAGG_MAX_WEIGHT: 10.0,
    }
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(list(payload.values())), config), True)
    context = SimpleNamespace(node_config={PARTITION_ID: 0})
    with pytest.raises(ValueError, match="NaN or infinite values"):
        client_module.secure_train(content, context)


# ---- config and reports -----------------------------------------------------------------------


def test_the_new_keys_are_checked_at_load_time():
    assert cfg_for("fedavg").federation.max_update_norm == 0.0
    assert cfg_for("fedavg").federation.min_clients_per_round == 1
    with pytest.raises(ConfigError, match="federation.max_update_norm"):
        cfg_for("fedavg", "federation.max_update_norm=-1")
    with pytest.raises(ConfigError, match="federation.min_clients_per_round = 5 exceeds the 4 clients"):
        cfg_for("fedavg", "federation.min_clients_per_round=5")
    with pytest.raises(ConfigError, match="federation.min_clients_per_round"):
        cfg_for("fedavg", "federation.min_clients_per_round=0")


def test_a_nan_client_poisons_exactly_its_round_and_a_bad_entry_is_named():
    from fedlora.faults import maybe_poison

    upload = {"a": np.ones((2, 3), np.float32)}
    assert np.isnan(maybe_poison(["1@2"], 1, 2, upload)["a"]).all()
    assert maybe_poison(["1@2"], 1, 3, upload)["a"].tolist() == upload["a"].tolist()
    assert maybe_poison(["1@2"], 0, 2, upload)["a"].tolist() == upload["a"].tolist()
    with pytest.raises(ConfigError, match=r"simulation.nan_clients entry '1-2' must look like PARTITION@ROUND"):
        cfg_for("fedavg", "simulation.nan_clients=['1-2']")
    with pytest.raises(ConfigError, match=r"simulation.nan_clients names partition 9"):
        cfg_for("fedavg", "simulation.nan_clients=['9@1']")


def test_failure_totals_reach_summary_json_and_both_reports(tmp_path):
    log = RoundLog()
    log.rounds[1] = RoundRecord(failures=["partition 1: disk full"], rejected=[], clients={"0": {}})
    log.rounds[2] = RoundRecord(
        failures=[],
        rejected=["partition 0: non-finite values: x holds 1 NaN", "partition 1: non-finite values: y"],
        skipped="too few accepted updates: 0 of 2",
    )
    totals = log.failures()
    assert totals == Failures(
        failed_replies=1,
        rejected_updates=2,
        skipped_rounds=1,
        reasons={
            "failed: disk full": 1,
            "rejected: non-finite values": 2,
            "skipped: too few accepted updates": 1,
        },
    )
    summary = RunSummary(method="lora", failures=totals)
    summary.write(tmp_path)
    data = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert data["failures"]["rejected_updates"] == 2
    assert RunSummary.from_dict(data).to_dict() == data
    folder = RunFolder(tmp_path)
    md, html = render_markdown(folder), render_html(folder)
    assert "**Failures:** 1 failed reply, 2 rejected updates, 1 skipped round." in md
    assert "- rejected: non-finite values (2)" in md
    assert "<b>Failures:</b> 1 failed reply, 2 rejected updates, 1 skipped round." in html
    clean = RunSummary(method="lora", failures=Failures())
    clean.write(tmp_path)
    assert "**Failures:** none" in render_markdown(RunFolder(tmp_path))
