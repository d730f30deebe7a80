"""Self-supervised ResMLP (vision.dino), the frozen-feature evaluations (vision.knn, vision.linear),
fine-tuning from a DINO checkpoint, the fb_dino layout, the pretrained tags and the paper's figure.

The DINO pieces are checked against values computed by hand here (not by calling the code under
test); the CLIs run on a few JPEG files the tests write."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import helpers
import vision  # noqa: F401
from vision import checkpoint as ckpt_io
from vision.dino import (
    RUN_FLAGS,
    build_parser,
    recipe_changes,
    DINOHead,
    DINOLoss,
    MultiCropAugmentation,
    MultiCropWrapper,
    cancel_last_layer_gradients,
    clip_gradients_per_parameter,
    cosine_schedule,
    param_groups,
    teacher_entropies,
    update_teacher,
)
from vision.features import topk_accuracy
from vision.knn import knn_scores
from vision.linear import fit_linear

REPO = Path(__file__).resolve().parents[1]
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2)
TINY_ARGS = ["--model", "resmlp_s12", "--img-size", "32", "--model-kwargs", "patch_size=8", "embed_dim=32",
             "depth=2"]
TINY_DINO = [*TINY_ARGS, "--out-dim", "64", "--head-hidden-dim", "64", "--head-bottleneck-dim", "16",
             "--local-crops-number", "2", "--warmup-epochs", "1", "--warmup-teacher-temp-epochs", "1", "--batch-size",
             "8", "--workers", "0", "--threads", "1", "--drop-path", "0.1"]


def run(module: str, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` through the one test helper."""
    return helpers.run([sys.executable, "-m", module, *args], check=check, env=env, timeout=600)


@pytest.fixture(scope="module")
def jpeg_data(tmp_path_factory) -> Path:
    """3 classes of 32x32 JPEGs (8 train, 4 test each): a class is a colour, with noise."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for split, n in (("train", 8), ("test", 4)):
        for cls, colour in colours.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:04d}.jpg", quality=90)
    return root


# --------------------------------------------------------------------------------------
# DINO pieces against hand-computed values
# --------------------------------------------------------------------------------------


def _softmax(v):
    e = [math.exp(x - max(v)) for x in v]
    return [x / sum(e) for x in e]


def test_dino_loss_and_centering_match_hand_computation():
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # 2 global crops, batch 1, K=3
    student = torch.tensor([[0.2, 0.1, 0.0], [0.0, 0.3, 0.1], [0.5, 0.0, 0.2]])  # 3 crops
    loss_fn = DINOLoss(3, ncrops=3, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30,
                       nepochs=100)
    loss = loss_fn(student, teacher, epoch=0).item()
    q = [_softmax([x / 0.04 for x in row]) for row in teacher.tolist()]  # centre 0, temperature 0.04 at epoch 0
    logp = [[math.log(p) for p in _softmax([x / 0.1 for x in row])] for row in student.tolist()]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # teacher crop i against every other student crop
    expected = sum(-sum(qk * lk for qk, lk in zip(q[i], logp[v])) for i, v in pairs) / len(pairs)
    assert loss == pytest.approx(expected, rel=1e-5)
    # the centre: 0.9 * 0 + 0.1 * batch mean of the teacher outputs
    assert loss_fn.center[0].tolist() == pytest.approx([0.05, 0.05, 0.0])
    loss_fn(student, teacher, epoch=0)
    assert loss_fn.center[0].tolist() == pytest.approx([0.9 * 0.05 + 0.05, 0.9 * 0.05 + 0.05, 0.0])
    # a centred teacher: the centre is subtracted before sharpening
    c = loss_fn.center[0].tolist()
    q2 = [_softmax([(x - ci) / 0.04 for x, ci in zip(row, c)]) for row in teacher.tolist()]
    expected2 = sum(-sum(qk * lk for qk, lk in zip(q2[i], logp[v])) for i, v in pairs) / len(pairs)
    assert loss_fn(student, teacher, epoch=0).item() == pytest.approx(expected2, rel=1e-5)
    # teacher temperature: linear warm-up over the first 30 epochs, then constant
    assert loss_fn.teacher_temp(0) == pytest.approx(0.04)
    assert loss_fn.teacher_temp(15) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert loss_fn.teacher_temp(29) == pytest.approx(0.07) and loss_fn.teacher_temp(99) == pytest.approx(0.07)
    with pytest.raises(ValueError, match="at least the 2 global crops"):
        DINOLoss(3, ncrops=1)


def test_teacher_entropies_tell_uniform_collapse_from_one_dimension_and_health():
    K = 8
    uniform = torch.full((4, K), 1.0 / K)
    per_image, of_mean = teacher_entropies(uniform)
    assert per_image.item() == pytest.approx(math.log(K)) and of_mean.item() == pytest.approx(math.log(K))
    same_dim = torch.zeros(4, K)
    same_dim[:, 3] = 1.0
    per_image, of_mean = teacher_entropies(same_dim)
    assert per_image.item() == pytest.approx(0.0, abs=1e-6) and of_mean.item() == pytest.approx(0.0, abs=1e-6)
    healthy = torch.eye(K)[:4]  # one-hot rows on 4 different dimensions
    per_image, of_mean = teacher_entropies(healthy)
    assert per_image.item() == pytest.approx(0.0, abs=1e-6) and of_mean.item() == pytest.approx(math.log(4))
    # DINOLoss records them for the teacher distribution it used: [0.5, 0.5] rows -> ln 2 each
    loss_fn = DINOLoss(2, ncrops=2, warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=1,
                       nepochs=2)
    loss_fn(torch.zeros(4, 2), torch.zeros(4, 2), epoch=0)
    assert loss_fn.last_teacher_entropy.item() == pytest.approx(math.log(2))
    assert loss_fn.last_teacher_batch_entropy.item() == pytest.approx(math.log(2))


def test_recipe_changes_name_recipe_flags_and_ignore_run_flags():
    from vision.config import parse_with_config

    base = [*TINY_DINO, "--data-dir", "d", "--output", "o"]
    saved = ckpt_io.args_dict(parse_with_config(build_parser(), base))
    assert recipe_changes(saved, parse_with_config(build_parser(), base)) == []
    # where and how it runs may change; the recipe may not
    moved = parse_with_config(build_parser(), [*base, "--threads", "2", "--data-dir", "elsewhere",
                                               "--max-train-minutes", "5"])
    assert recipe_changes(saved, moved) == []
    changed = parse_with_config(build_parser(), [*base, "--teacher-temp", "0.04", "--global-crops-scale", "0.3", "1"])
    assert recipe_changes(saved, changed) == ["--global-crops-scale: [0.4, 1.0] -> [0.3, 1.0]",
                                              "--teacher-temp: 0.07 -> 0.04"]
    # a flag the checkpoint does not record (added later) is not compared
    assert recipe_changes({k: v for k, v in saved.items() if k != "teacher_temp"}, changed) == [
        "--global-crops-scale: [0.4, 1.0] -> [0.3, 1.0]"]
    assert {"threads", "output", "resume", "device"} <= RUN_FLAGS and not RUN_FLAGS & {"lr", "epochs", "seed",
                                                                                       "teacher_temp", "model_kwargs"}


def test_update_teacher_is_an_ema_of_the_student_parameters():
    student, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]])), student.bias.fill_(4.0)
        teacher.weight.copy_(torch.tensor([[0.0, 10.0]])), teacher.bias.fill_(0.0)
    update_teacher(student, teacher, 0.9)
    assert teacher.weight[0].tolist() == pytest.approx([0.1, 9.2]) and teacher.bias.tolist() == pytest.approx([0.4])
    assert student.weight.tolist() == [[1.0, 2.0]]  # the student is untouched
    update_teacher(student, teacher, 1.0)
    assert teacher.weight[0].tolist() == pytest.approx([0.1, 9.2])


def test_cosine_schedule_warmup_then_cosine():
    sched = cosine_schedule(1.0, 0.0, epochs=2, niter_per_ep=2, warmup_epochs=1)
    assert sched.tolist() == pytest.approx([0.0, 1.0, 1.0, 0.5])  # linspace(0, 1, 2), then 0.5 * (1 + cos(pi * i / 2))
    momentum = cosine_schedule(0.996, 1.0, epochs=3, niter_per_ep=4)
    assert momentum[0] == pytest.approx(0.996) and momentum[-1] == pytest.approx(1 - 0.004 * 0.5
                                                                                 * (1 + math.cos(math.pi * 11 / 12)))
    assert np.all(np.diff(momentum) >= 0)
    assert len(cosine_schedule(1.0, 0.0, 3, 5, warmup_epochs=0.4)) == 15
    with pytest.raises(ValueError, match="longer than"):
        cosine_schedule(1.0, 0.0, 1, 4, warmup_epochs=2)


def test_gradient_clipping_is_per_parameter_and_last_layer_freezing():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    model = torch.nn.Module()
    model.a, model.b = a, b
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])  # norms 5 and 1
    norms = clip_gradients_per_parameter(model, 3.0)
    assert norms == pytest.approx([5.0, 1.0])
    assert a.grad.tolist() == pytest.approx([3.0 * 3 / 5, 4.0 * 3 / 5], rel=1e-5)  # scaled to norm 3 on its own
    assert b.grad.tolist() == [0.0, 1.0, 0.0]  # under the limit: untouched
    head = DINOHead(4, out_dim=6, hidden_dim=8, bottleneck_dim=3)
    head(torch.randn(2, 4)).sum().backward()
    cancel_last_layer_gradients(head, epoch=1, freeze_last_layer=1)
    assert head.last_layer.parametrizations.weight.original1.grad is not None
    cancel_last_layer_gradients(head, epoch=0, freeze_last_layer=1)
    assert head.last_layer.parametrizations.weight.original1.grad is None and head.mlp[0].weight.grad is not None


def test_dino_head_shapes_and_weight_normalised_last_layer():
    head = DINOHead(32, out_dim=100, hidden_dim=2048, bottleneck_dim=256)
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [2048, 2048, 256]
    x = torch.randn(5, 32)
    out = head(x)
    assert out.shape == (5, 100)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    assert head.last_layer.weight.norm(dim=1).tolist() == pytest.approx([1.0] * 100, rel=1e-5)  # unit rows
    bottleneck = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(out, bottleneck @ head.last_layer.weight.T)
    assert DINOHead(32, out_dim=10, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad


def test_param_groups_leave_affine_layerscale_and_biases_undecayed():
    model = timm.create_model("resmlp_s12", num_classes=0, **TINY)
    wrapper = MultiCropWrapper(model, DINOHead(32, out_dim=8, hidden_dim=16, bottleneck_dim=4))
    decayed, plain = param_groups(wrapper)
    names = {id(p): n for n, p in wrapper.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert plain["weight_decay"] == 0.0
    assert ("backbone.blocks.0.norm1.alpha" in plain_names and "backbone.blocks.1.ls2" in plain_names
            and "backbone.norm.beta" in plain_names)
    assert "backbone.blocks.0.linear_tokens.bias" in plain_names and "head.mlp.0.bias" in plain_names
    assert "backbone.blocks.0.linear_tokens.weight" in decayed_names and "head.mlp.0.weight" in decayed_names
    assert "head.last_layer.parametrizations.weight.original1" in decayed_names
    assert not any("original0" in n for n in decayed_names | plain_names)  # the frozen norm is not optimised


def test_multi_crop_augmentation_and_wrapper_order():
    aug = MultiCropAugmentation(global_size=32, local_size=16, local_crops_number=3)
    crops = aug(Image.new("RGB", (40, 30), (100, 150, 200)))
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    with pytest.raises(ValueError, match="local_scale"):
        MultiCropAugmentation(local_scale=(0.5, 0.1))

    class MeanBackbone(torch.nn.Module):  # (B, 3, H, W) -> (B, 3): works at any size
        calls: list = []

        def forward(self, x):
            self.calls.append(tuple(x.shape))
            return x.mean(dim=(2, 3))

    backbone = MeanBackbone()
    wrapper = MultiCropWrapper(backbone, torch.nn.Identity())
    g = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    loc = [torch.randn(2, 3, 4, 4) for _ in range(3)]
    out = wrapper(g + loc)
    assert backbone.calls == [(4, 3, 8, 8), (6, 3, 4, 4)]  # one call per run of equal sizes
    torch.testing.assert_close(out, torch.cat([c.mean(dim=(2, 3)) for c in g + loc]))  # crop-major


# --------------------------------------------------------------------------------------
# k-NN and linear probe where the answer is known
# --------------------------------------------------------------------------------------


def test_knn_scores_match_hand_computed_weighted_votes():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[2.0, 0.2]])
    T = 0.5
    scores = knn_scores(train, labels, test, k=2, temperature=T, num_classes=2)
    t = test[0] / test[0].norm()
    cos = [float(t @ (r / r.norm())) for r in train]  # 0.995, 0.0995, 0.774: neighbours 0 and 2
    assert scores[0].tolist() == pytest.approx([math.exp(cos[0] / T), math.exp(cos[2] / T)], rel=1e-5)
    # k = 1: the nearest label only; far from any boundary everything is right
    assert knn_scores(train, labels, torch.tensor([[0.1, 3.0]]), 1, 0.07, 2).argmax(1).tolist() == [1]
    with pytest.raises(ValueError, match="k = 4"):
        knn_scores(train, labels, test, k=4, temperature=T, num_classes=2)
    acc = topk_accuracy(torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]]), torch.tensor([1, 2]), ks=(1, 2))
    assert acc == {"top1": 50.0, "top2": 100.0}


def test_linear_probe_separates_separable_features_and_knn_finds_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(4).repeat_interleave(30)
    x = centres[y] + torch.randn(120, 16, generator=g) * 0.5
    y_test = torch.arange(4).repeat_interleave(10)
    x_test = centres[y_test] + torch.randn(40, 16, generator=g) * 0.5
    W, b = fit_linear(x, y, 4, weight_decay=1e-3)
    assert topk_accuracy(x_test @ W.T + b, y_test)["top1"] == 100.0
    assert topk_accuracy(knn_scores(x, y, x_test, 20, 0.07, 4), y_test)["top1"] == 100.0
    # shuffled labels carry nothing: chance-level accuracy on the test points
    shuffled = y[torch.randperm(120, generator=g)]
    assert topk_accuracy(knn_scores(x, shuffled, x_test, 20, 0.07, 4), y_test)["top1"] < 60.0


# --------------------------------------------------------------------------------------
# Layouts: fb_dino, DINO checkpoints, fine-tuning with a new head, pretrained tags
# --------------------------------------------------------------------------------------


def timm_resmlp(num_classes: int = 1000) -> torch.nn.Module:
    """timm's own ResMLP class (what resmlp_12_224 builds) at a tiny size: its keys are the hub files'."""
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    return MlpMixer(num_classes=num_classes, img_size=32, patch_size=8, num_blocks=2, embed_dim=32, mlp_ratio=4,
                    block_layer=ResBlock, norm_layer=Affine).eval()


def test_fb_dino_layout_loads_as_a_backbone(tmp_path):
    ref = timm_resmlp()
    full = timm.create_model("resmlp_12_224", num_classes=1000)
    assert set(ref.state_dict()) == {k for k in full.state_dict()
                                     if not k.startswith("blocks.") or k.split(".")[1] in ("0", "1")}
    torch.save(ref.state_dict(), tmp_path / "fb_dino.pth")
    from vision.features import load_backbone

    class Args:
        checkpoint, model, weights, pretrained, random_init = (None, "resmlp_s12", str(tmp_path / "fb_dino.pth"),
                                                               False, False)
        model_kwargs, use_ema, seed = dict(TINY), False, 0

    backbone, info = load_backbone(Args)
    x = torch.randn(3, 3, 32, 32)
    expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
    torch.testing.assert_close(backbone(x), expected, atol=1e-5, rtol=1e-5)
    assert info["kind"] == "weights" and backbone.num_classes == 0
    # the same file through timm's pretrained path keeps its 1000-class head
    model = timm.create_model("resmlp_s12", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "fb_dino.pth")), **TINY).eval()
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)


def test_pretrained_tags_resolve_offline_from_the_hub_cache(tmp_path):
    assert timm.models.get_pretrained_cfg("resmlp_s12").hf_hub_id == "timm/resmlp_12_224.fb_in1k"
    assert set(timm.list_pretrained("resmlp_s*")) >= {"resmlp_s12.fb_in1k", "resmlp_s12.fb_distilled_in1k",
                                                      "resmlp_s12.fb_dino", "resmlp_s24.fb_dino",
                                                      "resmlp_s36.fb_distilled_in1k"}
    assert (timm.models.get_pretrained_cfg("resmlp_b24_p8.fb_in22k_ft_in1k").hf_hub_id
            == "timm/resmlp_big_24_224.fb_in22k_ft_in1k")
    assert timm.models.get_pretrained_cfg("resmlp_s24.fb_dino").url.endswith("/resmlp_24_dino.pth")
    assert not timm.models.get_pretrained_cfg("resmlp_b24").hf_hub_id  # no weights released for B24/16
    from safetensors.torch import save_file

    ref = timm_resmlp()
    rev = "0" * 40
    repo = tmp_path / "hub" / "models--timm--resmlp_12_224.fb_dino"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (repo / "snapshots" / rev).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, repo / "snapshots" / rev / "model.safetensors")
    torch.save(ref.state_dict(), tmp_path / "ref.pth")
    script = (
        "import torch, timm, vision, sys\n"
        "m = timm.create_model('resmlp_s12.fb_dino', pretrained=True, img_size=32, patch_size=8, embed_dim=32, "
        "depth=2).eval()\n"
        "ref = torch.load(sys.argv[1], weights_only=True)\n"
        "ok = all(torch.equal(m.state_dict()[k], v) for k, v in ref.items())\n"
        "print('loaded', ok, m.pretrained_cfg['hf_hub_id'])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ref.pth")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert "loaded True timm/resmlp_12_224.fb_dino" in proc.stdout, proc.stderr[-2000:]
    # no file in the cache and no network: timm's error, not a silent random model
    proc = subprocess.run([sys.executable, "-c", script.replace("fb_dino", "fb_in1k"), str(tmp_path / "ref.pth")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and "loaded" not in proc.stdout


def test_dino_checkpoint_gives_fine_tuning_a_backbone_and_a_new_head(tmp_path):
    student = MultiCropWrapper(timm.create_model("resmlp_s12", num_classes=0, **TINY),
                               DINOHead(32, out_dim=8, hidden_dim=16, bottleneck_dim=4))
    teacher = MultiCropWrapper(timm.create_model("resmlp_s12", num_classes=0, **TINY),
                               DINOHead(32, out_dim=8, hidden_dim=16, bottleneck_dim=4))
    state = {"format": ckpt_io.DINO_FORMAT, "model_name": "resmlp_s12", "model_kwargs": {**TINY, "num_classes": 0},
             "data_config": {"input_size": (3, 32, 32)}, "student": student.state_dict(),
             "teacher": teacher.state_dict()}
    torch.save(state, tmp_path / "dino.pth")
    model = timm.create_model("resmlp_s12", num_classes=10, **TINY)
    head_before = model.head.weight.clone()
    msg = ckpt_io.load_initial_weights(model, ckpt_io.load_state_dict(tmp_path / "dino.pth"), what="dino.pth")
    assert "new classifier head.weight (10, 32)" in msg
    for k, v in teacher.backbone.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k  # the teacher's backbone, not the student's
    assert torch.equal(model.head.weight, head_before)
    # a supervised checkpoint with a head of the same size keeps it; another size gets a new one
    sup = timm.create_model("resmlp_s12", num_classes=10, **TINY)
    assert "backbone and classifier" in ckpt_io.load_initial_weights(model, sup.state_dict())
    assert torch.equal(model.head.weight, sup.head.weight)
    assert "new classifier" in ckpt_io.load_initial_weights(timm.create_model("resmlp_s12", num_classes=3, **TINY),
                                                            sup.state_dict())
    # facebookresearch/dino's checkpoint.pth layout (DDP prefixes) reads the same way
    fb = {"teacher": {f"module.{k}": v for k, v in teacher.state_dict().items()}, "epoch": 3}
    sd = ckpt_io.state_dict_of(fb)
    assert set(sd) == set(teacher.backbone.state_dict())
    # another architecture is still refused, naming the keys
    with pytest.raises(ValueError, match="does not fit resmlp_s12"):
        ckpt_io.load_initial_weights(timm.create_model("resmlp_s12", num_classes=10, **{**TINY, "depth": 3}), sd)


# --------------------------------------------------------------------------------------
# CLIs
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dino_cli_resumes_exactly_then_evaluates_and_plots(jpeg_data, tmp_path):
    """2 epochs in one go == 1 epoch, stop, --resume auto, 1 more (student, teacher, centre,
    optimizer, CSV); then k-NN, linear probe and the figure on the checkpoint."""
    common = [*TINY_DINO, "--data-dir", str(jpeg_data), "--epochs", "2"]
    run("vision.dino", *common, "--output", str(tmp_path / "a"))
    first = run("vision.dino", *common, "--output", str(tmp_path / "b"), "--stop-after-epoch", "0")
    assert "epoch 0: DINO loss" in first.stdout and "epoch 1:" not in first.stdout
    second = run("vision.dino", *common, "--output", str(tmp_path / "b"), "--resume", "auto")
    assert "resumed from" in second.stdout and "epoch 0:" not in second.stdout
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["format"] == ckpt_io.DINO_FORMAT
    for key in ("student", "teacher", "dino_loss"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert not torch.equal(a["teacher"]["backbone.blocks.0.linear_tokens.weight"],
                           a["student"]["backbone.blocks.0.linear_tokens.weight"])
    assert (a["optimizer"]["param_groups"][0]["weight_decay"] > 0.04
            and a["optimizer"]["param_groups"][1]["weight_decay"] == 0.0)
    rows_a, rows_b = (list(csv.DictReader(open(tmp_path / r / "summary.csv"))) for r in ("a", "b"))
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b):  # the same losses and schedules (timings differ)
        assert {k: ra[k] for k in ("train_loss", "train_lr", "train_wd", "train_momentum", "train_teacher_temp")} == \
            {k: rb[k] for k in ("train_loss", "train_lr", "train_wd", "train_momentum", "train_teacher_temp")}
    assert a["dino_loss"]["center"].abs().sum() > 0
    # k-NN on the checkpoint (the teacher backbone) and on the same network at random init
    ckpt = str(tmp_path / "a" / "last.pth")
    ev = ["--data-dir", str(jpeg_data), "--val-split", "test", "--workers", "0", "--threads", "1"]
    run("vision.knn", "--checkpoint", ckpt, *ev, "--k", "5", "20", "--out", str(tmp_path / "knn"))
    report = json.loads((tmp_path / "knn.json").read_text())
    assert (report["backbone"]["kind"] == "dino" and report["data"]["train_images"] == 24
            and report["data"]["val_images"] == 12)
    assert report["results"]["20"]["k_used"] == 20 and 0 <= report["results"]["5"]["top1"] <= 100
    assert "| 20 |" in (tmp_path / "knn.md").read_text()
    run("vision.linear", "--checkpoint", ckpt, *ev, "--weight-decay", "1e-3", "--out", str(tmp_path / "linear"))
    probe = json.loads((tmp_path / "linear.json").read_text())
    assert probe["feature_dim"] == 32 and probe["result"]["weight_decay"] == 1e-3
    assert probe["result"]["val"]["top1"] >= 66.6  # colour classes: linearly separable even by these features
    # the paper's figure, supervised-shaped and DINO checkpoints side by side
    run("vision.plot", "--checkpoint", ckpt, "--label", "DINO", "--checkpoint", ckpt, "--label", "again",
        "--out", str(tmp_path / "fig.png"))
    with Image.open(tmp_path / "fig.png") as img:
        assert img.size[0] > 600


def test_features_cache_serves_knn_and_linear_probe_and_is_refused_for_other_inputs(jpeg_data, tmp_path, monkeypatch,
                                                                                    capsys):
    """--features-cache: the k-NN extracts and keeps the features; the linear probe of the same
    backbone reads them (no extraction) and scores as on fresh features; another seed, a rewritten
    weights file or a file that is not a cache make a new extraction."""
    import vision.features as features_mod
    from vision.knn import main as knn_main
    from vision.linear import main as linear_main

    calls = []
    real_extract = features_mod.extract_features

    def counting_extract(*a, **kw):
        calls.append(kw.get("desc") or a[-1])
        return real_extract(*a, **kw)

    monkeypatch.setattr(features_mod, "extract_features", counting_extract)
    torch.manual_seed(1)
    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("resmlp_s12", num_classes=0, **TINY).state_dict(), weights)
    cache = tmp_path / "cache" / "f.pt"
    model = [*TINY_ARGS, "img_size=32"]  # --model-kwargs last
    base = [*model, "--weights", str(weights), "--data-dir", str(jpeg_data), "--val-split", "test", "--workers", "0",
            "--threads", "1"]
    assert knn_main([*base, "--features-cache", str(cache), "--out", str(tmp_path / "knn_cached")]) == 0
    assert len(calls) == 2 and cache.is_file()  # train and val
    assert linear_main([*base, "--features-cache", str(cache), "--weight-decay", "1e-3",
                        "--out", str(tmp_path / "lin_cached")]) == 0
    assert knn_main([*base, "--features-cache", str(cache), "--batch-size", "5",
                     "--out", str(tmp_path / "knn_again")]) == 0
    # batch size does not change the features
    assert len(calls) == 2 and "from " + str(cache) in capsys.readouterr().out
    assert linear_main([*base, "--weight-decay", "1e-3", "--out", str(tmp_path / "lin_fresh")]) == 0
    assert len(calls) == 4
    cached, fresh = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("lin_cached", "lin_fresh"))
    assert cached["result"] == fresh["result"] and cached["backbone"] == fresh["backbone"]
    knn_first, knn_again = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("knn_cached", "knn_again"))
    assert knn_first["results"] == knn_again["results"]
    # other inputs are not served from the cache, and replace it
    random_init = [*model, "--random-init", "--data-dir", str(jpeg_data), "--val-split", "test", "--workers", "0",
                   "--threads", "1"]
    for seed, expected_calls in (("0", 6), ("1", 8), ("1", 8)):
        assert knn_main([*random_init, "--seed", seed, "--features-cache", str(cache)]) == 0
        assert len(calls) == expected_calls, seed
    torch.save(timm.create_model("resmlp_s12", num_classes=0, **TINY).state_dict(), weights)  # new weights, same path
    os.utime(weights, ns=(1, 1))
    assert knn_main([*base, "--features-cache", str(cache)]) == 0 and len(calls) == 10
    cache.write_text("not a cache")
    assert knn_main([*base, "--features-cache", str(cache)]) == 0 and len(calls) == 12
    assert torch.load(cache, weights_only=True)["key"]["weights"]["path"] == str(weights.resolve())


def test_dino_cli_bad_input_is_named(jpeg_data, tmp_path, capsys):
    from vision.dino import main as dino_main
    from vision.knn import main as knn_main
    from vision.linear import main as linear_main

    assert dino_main([*TINY_DINO, "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    assert "nowhere/train does not exist" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        dino_main([*TINY_DINO, "--local-crop-size", "16", "--data-dir", str(jpeg_data),
                   "--output", str(tmp_path / "o")])
    assert "--local-crop-size 16: a ResMLP reads one input size" in capsys.readouterr().err
    assert dino_main([*TINY_DINO, "--data-dir", str(jpeg_data), "--output", str(tmp_path / "o"),
                      "--batch-size", "64"]) == 2
    assert "less than one batch of 64" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        knn_main(["--checkpoint", str(tmp_path / "missing.pth"), "--data-dir", str(jpeg_data)])
    assert "missing.pth: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        linear_main(["--model", "resmlp_s12", "--data-dir", str(jpeg_data)])
    assert "exactly one of --weights FILE, --pretrained, --random-init" in capsys.readouterr().err
    # a supervised checkpoint is not a DINO run to resume; a text file is not a checkpoint
    (tmp_path / "notes.pth").write_text("hello")
    assert knn_main(["--checkpoint", str(tmp_path / "notes.pth"), "--data-dir", str(jpeg_data),
                     "--val-split", "test"]) == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
    torch.save({"format": ckpt_io.FORMAT, "model_name": "resmlp_s12"}, tmp_path / "sup.pth")
    assert dino_main([*TINY_DINO, "--data-dir", str(jpeg_data), "--output", str(tmp_path / "o2"),
                      "--resume", str(tmp_path / "sup.pth")]) == 2
    assert "not a vision.dino checkpoint" in capsys.readouterr().out
    # a DINO run is resumed with its own recipe: another one is refused, naming the flags
    from vision.config import parse_with_config
    from vision.dino import backbone_kwargs

    saved_args = parse_with_config(build_parser(), [*TINY_DINO, "--data-dir", "d", "--output", "o", "--lr", "1e-3"])
    teacher_kwargs, saved = backbone_kwargs(saved_args, 0.0), ckpt_io.args_dict(saved_args)
    torch.save({"format": ckpt_io.DINO_FORMAT, "model_name": "resmlp_s12", "model_kwargs": teacher_kwargs,
                "args": saved}, tmp_path / "other_recipe.pth")
    assert dino_main([*TINY_DINO, "--data-dir", str(jpeg_data), "--output", str(tmp_path / "o3"), "--resume",
                      str(tmp_path / "other_recipe.pth")]) == 2
    assert "trained with another recipe (--lr: 0.001 -> 0.0005)" in capsys.readouterr().out
    # a DINO backbone has no classifier to evaluate with labels: vision.evaluate says what to use instead
    from vision.evaluate import main as evaluate_main

    backbone = timm.create_model("resmlp_s12", num_classes=0, **TINY)
    wrapper = MultiCropWrapper(backbone, DINOHead(32, out_dim=8, hidden_dim=16, bottleneck_dim=4))
    torch.save({"format": ckpt_io.DINO_FORMAT, "model_name": "resmlp_s12", "model_kwargs": {**TINY, "num_classes": 0},
                "data_config": {"input_size": (3, 32, 32)}, "teacher": wrapper.state_dict()}, tmp_path / "dino.pth")
    assert evaluate_main(["--checkpoint", str(tmp_path / "dino.pth"), "--data-dir", str(jpeg_data / "test")]) == 2
    assert "is a vision.dino checkpoint" in capsys.readouterr().err


def test_configs_are_valid_for_their_cli():
    from vision.config import available_configs, load_config
    from vision.dino import build_parser as dino_parser
    from vision.train import build_parser as train_parser

    names = available_configs()
    assert {"dino_imagenet_s12", "dino_imagenet_s24", "dino_cifar10_cpu", "transfer_cifar10_s12",
            "transfer_cifar10_s24"} <= set(names)
    dino_defaults = dict(epochs=300, momentum_teacher=0.996, warmup_teacher_temp=0.04, teacher_temp=0.07,
                         student_temp=0.1, center_momentum=0.9, weight_decay=0.04, weight_decay_end=0.4, clip_grad=3.0,
                         freeze_last_layer=1, head_hidden_dim=2048, head_bottleneck_dim=256, head_layers=3,
                         global_crops_scale=[0.4, 1.0], local_crops_scale=[0.05, 0.4], out_dim=65536, lr=5e-4,
                         lr_base_size=256, warmup_epochs=10)
    for name in ("dino_imagenet_s12", "dino_imagenet_s24"):
        cfg = load_config(name, dino_parser())
        assert {k: cfg[k] for k in dino_defaults} == dino_defaults, name
    assert load_config("dino_imagenet_s24", dino_parser())["model"] == "resmlp_s24"
    assert load_config("dino_cifar10_cpu", dino_parser())["img_size"] == 32
    for name in ("transfer_cifar10_s12", "transfer_cifar10_s24"):
        cfg = load_config(name, train_parser())
        assert (cfg["opt"], cfg["lr"], cfg["weight_decay"], cfg["epochs"],
                cfg["img_size"]) == ("adamw", 5e-6, 0.05, 1000, 224)
    assert load_config("transfer_cifar10_s12", train_parser())["drop_path"] == 0.05
    assert load_config("transfer_cifar10_s24", train_parser())["drop_path"] == 0.1


def test_bench_dino_runs_the_evaluations_in_process_and_names_a_failed_one(capsys):
    """bench_dino's evaluations (vision.knn, vision.linear, vision.plot) run through their
    main() in the benchmark's process, logged as the command a user would type; one that fails
    (here argparse's exit 2) stops the benchmark naming that command, like a failed process."""
    from benchmarks import bench_dino

    cmd = [bench_dino.PY, "-m", "vision.knn", "--no-such-flag"]
    with pytest.raises(SystemExit, match=r"bench_dino: command failed \(2\): .* -m vision\.knn --no-such-flag"):
        bench_dino.run(cmd)
    out = capsys.readouterr()
    assert "$ " in out.out and "-m vision.knn --no-such-flag" in out.out and "python -m vision.knn: error:" in out.err
    assert bench_dino.IN_PROCESS == ("vision.knn", "vision.linear", "vision.plot")


def test_bench_dino_holdout_split_links_the_last_training_images_as_queries(jpeg_data, tmp_path):
    """The k-NN free of the test split: per class the last N training images (by name) are the
    queries, the others the memory, as symlinks; made once, remade for another N; a class too
    small for N is refused by name."""
    from benchmarks import bench_dino as bench

    split = bench.holdout_split(jpeg_data / "train", tmp_path / "split", 3, None)
    for cls in ("red", "green", "blue"):
        assert sorted(f.name for f in (split / "val" / cls).iterdir()) == ["0005.jpg", "0006.jpg", "0007.jpg"]
        assert sorted(f.name for f in (split / "train" / cls).iterdir()) == [f"{i:04d}.jpg" for i in range(5)]
        assert (split / "val" / cls / "0007.jpg").resolve() == (jpeg_data / "train" / cls / "0007.jpg").resolve()
    stamp = (split / "split.json").stat().st_mtime_ns
    assert bench.holdout_split(jpeg_data / "train", tmp_path / "split", 3, None) == split
    assert (split / "split.json").stat().st_mtime_ns == stamp  # reused
    # the first 6 of each class, the last 2 of them held out
    bench.holdout_split(jpeg_data / "train", tmp_path / "split", 2, 6)
    assert sorted(f.name for f in (split / "val" / "red").iterdir()) == ["0004.jpg", "0005.jpg"]
    assert len(list((split / "train" / "red").iterdir())) == 4
    # one folder name per split: k-NN outputs and feature caches named after it never serve another split
    assert bench.holdout_name(500, None) == "holdout_500" and bench.holdout_name(2, 6) == "holdout_2_of_first_6"
    with pytest.raises(SystemExit, match=r"--holdout-per-class 8: class folder .*blue has 8 images"):
        bench.holdout_split(jpeg_data / "train", tmp_path / "split2", 8, None)


@pytest.mark.slow
def test_bench_dino_quick_writes_results_with_goals_and_resumes(jpeg_data, tmp_path):
    tiny = "--batch-size 8 --model-kwargs patch_size=8 embed_dim=32 depth=2"
    cmd = [sys.executable, "-m", "benchmarks.bench_dino", "--quick", "--data-dir", str(jpeg_data),
           "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), "--minutes", "0.1",
           "--threads", "1", "--probe-steps", "2",
           f"--dino-args={tiny} --out-dim 64 --head-hidden-dim 64 --head-bottleneck-dim 16", f"--train-args={tiny}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the epochs are planned from a real DINO epoch on a slice (loader and augmentation timed),
    # then the probe is removed
    probe_cmd = next(line for line in proc.stdout.splitlines() if "dino_probe" in line and "-m vision.dino" in line)
    assert "--epochs 1 --max-per-class" in probe_cmd and not (tmp_path / "runs" / "dino_probe").exists()
    plan = json.loads((tmp_path / "runs" / "dino_plan.json").read_text())
    assert plan["probe_img_per_s"] > 0 and plan["epochs"] >= 1
    report = json.loads((tmp_path / "results" / "dino_cifar10.json").read_text())
    ev = report["frozen_features"]
    assert (set(ev) == {"dino", "random_init", "supervised"} and ev["dino"]["train_images"] == 24
            and ev["dino"]["test_images"] == 12)
    holdout = report["holdout_knn"]  # the k-NN free of the test split: 3 held-out training images a class as queries
    assert holdout["queries_per_class"] == 3 and set(holdout["knn_top1"]) == {"dino", "random_init"}
    assert len(list((tmp_path / "runs" / "holdout_3_of_first_30" / "val" / "red").iterdir())) == 3
    knn_goal = report["goals"]["knn_dino_vs_random_init"]
    assert knn_goal["met"] == (ev["dino"]["knn_top1"] - ev["random_init"]["knn_top1"] >= 20)
    ft = report["finetune"]
    assert report["goals"]["finetune_dino_vs_scratch"]["met"] == (ft["from_dino"]["final_top1"]
                                                                  > ft["from_scratch"]["final_top1"])
    assert ft["from_dino"]["epochs"] == ft["from_scratch"]["epochs"] == 1
    assert report["dino"]["epochs"] >= 1 and report["dino"]["model_kwargs"]["embed_dim"] == 32
    d = report["dino"]  # collapse monitors, one per epoch, between 0 and ln K
    assert len(d["teacher_entropy_by_epoch"]) == len(d["teacher_batch_entropy_by_epoch"]) == d["epochs"]
    assert all(0.0 <= h <= d["ln_out_dim"] + 1e-3
               for h in d["teacher_entropy_by_epoch"] + d["teacher_batch_entropy_by_epoch"])
    md = (tmp_path / "results" / "dino_cifar10.md").read_text()
    assert "QUICK SMOKE RUN" in md and md.count("**met**") + md.count("**missed**") == 2
    assert "k-NN free of the test split (the last 3 training images of each class as queries" in md
    assert (tmp_path / "results" / "dino_cifar10_cross_patch.png").is_file()
    # a second call finds every stage done and only rewrites the report
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode == 0 and "-m vision.dino" not in again.stdout and "-m vision.knn" not in again.stdout
    # the epochs are the plan's: a config (here --epochs) with other epochs is the same recipe, and the run is reused
    same = [*cmd[:-2], f"--dino-args={tiny} --out-dim 64 --head-hidden-dim 64 --head-bottleneck-dim 16 --epochs 7",
            cmd[-1]]
    reused = subprocess.run(same, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert reused.returncode == 0 and "-m vision.dino" not in reused.stdout, reused.stderr[-2000:]
    # another DINO recipe is refused, naming the flag, rather than served the old run's figures
    plan = (tmp_path / "runs" / "dino_plan.json").read_text()
    other = [*cmd[:-2], f"--dino-args={tiny} --out-dim 64 --head-hidden-dim 64 --head-bottleneck-dim 16"
             " --teacher-temp 0.05", cmd[-1]]
    refused = subprocess.run(other, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert refused.returncode != 0 and "-m vision.dino" not in refused.stdout
    assert ("dino_plan.json was made with another DINO recipe" in refused.stderr
            and "--teacher-temp: 0.04 -> 0.05" in refused.stderr)
    assert (tmp_path / "runs" / "dino_plan.json").read_text() == plan
    # a plan without a recorded recipe (older runs): the finished run's own arguments are checked
    (tmp_path / "runs" / "dino_plan.json").write_text(json.dumps({k: v for k, v in json.loads(plan).items()
                                                                  if k != "recipe"}))
    refused = subprocess.run(other, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert refused.returncode != 0 and "dino/last.pth was made with another DINO recipe" in refused.stderr


@pytest.mark.slow
def test_dino_ddp_with_two_cpu_processes(jpeg_data, tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vision.dino",
         *TINY_DINO, "--data-dir", str(jpeg_data), "--epochs", "1", "--batch-size", "4", "--output", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("2 process(es) on cpu, 3 steps per epoch" in proc.stdout and "peak lr" in proc.stdout
            and "global batch 8" in proc.stdout)
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["epoch"] == 0 and len(state["rng"]) == 2  # one generator state per rank
    assert torch.isfinite(state["dino_loss"]["center"]).all() and state["dino_loss"]["center"].abs().sum() > 0


@pytest.mark.slow
def test_screen_dino_runs_screens_side_by_side_reports_and_reuses(jpeg_data, tmp_path):
    """python -m benchmarks.screen_dino on the tiny JPEGs: two screens at once, a table with both and the
    random-init k-NN; a second call reuses the runs; a run folder made with other flags is refused."""
    small = ("--batch-size 8 --out-dim 64 --head-hidden-dim 64 --head-bottleneck-dim 16 --model-kwargs patch_size=8 "
             "embed_dim=32 depth=2")
    common = [sys.executable, "-m", "benchmarks.screen_dino", "--data-dir", str(jpeg_data),
              "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), "--only", "short_sched",
              "lr_4x", "--parallel", "2", "--holdout-per-class", "3"]
    first = helpers.run([*common, "--dino-args", small], timeout=600)
    assert first.stdout.count("-m vision.dino") == 2
    report = json.loads((tmp_path / "results" / "dino_screens.json").read_text())
    assert set(report["screens"]) == {"short_sched", "lr_4x"} and 0 <= report["random_init_knn_top1"] <= 100
    assert report["holdout_per_class"] == 3 and 0 <= report["random_init_holdout_knn_top1"] <= 100
    for row in report["screens"].values():
        assert row["epochs"] == 1 and row["threads"] == 1 and row["ln_out_dim"] == round(math.log(64), 3)
        assert 0 <= row["holdout_knn_top1"] <= 100  # ranked also on held-out training images, not only on test
    assert "--lr 4e-3" in " ".join(report["screens"]["lr_4x"]["flags"])
    md = (tmp_path / "results" / "dino_screens.md").read_text()
    assert ("| lr_4x |" in md and "| short_sched |" in md
            and "Held-out k-NN: the last 3 training images of each class" in md)
    lr_row = next(line for line in md.splitlines() if line.startswith("| lr_4x |"))
    assert lr_row.count("|") == 12 and not lr_row.endswith("- | - |")  # both k-NN columns filled
    again = helpers.run([*common, "--dino-args", small], timeout=600)
    assert "-m vision.dino" not in again.stdout and "-m vision.knn" not in again.stdout
    refused = helpers.run([*common, "--dino-args", small.replace("--out-dim 64", "--out-dim 32")], check=False,
                          timeout=600)
    assert refused.returncode != 0 and "--out-dim: 64 -> 32" in refused.stderr
