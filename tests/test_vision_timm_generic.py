"""timm's generic model checks (the ones timm's ``tests/test_models.py`` runs over its own
models) over our six names: forward, backward, the default config, the feature / head API
(``forward_features``, ``forward_head(pre_logits=True)``, ``reset_classifier``), feature
extraction (``features_only``, ``forward_intermediates``).

The fast tests keep each name's width, patch size and LayerScale init but build two blocks on
32-pixel images (4 or 16 patches); the ``slow`` ones build each model as registered and run it
at its config's input size (224).
"""

from __future__ import annotations

import pytest
import timm
import torch

import vision  # noqa: F401  (registers the models)
from vision import MODEL_NAMES

TINY = dict(img_size=32, depth=2)
BATCH = 2


def tiny(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{**TINY, **kwargs})


def image(model: torch.nn.Module, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 3, *model.stem.img_size, generator=torch.Generator().manual_seed(1))


def test_every_name_is_registered_with_timm():
    assert set(MODEL_NAMES) <= set(timm.list_models("resmlp_*"))
    assert len(MODEL_NAMES) == 6


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_forward(name):
    model = tiny(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(image(model))
    assert out.shape == (BATCH, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_backward(name):
    """Every parameter gets a gradient (timm: ``num_params == num_grad``)."""
    model = tiny(name, num_classes=7).train()
    out = model(image(model))
    out.mean().backward()
    num_params = sum(p.numel() for p in model.parameters())
    num_grad = sum(p.grad.numel() for p in model.parameters() if p.grad is not None)
    assert num_params == num_grad
    assert out.shape == (BATCH, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_default_cfg(name):
    """The config names the model's own layers; the feature / head API has timm's shapes."""
    model = tiny(name).eval()
    cfg = model.pretrained_cfg
    state_dict = model.state_dict()
    assert cfg["input_size"] == (3, 224, 224) and cfg["fixed_input_size"]
    assert cfg["num_classes"] == 1000 == model.num_classes
    assert len(cfg["mean"]) == len(cfg["std"]) == 3
    assert cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic"
    classifier = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
    for c in classifier:
        assert c + ".weight" in state_dict, f"{c} not in model params"
    first_conv = cfg["first_conv"] if isinstance(cfg["first_conv"], (tuple, list)) else (cfg["first_conv"],)
    for fc in first_conv:
        assert fc + ".weight" in state_dict, f"{fc} not in model params"
    assert model.get_classifier() is model.head

    x = image(model)
    with torch.no_grad():
        feats = model.forward_features(x)  # unpooled: (B, N, C)
        assert feats.shape == (BATCH, model.num_tokens, model.num_features)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (BATCH, model.num_features)
        torch.testing.assert_close(model.head(pre), model(x), atol=1e-5, rtol=1e-5)

        model.reset_classifier(0)  # no classifier: pooled features
        out = model(x)
        assert out.shape == (BATCH, model.num_features)
        torch.testing.assert_close(out, pre, atol=1e-5, rtol=1e-5)

        model.reset_classifier(0, "")  # no classifier, no pooling: the tokens
        assert model(x).shape == (BATCH, model.num_tokens, model.num_features)

        model.reset_classifier(5, "avg")
        assert model(x).shape == (BATCH, 5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_feature_info(name):
    """One ``feature_info`` entry per block, naming a module of the model."""
    model = tiny(name)
    modules = dict(model.named_modules())
    assert len(model.feature_info) == len(model.blocks)
    for info in model.feature_info:
        assert info["module"] in modules
        assert info["num_chs"] == model.num_features
        assert info["reduction"] == model.stem.patch_size[0]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_forward_intermediates(name):
    """timm's MlpMixer convention: NCHW (patch grid) or NLC block outputs, the final Affine with
    ``norm``; the last one with ``norm`` is ``forward_features``, whatever the layout."""
    model = tiny(name, depth=3).eval()
    x = image(model)
    grid = model.stem.grid_size
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        assert [y.shape for y in inter] == [(BATCH, model.num_features, *grid)] * 3
        nlc = model.forward_intermediates(x, indices=[0, 2], norm=True, output_fmt="NLC", intermediates_only=True)
        assert [y.shape for y in nlc] == [(BATCH, model.num_tokens, model.num_features)] * 2
        torch.testing.assert_close(nlc[-1], feats)
        nchw = model.forward_intermediates(x, indices=1, norm=True, stop_early=True, intermediates_only=True)
        torch.testing.assert_close(nchw[0], feats.transpose(1, 2).reshape(BATCH, model.num_features, *grid))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_features_only(name):
    """``features_only=True`` (timm's feature getter): one NCHW map per ``out_indices``."""
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, out_indices=(0, 2), **{**TINY, "depth": 4}).eval()
    assert model.feature_info.channels() == [model.model.num_features] * 2
    x = torch.randn(BATCH, 3, 32, 32)
    with torch.no_grad():
        outputs = model(x)
    assert len(model.model.blocks) == 3  # pruned after the last block asked for
    patch = model.feature_info.reduction()[0]
    for o in outputs:
        assert o.shape == (BATCH, model.model.num_features, 32 // patch, 32 // patch)
        assert torch.isfinite(o).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_default_cfg_full_size(name):
    """Each model as registered, at its config's input size: 1000 classes, finite outputs."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    patch = model.stem.patch_size[0]
    assert model.num_tokens == (cfg["input_size"][1] // patch) * (cfg["input_size"][2] // patch)
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model.forward_head(feats)
    assert feats.shape == (1, model.num_tokens, model.num_features)
    assert out.shape == (1, cfg["num_classes"])
    assert torch.isfinite(out).all()
