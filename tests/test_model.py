"""planet.learn.model: fast.ai's head and layer groups, freezing, pretrained weights, bundles."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from planet.learn.model import (
    ARCHS,
    AdaptiveConcatPool2d,
    ConvNet,
    PretrainedWeightsMissing,
    create_model,
    export_bundle,
    hub_weights_path,
    load_bundle,
    to_channels_last,
)

N = 17


def _model(arch: str = "resnet18", n: int = N) -> ConvNet:
    torch.manual_seed(0)
    return create_model(arch, n, pretrained=False)


@pytest.fixture
def torch_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty TORCH_HOME: the hub cache holds no weights."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert Path(torch.hub.get_dir()) == home / "hub"
    return home


def test_head_structure() -> None:
    m = _model()
    assert m.nf == 512
    types = [type(x) for x in m.head]
    assert types == [
        AdaptiveConcatPool2d,
        nn.Flatten,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
        nn.ReLU,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
    ]
    h = m.head
    assert h[2].num_features == 1024 and h[6].num_features == 512
    assert (h[4].in_features, h[4].out_features) == (1024, 512)
    assert (h[8].in_features, h[8].out_features) == (512, N)
    assert (h[3].p, h[7].p) == (0.25, 0.5)
    assert h[5].inplace


def test_concat_pool_is_max_then_avg() -> None:
    x = torch.randn(2, 5, 3, 4)
    out = AdaptiveConcatPool2d()(x)
    assert out.shape == (2, 10, 1, 1)
    want = torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)
    torch.testing.assert_close(out.flatten(1), want)


def test_head_init_kaiming_normal() -> None:
    m = _model()
    for lin in (m.head[4], m.head[8]):
        assert torch.all(lin.bias == 0)
        want = math.sqrt(2 / lin.in_features)
        assert lin.weight.std().item() == pytest.approx(want, rel=0.1)
        assert abs(lin.weight.mean().item()) < 0.1 * want
    for bn in (m.head[2], m.head[6]):  # BatchNorm keeps torch's default init
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_layer_groups_cover_parameters_once() -> None:
    m = _model()
    groups = m.layer_groups()
    assert len(groups) == 3
    assert groups[0][-1] is m.body[5] and groups[1][0] is m.body[6] is m.body[-2]  # layer3
    assert groups[2] is m.head
    pgs = m.param_groups()
    ids = [id(p) for g in pgs for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters()}
    assert [len(g) for g in pgs] == [len(list(g.parameters())) for g in groups]
    assert all(pgs)


def test_vgg16_bn_split_and_forward() -> None:
    m = _model("vgg16_bn", 3)
    assert m.nf == 512
    assert m.layer_groups()[1][0] is m.body[22]
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_forward_shape(arch: str) -> None:
    m = _model(arch, 5)
    assert m.nf == (2048 if arch == "resnet50" else 512)
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_freeze_keeps_batchnorm_trainable() -> None:
    m = _model()
    m.freeze()
    assert m.frozen_groups == 2
    assert all(p.requires_grad for p in m.head.parameters())
    convs = [x for x in m.body.modules() if isinstance(x, nn.Conv2d)]
    bns = [x for x in m.body.modules() if isinstance(x, nn.BatchNorm2d)]
    assert convs and bns
    assert not any(c.weight.requires_grad for c in convs)
    assert all(b.weight.requires_grad and b.bias.requires_grad for b in bns)

    m.train()
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(c.weight.grad is None for c in convs)
    assert all(b.weight.grad is not None for b in bns)
    assert all(p.grad is not None for p in m.head.parameters())

    m.freeze_to(1)
    assert m.frozen_groups == 1
    assert not m.body[0].weight.requires_grad and m.body[1].weight.requires_grad
    assert all(p.requires_grad for p in m.body[6:].parameters())

    m.unfreeze()
    assert m.frozen_groups == 0
    assert all(p.requires_grad for p in m.parameters())
    with pytest.raises(ValueError):
        m.freeze_to(4)


def test_channels_last_same_output() -> None:
    m = _model().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = m(x)
        to_channels_last(m)
        assert m.body[0].weight.is_contiguous(memory_format=torch.channels_last)
        got = m(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_missing_pretrained_weights_warn(torch_home: Path) -> None:
    want = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert hub_weights_path("resnet18") == want
    with pytest.warns(PretrainedWeightsMissing, match="resnet18-f37072fd.pth") as rec:
        m = create_model("resnet18", 3)
    msg = str(rec[0].message)
    assert str(want) in msg and "weights_path" in msg and "random" in msg
    assert m.pretrained_source is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_model("resnet18", 3, pretrained=False)


def test_pretrained_weights_from_hub_cache(torch_home: Path) -> None:
    state = torchvision.models.resnet18().state_dict()
    path = hub_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = create_model("resnet18", 3)
    assert m.pretrained_source == str(path)
    torch.testing.assert_close(m.body[0].weight, state["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(m.body[7][1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_weights_path(tmp_path: Path, torch_home: Path) -> None:
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = create_model("resnet18", 3, weights_path=path)
    assert m.pretrained_source == str(path)
    assert torch.equal(m.body[0].weight, state["conv1.weight"])

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_model("resnet18", 3, weights_path=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"model." + k: v for k, v in state.items()}, bad)
    with pytest.raises(ValueError, match="bad.pth.*resnet18.*missing keys"):
        create_model("resnet18", 3, weights_path=bad)
    r34 = tmp_path / "r34.pth"  # right keys, wrong shapes
    torch.save({**state, "fc.weight": torch.zeros(1000, 2048)}, r34)
    with pytest.raises(ValueError, match="(?s)r34.pth.*fc.weight"):
        create_model("resnet18", 3, weights_path=r34)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        create_model("resnet18", 3, weights_path=junk)


def test_bundle_round_trip(tmp_path: Path) -> None:
    m = _model(n=3)
    m.train()
    m(torch.randn(4, 3, 32, 32))  # move BatchNorm running statistics off their defaults
    m.eval()
    classes = ["a", "b", "c"]
    path = export_bundle(
        m,
        tmp_path / "out" / "model.pt",
        classes=classes,
        size=32,
        task="multi_label",
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.2, 0.2),
        extra={"thresholds": [0.2, 0.3, 0.4], "epoch": 3},
    )
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["model.pt"]
    b = load_bundle(path)
    assert not b.model.training
    assert (b.arch, b.classes, b.size, b.task) == ("resnet18", ("a", "b", "c"), 32, "multi_label")
    assert b.mean == (0.5, 0.4, 0.3) and b.std == (0.2, 0.2, 0.2)
    assert b.extra == {"thresholds": [0.2, 0.3, 0.4], "epoch": 3}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b.model(x), m(x))


def test_bundle_errors(tmp_path: Path) -> None:
    m = _model(n=2)
    kw = dict(size=32, task="single_label", mean=(0.5,) * 3, std=(0.2,) * 3)
    with pytest.raises(ValueError, match="2 outputs"):
        export_bundle(m, tmp_path / "x.pt", classes=["a"], **kw)
    with pytest.raises(ValueError, match="plain types"):
        export_bundle(m, tmp_path / "x.pt", classes=["a", "b"], extra={"p": Path("x")}, **kw)
    assert not list(tmp_path.iterdir())

    other = tmp_path / "other.pt"
    torch.save({"a": 1}, other)
    with pytest.raises(ValueError, match="other.pt.*not a model bundle"):
        load_bundle(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="junk.pt"):
        load_bundle(junk)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_bundle(tmp_path / "missing.pt")


def test_unknown_arch() -> None:
    with pytest.raises(ValueError, match="resnet34") as exc:
        create_model("resnet9000", 3, pretrained=False)
    assert all(name in str(exc.value) for name in ARCHS)


def test_the_light_weights_table_matches_torchvision(monkeypatch, tmp_path):
    from planet.learn import model as model_mod
    from planet.learn.weights import HUB_FILES, hub_file_candidates

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert set(HUB_FILES) == set(model_mod.ARCHS)
    for arch in model_mod.ARCHS:
        assert hub_file_candidates(arch) == model_mod.hub_candidates(arch), arch


def test_the_recipe_arch_list_is_the_model_arch_list() -> None:
    """Recipes are checked against planet.constants.ARCH_NAMES without importing torch."""
    from planet.constants import ARCH_NAMES

    assert set(ARCH_NAMES) == set(ARCHS)
