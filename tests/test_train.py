"""ROSALIA training: schedule, data position, exact resume (plain loop and Ray Train), DeepSpeed.

The model and data here are a small TEST DOUBLE (a few linear layers with dropout over
synthetic features), so the resume logic is tested in seconds; the real ROSALIA components
go through the same loop (tests/test_train.py::test_rosalia_components_smoke).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rosalia.checkpointing import CheckpointError, load_train_state, save_train_state, trainable_state
from rosalia.train_loop import LoopConfig, LoopHooks, LoopState, TorchEngine, rank_batches, run_loop, warmup_linear

# -- test double ----------------------------------------------------------------------------


class DoubleModel(nn.Module):
    """forward(batch) -> dict(loss, mask_logits), with a frozen layer and dropout (TEST DOUBLE)."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(8, 16)
        self.frozen.requires_grad_(False)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 16))

    def forward(self, batch):
        logits = self.head(self.frozen(batch["x"])).view(-1, 4, 4)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["masks"])
        return {"loss": loss, "mask_logits": logits}


class DoubleData(torch.utils.data.Dataset):
    """Synthetic samples: features, a 4x4 mask, presence (TEST DOUBLE)."""

    def __init__(self, n: int = 40, seed: int = 0):
        g = np.random.default_rng(seed)
        self.x = torch.tensor(g.normal(size=(n, 8)), dtype=torch.float32)
        self.masks = (self.x[:, :1, None] + torch.tensor(g.normal(size=(n, 4, 4)), dtype=torch.float32) > 0).float()
        self.presence = [bool(i % 2) for i in range(n)]
        self.masks[~torch.tensor(self.presence)] = 0.0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "masks": self.masks[i], "presence": float(self.presence[i])}


def double_collate(items):
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


class DoublePlan:
    """A seeded permutation per epoch (TEST DOUBLE of EpochPlan)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed = n, seed

    def order(self, epoch: int):
        return np.random.default_rng([self.seed, epoch]).permutation(self.n).tolist()


def double_components(cfg, data_uri, rank=0, world=1, with_data=True):
    from ils.store import Store
    from rosalia.train import Components

    torch.manual_seed(cfg.train.seed)
    model = DoubleModel()
    data = DoubleData(int(data_uri.rsplit("n=", 1)[-1]) if "n=" in data_uri else 40)
    store = Store.from_config(cfg.store)

    def export(module, uri):
        import io

        buf = io.BytesIO()
        torch.save(module.state_dict(), buf)
        return store.write_bytes(f"{uri}/model.pt", buf.getvalue())

    return Components(model, data, double_collate, DoublePlan(len(data), cfg.train.seed), val_set=data, export=export)


def _cfg(*overrides):
    from ils.config import load_config

    base = ["train.batch_size=4", "train.warmup_steps=2", "train.lr=0.01", "train.log_every=1", "train.eval_every=3", "train.checkpoint_every=3", "train.cpus_per_worker=0.5"]
    return load_config(None, base + list(overrides))


def reference_run(steps: int, per_rank: int, seed: int = 0):
    """The uninterrupted plain-torch run: (dataset indices per step, final state dict)."""
    torch.manual_seed(seed)
    model, data = DoubleModel(), DoubleData()
    engine = TorchEngine(model, 0.01, 2, steps, 1.0)
    seen: list[list[int]] = []
    hooks = LoopHooks(trace=lambda s, idx: seen.append(list(idx)), log=lambda m: None)
    run_loop(engine, data, double_collate, DoublePlan(len(data), seed), LoopState(), LoopConfig(per_rank, steps, checkpoint_every=1000), hooks)
    return seen, model.state_dict()


# -- unit tests -----------------------------------------------------------------------------


def test_warmup_then_linear_decay():
    f = warmup_linear(4, 10)
    assert [round(f(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(7) == pytest.approx(0.5) and f(10) == 0.0


def test_rank_batches_partition_each_global_batch():
    order = list(range(23))
    r0, r1 = rank_batches(order, 0, 3, 2, 0), rank_batches(order, 0, 3, 2, 1)
    assert len(r0) == len(r1) == 3  # 23 // 6 global batches, tail of 5 dropped
    flat = [i for a, b in zip(r0, r1) for i in a + b]
    assert flat == list(range(18))
    assert rank_batches(order, 12, 3, 2, 1) == [[15, 16, 17]]


def test_optimizer_is_adamw_without_weight_decay():
    eng = TorchEngine(DoubleModel(), 3e-4, 100, 1000, 1.0)
    group = eng.optimizer.param_groups[0]
    assert isinstance(eng.optimizer, torch.optim.AdamW)
    assert group["betas"] == (0.9, 0.95) and group["weight_decay"] == 0.0
    assert all(p.requires_grad for p in group["params"]) and len(group["params"]) == 2  # frozen layer left out


def test_plain_loop_resume_matches_uninterrupted(tmp_path):
    steps, k = 13, 5  # 40 samples / batch 4 = 10 steps per epoch: the resume crosses an epoch
    ref_ids, ref_weights = reference_run(steps, 4)

    def part(start_folder, until):
        torch.manual_seed(0)
        model, data = DoubleModel(), DoubleData()
        engine = TorchEngine(model, 0.01, 2, steps, 1.0)
        state = load_train_state(start_folder, engine) if start_folder else LoopState()
        seen: list[list[int]] = []
        hooks = LoopHooks(trace=lambda s, idx: seen.append(list(idx)), log=lambda m: None)
        run_loop(engine, data, double_collate, DoublePlan(40), state, LoopConfig(4, until, checkpoint_every=1000), hooks)
        return seen, engine, state, model

    ids1, eng1, st1, _ = part(None, k)
    save_train_state(tmp_path / "ck", eng1, st1)
    assert (st1.step, st1.epoch, st1.position) == (5, 0, 20)
    # Dropout draws after the checkpoint must be the restored RNG's, not the fresh process's.
    torch.manual_seed(1234)
    ids2, eng2, st2, model2 = part(tmp_path / "ck", steps)
    # The resumed run's schedule uses the same total: rebuild with total=steps above.
    assert ids1 + ids2 == ref_ids
    assert st2.step == steps and st2.epoch == 1
    for name, ref in ref_weights.items():
        assert torch.allclose(model2.state_dict()[name], ref, atol=1e-6), name


def test_checkpoint_refuses_a_different_world_size(tmp_path):
    eng = TorchEngine(DoubleModel(), 0.01, 0, 10, 1.0)
    save_train_state(tmp_path, eng, LoopState(step=3), world=2)
    with pytest.raises(CheckpointError, match="2 workers"):
        load_train_state(tmp_path, eng, world=1)
    assert set(trainable_state(eng.module)) == {"head.2.weight", "head.2.bias"}


def test_checkpoint_refuses_another_data_order(tmp_path):
    """A resume whose epoch order differs (e.g. another train.pairs_per_image) would repeat or
    skip batches: refused; the same order resumes."""
    from rosalia.data import EpochPlan

    presence, groups = [True] * 10 + [False] * 30, [i // 4 for i in range(40)]
    def plan(g):
        return lambda epoch: EpochPlan(0, epoch, presence, negative_ratio=0.5, groups=groups, pairs_per_image=g).order
    eng = TorchEngine(DoubleModel(), 0.01, 0, 10, 1.0)
    save_train_state(tmp_path, eng, LoopState(step=3, epoch=1, position=8), order=plan(4))
    with pytest.raises(CheckpointError, match="data order of epoch 1 differs"):
        load_train_state(tmp_path, eng, order=plan(1))
    assert load_train_state(tmp_path, eng, order=plan(4)).position == 8
    assert load_train_state(tmp_path, eng).step == 3  # no order given: not checked


# -- Ray Train ------------------------------------------------------------------------------


def _register_double():
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _read_trace(folder: Path, rank: int = 0) -> list[tuple[int, list[int]]]:
    lines = (folder / f"rank{rank}.jsonl").read_text().splitlines()
    return [(d["step"], d["idx"]) for d in map(json.loads, lines)]


def test_ray_train_killed_run_resumes_exactly(ray_local, s3_bucket, tmp_path, monkeypatch, capfd):
    """A run killed after the checkpoint at step 3 resumes there: no repeated/skipped batches.

    Also: the local Ray has no state API, and Ray Train's placement-group cleaner, which polls it
    every second, stays quiet (ils.runtime.quiet_state_api_pollers)."""
    from ils.store import Store
    from rosalia.train import FAIL_ENV, TRACE_ENV, TrainError, fit

    _register_double()
    endpoint, bucket = s3_bucket
    steps = 8
    cfg = _cfg(f"store.uri=s3://{bucket}/run", f"store.endpoint={endpoint}", f"train.max_steps={steps}", "train.name=resume")
    monkeypatch.setenv(TRACE_ENV, str(tmp_path))
    monkeypatch.setenv(FAIL_ENV, "3")
    with pytest.raises(TrainError, match="training failed: rank 0: RuntimeError: .*injected failure after the checkpoint at step 3"):
        fit(cfg, "synthetic://n=40", None, factory=double_components)  # the worker's own error reaches the user
    first = _read_trace(tmp_path)
    assert [s for s, _ in first] == [0, 1, 2]
    monkeypatch.delenv(FAIL_ENV)
    summary = fit(cfg, "synthetic://n=40", "exported", factory=double_components)
    steps_seen = [s for s, _ in _read_trace(tmp_path)]
    assert steps_seen == list(range(steps)), steps_seen  # resumed at 3, none repeated, none skipped

    ref_ids, ref_weights = reference_run(steps, 4)
    assert [idx for _, idx in _read_trace(tmp_path)] == ref_ids
    store = Store.from_config(cfg.store)
    assert store.exists("train-runs/resume")  # Ray Train's run lives in the S3 store
    assert summary["final_metrics"]["step"] == steps
    assert 0.0 <= summary["best_metrics"]["val_giou"] <= 1.0
    import io

    latest = torch.load(io.BytesIO(store.read_bytes(f"train-runs/resume/checkpoint_{steps:08d}/trainable.pt")), weights_only=False)
    for name in ("head.2.weight", "head.2.bias"):
        assert torch.allclose(latest[name], ref_weights[name], atol=1e-5), name
    exported = torch.load(io.BytesIO(store.read_bytes("exported/model.pt")), weights_only=True)
    best = store.read_bytes(f"train-runs/resume/checkpoint_{summary['best_metrics']['step']:08d}/trainable.pt")
    best = torch.load(io.BytesIO(best), weights_only=False)
    assert torch.equal(exported["head.2.weight"], best["head.2.weight"])  # export = best checkpoint
    assert torch.equal(exported["frozen.weight"], ref_weights["frozen.weight"])
    seen = capfd.readouterr()
    assert "Failed to query Ray Train Controller" not in seen.out + seen.err


@pytest.mark.parametrize("deepspeed", [False, True], ids=["ddp", "deepspeed-zero2"])
def test_ray_train_two_workers_split_each_global_batch(ray_local, tmp_path, monkeypatch, deepspeed):
    """Two Ray Train workers (gloo on CPU; DDP or a DeepSpeed ZeRO-2 engine) train together:
    every step's global batch is split between the ranks, none repeated, none skipped, and
    both ranks write their part of every checkpoint."""
    import io

    from ils.store import Store
    from rosalia.train import TRACE_ENV, fit

    _register_double()
    steps = 6
    cfg = _cfg(f"store.uri={tmp_path / 'store'}", f"train.max_steps={steps}", "train.num_workers=2",
               f"train.deepspeed={str(deepspeed).lower()}", f"train.name=two-{deepspeed}")
    monkeypatch.setenv(TRACE_ENV, str(tmp_path))
    summary = fit(cfg, "synthetic://n=40", "exported", factory=double_components)
    assert summary["final_metrics"]["step"] == steps
    r0, r1 = _read_trace(tmp_path, 0), _read_trace(tmp_path, 1)
    assert [s for s, _ in r0] == [s for s, _ in r1] == list(range(steps))
    plan = DoublePlan(40)
    expected = [plan.order(0)[8 * k : 8 * k + 8] for k in range(5)] + [plan.order(1)[:8]]  # 40 samples = 5 global batches of 8
    assert [a + b for (_, a), (_, b) in zip(r0, r1)] == expected
    store = Store.from_config(cfg.store)
    final = f"train-runs/two-{deepspeed}/checkpoint_{steps:08d}"
    w = torch.load(io.BytesIO(store.read_bytes(f"{final}/trainable.pt")), weights_only=False)
    assert torch.isfinite(w["head.2.weight"]).all()
    names = {p.rsplit("/", 1)[-1] for p in store.list(final)}
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= names, names
    meta = json.loads(store.read_bytes(f"{final}/state.json"))
    assert (meta["engine"], meta["world"]) == ("deepspeed" if deepspeed else "torch", 2)


# -- benchmarks' code paths -----------------------------------------------------------------


def test_gpu_check_dry_run_on_cpu(tmp_path):
    """bench/gpu_check.py runs end to end with the tiny model on the CPU (the 7b path needs a GPU)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--size", "tiny", "--image-size", "64", "--train-batches", "1", "--seg-batches", "2", "--image-px", "48", "--out", str(tmp_path),
                    "--no-vision"])
    saved = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    assert saved["gpu"].startswith("none") and saved["trainable_parameters"] > 0
    assert saved["train_step"]["1"]["step_s"] > 0 and np.isfinite(saved["train_step"]["1"]["loss"])
    assert saved["segmenter"]["2"]["images_per_s"] > 0
    assert res["size"] == "tiny"


@pytest.mark.slow
def test_gpu_check_vision_dry_run_on_cpu(tmp_path):
    """bench/gpu_check.py's RadEdit (the real editing code) and CXAS timings run with tiny shapes on the CPU."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--size", "tiny", "--image-size", "32", "--train-batches", "", "--seg-batches", "", "--out", str(tmp_path),
              "--vision-tiny", "--radedit-batch", "1"])
    v = json.loads((tmp_path / "gpu_check_tiny.json").read_text())["vision"]
    assert v["radedit"]["counterfactuals_per_s"] > 0 and v["radedit"]["unet_passes_per_image"] == 6
    assert v["radedit"]["unet_tflop_per_pass"] > 0
    assert v["cxas"]["images_per_s"] > 0 and v["cxas"]["gflop_per_image"] > 0


_DS_SCRIPT = r'''
import os, sys, tempfile, torch, torch.distributed as dist
sys.path[:0] = [sys.argv[1], sys.argv[2]]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo", rank=0, world_size=1)
from test_train import DoubleModel, DoubleData, DoublePlan, double_collate
from rosalia.train_loop import DeepSpeedEngine, run_loop, LoopConfig, LoopHooks, LoopState
from rosalia.checkpointing import save_train_state, load_train_state
def part(ck, until):
    torch.manual_seed(0); m = DoubleModel(); e = DeepSpeedEngine(m, 0.01, 2, 8, 1.0, 4, zero_stage=2)
    st = load_train_state(ck, e) if ck else LoopState(); seen = []
    run_loop(e, DoubleData(), double_collate, DoublePlan(40), st, LoopConfig(4, until, checkpoint_every=1000),
             LoopHooks(trace=lambda s, i: seen.append(i), log=lambda m: None))
    return e, st, seen
e0, _, ref = part(None, 8)
ck = tempfile.mkdtemp(); e1, st1, a = part(None, 3); save_train_state(ck, e1, st1)
e2, st2, b = part(ck, 8)
assert a + b == ref and st2.step == 8
for (n, p), (_, q) in zip(e0.module.state_dict().items(), e2.module.state_dict().items()):
    assert torch.allclose(p, q, atol=1e-6), n
print("DS-RESUME-OK")
'''


def test_deepspeed_zero2_resume_on_cpu(tmp_path):
    """DeepSpeed ZeRO-2 (gloo, CPU) checkpoint/resume equals the uninterrupted run (own process)."""
    import subprocess

    from conftest import free_port

    root = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, "-c", _DS_SCRIPT, str(root), str(root.parent), str(free_port())],
                          capture_output=True, text=True, timeout=600)
    assert "DS-RESUME-OK" in proc.stdout, proc.stderr[-3000:]


def test_cpu_threads_follow_torch_threads_else_the_reservation():
    from rosalia.train import cpu_threads

    assert cpu_threads(_cfg("train.cpus_per_worker=1", "train.torch_threads=2").train) == 2
    assert cpu_threads(_cfg("train.cpus_per_worker=3", "train.torch_threads=0").train) == 3
    assert cpu_threads(_cfg("train.cpus_per_worker=0.5", "train.torch_threads=0").train) == 1


def test_trainer_refuses_a_bad_epoch_plan():
    from rosalia.train import TrainError, build_trainer

    with pytest.raises(TrainError, match="negative_ratio must be > 0"):
        build_trainer(_cfg("train.negative_ratio=0"), "gen")
    with pytest.raises(TrainError, match="pairs_per_image must be >= 1"):
        build_trainer(_cfg("train.pairs_per_image=0"), "gen")


def test_failure_reason_names_the_failed_worker_or_controller():
    from rosalia.train import failure_reason

    class Failed(Exception):
        pass

    workers = Failed("Training failed due to worker errors:\n...")
    workers.worker_failures = {1: ValueError("first\nlast line"), 0: KeyError("k")}
    assert failure_reason(workers) == "rank 0: KeyError: 'k'"
    controller = Failed("Training failed due to controller error:\nboom")
    controller.controller_failure = RuntimeError("boom")
    assert failure_reason(controller) == "controller: RuntimeError: boom"
    assert failure_reason(Failed("only this line\nnot this")) == "only this line"


def test_runs_are_keyed_by_output_and_resume_is_explicit(tmp_path):
    """Two trainings in one store with different --out get different runs; `fresh` starts over,
    `require` refuses an empty run, `auto` resumes the newest checkpoint."""
    from ils.errors import UserError
    from ils.store import Store
    from rosalia.train_run import plan_run, run_name

    a = run_name(None, str(tmp_path / "checkpoints"), str(tmp_path / "gen"))
    b = run_name(None, str(tmp_path / "other-ckpt"), str(tmp_path / "gen"))
    assert a != b and a.startswith("checkpoints-") and b.startswith("other-ckpt-")
    assert a == run_name(None, str(tmp_path / "checkpoints") + "/", str(tmp_path / "elsewhere"))
    assert run_name("mine", str(tmp_path / "checkpoints"), "x") == "mine"

    runs = Store(str(tmp_path / "train-runs"))
    assert plan_run(runs, a, "auto").action == "start"
    with pytest.raises(UserError, match="nothing to resume|no checkpoint"):
        plan_run(runs, a, "require")
    for step in (20, 40):
        runs.write_bytes(f"{a}/checkpoint_{step:08d}/trainable.pt", b"x")
    plan = plan_run(runs, a, "auto")
    assert (plan.action, plan.latest_step) == ("resume", 40) and "step 40" in plan.describe()
    assert plan_run(runs, b, "auto").action == "start"  # the other output's run is untouched by a's
    plan = plan_run(runs, a, "fresh")
    assert plan.action == "restart" and not runs.exists(a)
    with pytest.raises(UserError, match="train.resume"):
        plan_run(runs, a, "sometimes")


def test_snapshots_every_n_steps_and_at_the_end(tmp_path):
    from rosalia.train import snapshots_uri

    def steps_snapshotted(total, every):
        torch.manual_seed(0)
        engine = TorchEngine(DoubleModel(), 0.01, 2, total, 1.0)
        got: list[int] = []
        run_loop(engine, DoubleData(), double_collate, DoublePlan(40), LoopState(),
                 LoopConfig(4, total, checkpoint_every=1000, snapshot_every=every), LoopHooks(snapshot=got.append, log=lambda m: None))
        return got

    assert steps_snapshotted(11, 5) == [5, 10, 11]
    assert steps_snapshotted(3, 0) == []  # train.keep_snapshots=0 (default): none
    assert snapshots_uri(_cfg(f"store.uri={tmp_path}", "train.keep_snapshots=5"), "ck") == f"{tmp_path}/ck-snapshots"
    assert snapshots_uri(_cfg(f"store.uri={tmp_path}"), "ck") is None and snapshots_uri(_cfg("train.keep_snapshots=5"), None) is None
