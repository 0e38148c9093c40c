"""The one precision decision (planet.learn.precision) and the loop around it: each branch forced
on the CPU (fake CUDA capabilities, fake CPU flags), fp16 with a GradScaler stepping and
skipping, losses read every N steps, the precision in the predictions' config hash, and the
`--precision` switch reaching the training stage."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from flows import cli
from flows.config import TrainConfig
from planet.competitions import PLANET
from planet.infer.predict import predict_split, predictions_complete
from planet.learn import fit as fit_lib
from planet.learn import precision as prec
from planet.learn import stages
from planet.learn.callbacks import Callback, FitState
from planet.learn.fit import _train_step, fit_one_cycle, make_optimizer, precision_for
from planet.learn.precision import Precision, choose_precision
from planet.learn.recipe import Recipe, TrainStage
from planet.workspace import Workspace
from tests.test_predict import CLASSES, FlatNet, Killer, model, write_sized
from tests.toy import make_toy_planet

# ---------------------------------------------------------------------------------------------
# the decision


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA devices with the given compute capabilities (cuda:0 is the current device)."""

    def install(*capabilities: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(
            torch.cuda, "get_device_capability", lambda d=None: capabilities[d or 0]
        )

    return install


@pytest.fixture
def cpu_flags(monkeypatch):
    def install(**flags: bool) -> None:
        caps = {"architecture": "x86_64", "avx512_bf16": False, "amx_bf16": False, **flags}
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)

    return install


@pytest.mark.parametrize(
    ("capability", "name", "scaled"),
    [((8, 0), "bf16", False), ((9, 0), "bf16", False), ((8, 9), "bf16", False)]
    + [((7, 5), "fp16", True), ((7, 0), "fp16", True), ((6, 0), "fp16", True)],
)
def test_cuda_auto_is_bf16_where_native_else_fp16_with_a_scaler(
    fake_cuda, capability, name, scaled
):
    fake_cuda(capability)
    chosen = choose_precision(torch.device("cuda"), "auto")
    assert (chosen.name, chosen.scaled, chosen.device_type) == (name, scaled, "cuda")
    assert chosen.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[name]
    assert precision_for(torch.device("cuda:0")) == chosen  # training and prediction alike


def test_cuda_decision_asks_the_tensors_device_not_the_current_one(fake_cuda):
    fake_cuda((7, 5), (8, 6))  # a T4 as cuda:0 (current), an A10 as cuda:1
    assert choose_precision(torch.device("cuda:1")).name == "bf16"
    assert choose_precision(torch.device("cuda:0")).name == "fp16"


def test_cuda_emulated_bf16_does_not_count_as_native(fake_cuda, monkeypatch):
    fake_cuda((7, 5))
    # torch.cuda.is_bf16_supported() says True on a T4 (emulation): the decision must not ask it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose_precision("cuda").name == "fp16"


def test_rocm_counts_as_native_bf16(fake_cuda, monkeypatch):
    fake_cuda((7, 5))
    monkeypatch.setattr(torch.version, "hip", "6.0")
    assert choose_precision("cuda").name == "bf16"


def test_cpu_auto_follows_the_flags_and_the_measured_default(cpu_flags, monkeypatch):
    cpu_flags(avx512_bf16=True)
    assert prec.cpu_native_bf16()
    assert choose_precision("cpu").name == ("bf16" if prec.CPU_AUTO_BF16 else "fp32")
    monkeypatch.setattr(prec, "CPU_AUTO_BF16", True)
    assert choose_precision("cpu").name == "bf16"
    cpu_flags(amx_bf16=True)
    assert choose_precision("cpu").name == "bf16"
    cpu_flags()  # no bf16 instructions: never bf16 by default
    assert not prec.cpu_native_bf16()
    assert choose_precision("cpu") == Precision("fp32", "cpu")
    cpu_flags(architecture="aarch64", bf16=True)
    assert choose_precision("cpu").name == "bf16"


def test_explicit_requests_are_honoured_or_refused_in_one_line(fake_cuda):
    assert choose_precision("cpu", "bf16") == Precision("bf16", "cpu")
    assert choose_precision("cpu", "fp32").dtype is None
    with pytest.raises(ValueError, match="fp16 needs a CUDA device.*--precision bf16 or fp32"):
        choose_precision("cpu", "fp16")
    with pytest.raises(ValueError, match="precision 'half': use one of auto, fp32, bf16, fp16"):
        choose_precision("cpu", "half")
    fake_cuda((8, 0))
    assert choose_precision("cuda", "fp16").scaled
    assert choose_precision("cuda", "fp32").dtype is None
    assert precision_for(torch.device("cuda"), "auto", amp=False).name == "fp32"  # amp=False


def test_autocast_contexts():
    with Precision("bf16", "cpu").autocast():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with Precision("fp32", "cpu").autocast():
        assert not torch.is_autocast_enabled("cpu")
    with warnings.catch_warnings():  # without CUDA torch warns it would disable it
        warnings.simplefilter("ignore")
        ctx = Precision("fp16", "cuda").autocast()  # built, not entered
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16
    assert ctx.device == "cuda"


def test_cudnn_autotune_is_set_for_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert not fit_lib.enable_cudnn_autotune(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    assert fit_lib.enable_cudnn_autotune(torch.device("cuda:0"))
    assert torch.backends.cudnn.benchmark is True


# ---------------------------------------------------------------------------------------------
# fp16 with a GradScaler, forced on the CPU


class TinyNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


FP16_CPU = Precision("fp16", "cpu")  # what a T4 gets, on the CPU's fp16 autocast


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=g), (torch.rand(4, 3, generator=g) > 0.5).float()


def test_fp16_step_scales_steps_and_skips_a_step_whose_gradients_overflow():
    torch.manual_seed(0)
    net = TinyNet()
    opt = make_optimizer(net, [1e-2])
    scaler = FP16_CPU.scaler()
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    x, y = _batch()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = _train_step(net, x, y, loss_fn, opt, FP16_CPU, scaler)
    assert loss.dtype == torch.float32 and math.isfinite(float(loss))
    assert not torch.equal(net.fc.weight, before["fc.weight"])  # it stepped
    assert scaler.get_scale() == 65536.0 and fit_lib._optimizer_steps(opt) == 1

    stepped = {k: v.clone() for k, v in net.state_dict().items()}
    hook = net.fc.weight.register_hook(lambda g: g * math.inf)  # an overflowing gradient
    _train_step(net, x, y, loss_fn, opt, FP16_CPU, scaler)
    hook.remove()
    after = {k: v.clone() for k, v in net.state_dict().items()}
    assert all(torch.equal(stepped[k], after[k]) for k in stepped)  # skipped: nothing moved
    assert scaler.get_scale() == 32768.0 and fit_lib._optimizer_steps(opt) == 1
    _train_step(net, x, y, loss_fn, opt, FP16_CPU, scaler)
    assert fit_lib._optimizer_steps(opt) == 2 and not torch.equal(net.fc.weight, after["fc.weight"])


def test_fp32_step_needs_no_scaler_and_matches_a_plain_step():
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    x, y = _batch(1)
    nets = []
    for plain in (True, False):
        torch.manual_seed(0)
        net = TinyNet()
        opt = make_optimizer(net, [1e-2])
        if plain:
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
        else:
            scaler = Precision("fp32", "cpu").scaler()
            assert not scaler.is_enabled()
            _train_step(net, x, y, loss_fn, opt, Precision("fp32", "cpu"), scaler)
        nets.append(net)
    assert all(
        torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True)
    )


class FakeLoader:
    """`n` fixed batches of 4 (just what fit_one_cycle reads of a Loader)."""

    def __init__(self, n: int) -> None:
        self.batches = [_batch(i) for i in range(n)]
        self.batch_size = 4
        self.indices = list(range(4 * n))

    def __len__(self) -> int:
        return len(self.batches)

    def iter_epoch(self, epoch: int):
        return iter(self.batches)

    def __iter__(self):
        return iter(self.batches)


class Reads(Callback):
    def __init__(self) -> None:
        self.reads: list[tuple[int, int]] = []  # (step, losses read)
        self.batches = 0

    def after_batch(self, fit: FitState) -> None:
        self.batches += 1

    def after_losses(self, fit: FitState, losses: list[float]) -> None:
        self.reads.append((fit.step, len(losses)))


def test_fit_reads_losses_every_n_steps_not_every_step(monkeypatch):
    calls = []
    real = fit_lib._read_losses
    monkeypatch.setattr(
        fit_lib, "_read_losses", lambda pending, *a: (calls.append(len(pending)), real(pending, *a))
    )
    torch.manual_seed(0)
    reads = Reads()
    result = fit_one_cycle(
        TinyNet(),
        FakeLoader(10),
        FakeLoader(2),
        task="multi_label",
        epochs=2,
        lrs=[1e-3],
        precision="fp32",
        loss_every=4,
        callbacks=[reads],
    )
    # per epoch: the first step alone (it is timed apart), then every 4, then the rest
    assert calls == [1, 4, 4, 1] * 2
    assert reads.reads == [(1, 1), (5, 4), (9, 4), (10, 1), (11, 1), (15, 4), (19, 4), (20, 1)]
    assert reads.batches == 20  # progress still hears every step
    for row in result.history:
        assert len(row["batch_losses"]) == 10 and all(math.isfinite(v) for v in row["batch_losses"])
        assert row["first_step_s"] >= 0 and row["images_per_s"] > 0  # a tiny net: can round to 0
        assert "skipped_steps" not in row  # fp32 skips nothing


def test_fit_reports_skipped_fp16_steps_and_a_non_finite_loss_names_its_batch():
    torch.manual_seed(0)
    net = TinyNet()
    state = {"n": 0}

    def overflow_twice(g: torch.Tensor) -> torch.Tensor:
        state["n"] += 1
        return g * math.inf if state["n"] in (2, 3) else g

    net.fc.weight.register_hook(overflow_twice)
    result = fit_one_cycle(
        net,
        FakeLoader(6),
        FakeLoader(1),
        task="multi_label",
        epochs=2,
        lrs=[1e-3],
        precision=FP16_CPU,
        loss_every=3,
    )
    assert [row["skipped_steps"] for row in result.history] == [2, 0]

    class Diverging(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            state["n"] += 1
            out = super().forward(x)
            return out * math.nan if state["n"] == 5 else out

    state["n"] = 0
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="became nan at epoch 1, batch 5"):
        fit_one_cycle(
            Diverging(),
            FakeLoader(8),
            FakeLoader(1),
            task="multi_label",
            epochs=1,
            lrs=[1e-3],
            precision="fp32",
            loss_every=4,
        )


def test_a_resumed_fp16_fit_keeps_its_loss_scale(tmp_path):
    """The checkpoint holds the GradScaler's state: a fit killed after an epoch whose steps
    overflowed twice resumes at the scale it had found (16384), not at 65536 again; a
    checkpoint from before (no scaler state) resumes at the default."""
    calls = {"n": 0}

    def overflow_twice(g: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return g * math.inf if calls["n"] in (2, 3) else g

    class Stop(Exception):
        pass

    def stop(row: dict) -> None:
        raise Stop

    seen: dict = {}

    class Scale(Callback):
        def before_fit(self, fit: FitState) -> None:
            seen.update(epoch=fit.epoch, scale=fit.scaler.get_scale())

    def run(**kw) -> None:
        torch.manual_seed(0)
        net = TinyNet()
        net.fc.weight.register_hook(overflow_twice)
        fit_one_cycle(
            net,
            FakeLoader(6),
            FakeLoader(1),
            task="multi_label",
            epochs=2,
            lrs=[1e-3],
            precision=FP16_CPU,
            checkpoint_dir=tmp_path / "ck",
            key="k",
            callbacks=[Scale()],
            **kw,
        )

    with pytest.raises(Stop):
        run(on_epoch=stop)
    assert seen == {"epoch": 0, "scale": 65536.0}
    (path,) = (tmp_path / "ck").glob("epoch-*.pt")
    state = torch.load(path, weights_only=True)
    assert state["scaler"]["scale"] == 16384.0
    run()
    assert seen == {"epoch": 1, "scale": 16384.0}

    del state["scaler"]  # a checkpoint written before the scaler was kept
    torch.save(state, path)
    for extra in (tmp_path / "ck").glob("epoch-*.pt"):
        if extra != path:
            extra.unlink()
    run()
    assert seen == {"epoch": 1, "scale": 65536.0}


def test_lr_finder_runs_fp16_with_its_scaler():
    from planet.learn.lr_finder import lr_find

    torch.manual_seed(0)
    result = lr_find(
        TinyNet(), FakeLoader(5), task="multi_label", num_it=8, end_lr=1e-2, precision=FP16_CPU
    )
    assert len(result.lrs) >= 5 and all(math.isfinite(v) for v in result.raw_losses)


# ---------------------------------------------------------------------------------------------
# prediction: the precision is part of the parts' config


@pytest.fixture
def sized(tmp_path: Path):
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (21, 8, 8, 3), dtype=np.uint8)
    names = [f"img_{i}" for i in range(21)]
    return write_sized(tmp_path / "sized", names, pixels, shard_rows=8)


def test_prediction_parts_of_another_precision_are_not_mixed_in(sized, tmp_path):
    m = model(FlatNet)
    kw = dict(classes=CLASSES, task="multi_label", batch_size=4, part_size=8, tta=False)
    settings = {"bundle_sha256": "a"}
    out = tmp_path / "pred"
    with pytest.raises(RuntimeError, match="killed"):  # bf16 part 0 written, killed in part 1
        predict_split(Killer(m, 2 + 1), sized, out, settings=settings, precision="bf16", **kw)
    assert (out / "parts" / "part-00000.parquet").is_file()
    resumed = predict_split(m, sized, out, settings=settings, precision="fp32", **kw)
    assert resumed["parts_reused"] == 0 and resumed["parts_computed"] == 3
    assert resumed["precision"] == "fp32" and resumed["config"]["precision"] == "fp32"
    bf16 = predict_split(m, sized, tmp_path / "bf16", settings=settings, precision="bf16", **kw)
    assert bf16["precision"] == "bf16" and bf16["config_sha256"] != resumed["config_sha256"]
    assert predictions_complete(out, settings, precision="fp32")
    assert not predictions_complete(out, settings, precision="bf16")
    again = predict_split(m, sized, out, settings=settings, precision="auto", **kw)
    assert again["reused"] is (choose_precision("cpu").name == "fp32")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        predict_split(m, sized, tmp_path / "x", settings=settings, precision="fp16", **kw)


# ---------------------------------------------------------------------------------------------
# the switch reaches the training stage

TINY = Recipe(
    name="tiny-precision",
    arch="resnet18",
    pretrained=False,
    stages=[TrainStage(size=32, frozen=False, epochs=1, lr="1e-3", batch_size=16)],
)


def test_planet_run_precision_flag_reaches_the_train_config():
    config = cli.parse_run_config(["--competition", "planet", "--precision", "fp32"])
    assert config.for_stage(TrainConfig).compute.precision == "fp32"
    assert cli.parse_run_config(["--competition", "planet"]).compute.precision == "auto"


def test_run_stage_trains_at_the_precision_asked_and_records_it(tmp_path):
    make_toy_planet(tmp_path, n=48, sizes=(32,))
    ws = Workspace.of(tmp_path, PLANET)
    record = stages.run_stage(ws, TINY, 0, device="cpu", workers=1, precision="bf16")
    assert record["precision"] == "bf16"
    saved = json.loads(stages.model_run(ws, TINY).stage_record(0).read_text())
    assert saved["precision"] == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        stages.run_stage(ws, TINY.model_copy(update={"seed": 1}), 0, device="cpu", precision="fp16")


@pytest.mark.slow
def test_the_train_flow_passes_the_precision_flag_to_its_stages(prefect_api, tmp_path):
    from flows.train import train

    make_toy_planet(tmp_path, n=48, sizes=(32,))
    argv = ["--data-dir", str(tmp_path), "--device", "cpu", "--workers", "1"]
    config = cli.parse_run_config(["--competition", "planet", *argv, "--precision", "bf16"])
    summary = train(config.for_stage(TrainConfig).model_copy(update={"recipe": TINY}))
    assert [st["precision"] for st in summary["stages"]] == ["bf16"]


def test_predict_probs_runs_at_the_precision_given():
    from planet.infer.tta import predict_probs

    m, x = model(FlatNet), torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    fp32 = predict_probs(m, x, "multi_label", tta=False, precision=Precision("fp32", "cpu"))
    bf16 = predict_probs(m, x, "multi_label", tta=False, precision=Precision("bf16", "cpu"))
    assert fp32.dtype == bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)  # the forward really ran in bf16
    torch.testing.assert_close(bf16, fp32, atol=2e-2, rtol=0)
    default = predict_probs(m, x, "multi_label", tta=False)  # auto on the CPU
    assert torch.equal(default, fp32 if choose_precision("cpu").name == "fp32" else bf16)
