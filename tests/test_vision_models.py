"""ResMLP vision models: registry, parameter counts, official init, equivalence with timm and
with the official (DeiT-repo) code, checkpoint mapping, folding."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import Mlp
from timm.utils import reparameterize_model
from torch import nn

import vision
from resmlp_core import Affine
from vision import FoldedResMLPBlock, ResMLPBlock
from vision.reference import timm_reference

PAPER_PARAMS = {
    "resmlp_s12": 15_350_872,
    "resmlp_s24": 30_020_680,
    "resmlp_s36": 44_690_488,
    "resmlp_b24": 115_736_776,
    "resmlp_s12_p8": 22_051_624,
    "resmlp_b24_p8": 129_138_280,
}
OFFICIAL_INIT = {"resmlp_s12": 0.1, "resmlp_s24": 1e-5, "resmlp_s36": 1e-6, "resmlp_b24": 1e-6, "resmlp_s12_p8": 0.1,
                 "resmlp_b24_p8": 1e-6}
SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=3)  # 16 patches


def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking weights: Affine and LayerScale away from their init, non-zero biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("alpha"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith(("beta", "bias")):
                p.copy_(0.1 * noise)
            elif name.endswith(("ls1", "ls2")):
                p.copy_(0.1 + 0.05 * noise)
    return model


# --------------------------------------------------------------------------------------
# The official code (facebookresearch/deit resmlp_models.py), re-typed from that file
# and the paper's Algorithm 1: (B, N, C) layout, transposes, DeiT parameter names.
# --------------------------------------------------------------------------------------


class OfficialAffine(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.alpha * x + self.beta


class OfficialBlock(nn.Module):  # deit: layers_scale_mlp_blocks
    def __init__(self, dim, num_patches, init_values):
        super().__init__()
        self.norm1 = OfficialAffine(dim)
        self.attn = nn.Linear(num_patches, num_patches)
        self.norm2 = OfficialAffine(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(4.0 * dim))
        self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
        self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        x = x + self.gamma_1 * self.attn(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.gamma_2 * self.mlp(self.norm2(x))
        return x


class OfficialResMLP(nn.Module):  # deit: resmlp_models
    def __init__(self, img_size, patch_size, embed_dim, depth, num_classes, init_values=0.1):
        super().__init__()
        from timm.layers import PatchEmbed

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim)
        n = self.patch_embed.num_patches
        self.blocks = nn.ModuleList([OfficialBlock(embed_dim, n, init_values) for _ in range(depth)])
        self.norm = OfficialAffine(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return self.head(x.mean(dim=1))


# --------------------------------------------------------------------------------------
# Registry, sizes, init
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_parameter_count_equals_paper(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[name]


def test_registered_names_do_not_shadow_timm_resmlp():
    ours = set(timm.list_models("resmlp_*"))
    assert set(PAPER_PARAMS) <= ours
    assert {"resmlp_12_224", "resmlp_24_224"} <= ours  # timm's own stay available
    assert timm.models.get_pretrained_cfg("resmlp_s12").crop_pct == 0.9


def test_create_model_arguments():
    model = timm.create_model("resmlp_s24", num_classes=7, img_size=64, patch_size=8, drop_path_rate=0.2, embed_dim=32,
                              depth=4)
    assert model.head.out_features == 7
    assert model.num_tokens == 64
    assert model.blocks[0].linear_tokens.weight.shape == (64, 64)
    assert [b.drop_path_rate for b in model.blocks] == [0.2] * 4  # the same rate at every depth
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("name", list(OFFICIAL_INIT))
def test_official_layerscale_and_init(name):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=32, patch_size=8, depth=2, embed_dim=64)  # small, same rules
    for block in model.blocks:
        assert torch.all(block.ls1 == OFFICIAL_INIT[name]) and torch.all(block.ls2 == OFFICIAL_INIT[name])
        assert torch.all(block.norm1.alpha == 1) and torch.all(block.norm1.beta == 0)
    for linear in [m for m in model.modules() if isinstance(m, nn.Linear)] + [b.linear_tokens for b in model.blocks]:
        w = linear.weight
        # timm's trunc_normal_(std=.02), as the official code: its cut-off is at +-2 (absolute),
        # so in practice a plain normal with std 0.02
        assert 0.017 < w.std().item() < 0.023 and w.abs().max() < 0.15
        assert torch.all(linear.bias == 0)


def test_no_weight_decay_on_affine_layerscale_and_bias():
    from timm.optim import create_optimizer_v2

    model = timm.create_model("resmlp_s12", **SMALL)
    opt = create_optimizer_v2(model, opt="lamb", lr=1e-3, weight_decay=0.2)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names and all(n.endswith("weight") for n in names), names
    assert "blocks.0.linear_tokens.weight" in names and "blocks.0.mlp_channels.fc1.weight" in names
    for n, p in model.named_parameters():
        if n.endswith(("alpha", "beta", "ls1", "ls2", "bias")):
            assert id(p) not in decayed, n


# --------------------------------------------------------------------------------------
# Equivalence: timm's implementation, the official code
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,timm_name", [("resmlp_s12", "resmlp_12_224"), ("resmlp_s24", "resmlp_24_224")])
def test_same_logits_as_timm_at_224(name, timm_name):
    torch.manual_seed(0)
    ours = perturb_(timm.create_model(name)).eval()
    ref = timm.create_model(timm_name).eval()
    ref.load_state_dict(ours.state_dict())  # same names and shapes: loads as is
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert (a - b).abs().max().item() <= 1e-5
    assert a.abs().max() > 0.1  # not a degenerate comparison


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resmlp_s36", "resmlp_b24", "resmlp_s12_p8", "resmlp_b24_p8"])
def test_same_logits_as_timm_all_sizes(name):
    torch.manual_seed(0)
    ours = perturb_(timm.create_model(name)).eval()
    ref = timm_reference(ours)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-5


def test_forward_features_and_head_follow_timm_api():
    torch.manual_seed(0)
    ours = perturb_(timm.create_model("resmlp_s12", **SMALL)).eval()
    ref = timm_reference(ours)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = ours.forward_features(x)
        torch.testing.assert_close(feats, ref.forward_features(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.forward_head(feats), ours(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.forward_head(feats, pre_logits=True),
                                   ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-5, rtol=1e-5)


def _official_state_dict(model: nn.Module) -> dict:
    """Our weights under the official code's names and shapes, by loading them into the official model
    (an independent re-implementation) via explicit parameter copies."""
    official = OfficialResMLP(model.stem.img_size[0], model.stem.patch_size[0], model.embed_dim, len(model.blocks),
                              model.num_classes)
    with torch.no_grad():
        official.patch_embed.proj.load_state_dict(model.stem.proj.state_dict())
        for ob, b in zip(official.blocks, model.blocks):
            for on, n in ((ob.norm1, b.norm1), (ob.norm2, b.norm2)):
                on.alpha.copy_(n.alpha.flatten())
                on.beta.copy_(n.beta.flatten())
            ob.attn.load_state_dict(b.linear_tokens.state_dict())
            ob.mlp.load_state_dict(b.mlp_channels.state_dict())
            ob.gamma_1.copy_(b.ls1)
            ob.gamma_2.copy_(b.ls2)
        official.norm.alpha.copy_(model.norm.alpha.flatten())
        official.norm.beta.copy_(model.norm.beta.flatten())
        official.head.load_state_dict(model.head.state_dict())
    return official


def test_official_checkpoint_loads_through_timm_file_path(tmp_path):
    """A DeiT-repo checkpoint ({'model': state_dict}, attn/gamma_/alpha (dim,)) loads the timm way
    and gives the official model's logits; a timm-format file gives timm's logits."""
    torch.manual_seed(0)
    src = perturb_(timm.create_model("resmlp_s12", num_classes=10)).eval()
    official = _official_state_dict(src).eval()
    sd = official.state_dict()
    assert "blocks.0.attn.weight" in sd and sd["blocks.0.norm1.alpha"].shape == (384,) and "blocks.0.gamma_1" in sd
    deit_file = tmp_path / "resmlp_12_no_dist.pth"
    torch.save({"model": sd}, deit_file)
    loaded = timm.create_model("resmlp_s12", pretrained=True, num_classes=10,
                               pretrained_cfg_overlay=dict(file=str(deit_file), num_classes=10)).eval()
    timm_file = tmp_path / "timm_format.pth"
    torch.save(timm_reference(src).state_dict(), timm_file)
    from_timm = timm.create_model("resmlp_s12", pretrained=True, num_classes=10,
                                  pretrained_cfg_overlay=dict(file=str(timm_file), num_classes=10)).eval()
    # timm itself loads the DeiT file through its checkpoint_filter_fn: the same mapping
    timm_from_deit = timm.create_model("resmlp_12_224", pretrained=True, num_classes=10,
                                       pretrained_cfg_overlay=dict(file=str(deit_file), num_classes=10)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = official(x)
        for model in (loaded, from_timm, timm_from_deit):
            assert (model(x) - expected).abs().max().item() <= 1e-5
        assert (reparameterize_model(loaded)(x) - expected).abs().max().item() <= 1e-5


def test_checkpoint_of_another_architecture_lists_keys(tmp_path):
    other = timm.create_model("resmlp_s24", **{**SMALL, "depth": 5})
    path = tmp_path / "s24.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError) as info:
        timm.create_model("resmlp_s12", pretrained=True, **SMALL, pretrained_cfg_overlay=dict(file=str(path)))
    msg = str(info.value)
    assert "unexpected keys (24)" in msg and "blocks.3.linear_tokens.weight" in msg and "blocks.4.ls2" in msg
    wide = timm.create_model("resmlp_s12", **{**SMALL, "embed_dim": 64})
    torch.save(wide.state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatches .*blocks\.0\.mlp_channels\.fc1\.weight: "
                       r"\(256, 64\) in the checkpoint, \(192, 48\) in the model"):
        timm.create_model("resmlp_s12", pretrained=True, **SMALL, pretrained_cfg_overlay=dict(file=str(path)))


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_loading_never_unpickles_code(tmp_path, capsys):
    model = timm.create_model("resmlp_s12", **SMALL)
    path = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "payload": _Evil()}, path)
    with pytest.raises(Exception):
        timm.create_model("resmlp_s12", pretrained=True, **SMALL, pretrained_cfg_overlay=dict(file=str(path)))
    from vision import checkpoint as ckpt_io

    with pytest.raises(ValueError, match="cannot read checkpoint"):
        ckpt_io.load(path)
    assert "code ran" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------
# Folding
# --------------------------------------------------------------------------------------


def test_folding_absorbs_every_affine_and_layerscale():
    torch.manual_seed(0)
    model = perturb_(timm.create_model("resmlp_s12", num_classes=10, **{k: v for k, v in SMALL.items() if k != "depth"},
                                       depth=4)).eval()
    folded = reparameterize_model(model)
    kinds = {type(m) for m in folded.modules()}
    assert FoldedResMLPBlock in kinds
    assert not kinds & {Affine, vision.PreHeadAffine, ResMLPBlock}, kinds
    assert not any(n.endswith(("ls1", "ls2", "alpha", "beta")) for n, _ in folded.named_parameters())
    # reparameterize_model works on a copy: the model itself is untouched, and still trainable
    assert isinstance(model.blocks[0], ResMLPBlock) and isinstance(model.norm, vision.PreHeadAffine)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-5
    # per block: Affines (4C), LayerScales (2C), A's bias (N) and fc2's bias (C) are gone, the
    # constant K (N x C) and the scale (C) are new; the final Affine (2C) is gone
    n_orig = sum(p.numel() for p in model.parameters())
    n_fold = sum(p.numel() for p in folded.parameters())
    blocks, dim, n = 4, 48, 16
    assert n_fold == n_orig + blocks * (n * dim + dim - 7 * dim - n) - 2 * dim


@pytest.mark.parametrize("batch", [1, 3])
def test_folded_block_matches_block_including_pre_affine_shift(batch):
    """The deit#114 case: norm1.beta (shift) and alpha are not foldable into A; the constant K and
    the per-channel scale carry them exactly."""
    torch.manual_seed(1)
    block = perturb_(ResMLPBlock(dim=24, num_tokens=9, init_values=0.1)).eval()
    folded = block.fuse()
    x = torch.randn(9, batch, 24)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), block(x), atol=1e-5, rtol=1e-5)
        folded.mlp_chunk_rows = 2  # chunked channel MLP: the same result
        torch.testing.assert_close(folded(x), block(x), atol=1e-5, rtol=1e-5)
    x.requires_grad_(True)  # with autograd on, the out-of-place path
    torch.testing.assert_close(folded(x), block(x), atol=1e-5, rtol=1e-5)


class _CountGemms(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the channel MLP's GEMMs (``addmm``, ``addmm_``) that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.gemms = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default):
            self.gemms += 1
        return func(*args, **(kwargs or {}))


def test_folded_block_chunks_its_channel_mlp_only_on_the_cpu():
    """The invariant behind the folded model's GPU speed: the row chunks of the channel MLP (a CPU
    cache optimisation) run only for CPU tensors. On a GPU they made the folded S12 half as fast
    as the unfolded one (many small GEMMs). Checked here on the meta device, a non-CPU device that
    runs on the CPU: one GEMM pair for the whole block."""
    torch.manual_seed(1)
    folded = perturb_(ResMLPBlock(dim=24, num_tokens=9, init_values=0.1)).eval().fuse()
    folded.mlp_chunk_rows = 2  # 27 rows: 14 chunks on the CPU
    x = torch.randn(9, 3, 24)
    counts = {}
    for device in ("cpu", "meta"):
        block = copy.deepcopy(folded).to(device)
        with torch.no_grad(), _CountGemms() as mode:
            out = block(x.to(device))
        assert out.shape == (9, 3, 24) and out.device.type == device
        counts[device] = mode.gemms
    assert counts == {"cpu": 2 * 14, "meta": 2}


@pytest.mark.slow
def test_folded_block_is_not_chunked_under_torch_compile():
    """Under torch.compile the channel MLP is one GEMM pair per block, also on the CPU: the chunk
    loop would hand Inductor dozens of in-place GEMMs on views per block (on an H100 it did not
    finish compiling the folded S12 in 110-130 s). The traced graph is inspected; its result
    equals eager's."""
    torch.manual_seed(1)
    folded = perturb_(ResMLPBlock(dim=24, num_tokens=9, init_values=0.1)).eval().fuse()
    folded.mlp_chunk_rows = 2
    graphs = []

    def inspect(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(folded, backend=inspect, fullgraph=True)
    x = torch.randn(9, 3, 24)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), folded(x), atol=1e-5, rtol=1e-5)
    gemms = [n for gm in graphs for n in gm.graph.nodes if "addmm" in str(n.target)]
    assert len(graphs) == 1 and len(gemms) == 2, [str(n.target) for n in gemms]


def test_folded_model_runs_in_bfloat16_and_under_autocast():
    torch.manual_seed(0)
    model = perturb_(timm.create_model("resmlp_s12", num_classes=10, **SMALL)).eval()
    folded = reparameterize_model(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = folded(x)
        pure = copy.deepcopy(folded).to(torch.bfloat16)(x.to(torch.bfloat16))
    for out in (auto, pure):
        assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 0.05


def test_folding_without_head_and_on_224_images():
    torch.manual_seed(0)
    model = perturb_(timm.create_model("resmlp_s12", num_classes=0)).eval()
    folded = reparameterize_model(model)
    assert isinstance(folded.norm, vision.PreHeadAffine)  # nothing to fold into: kept
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert out.shape == (2, 384)
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_deepcopy_and_reset_classifier_keep_head_folding_consistent():
    model = perturb_(timm.create_model("resmlp_s12", **SMALL)).eval()
    clone = copy.deepcopy(model)
    clone.reset_classifier(4)
    perturb_(clone.head, seed=3)
    folded = reparameterize_model(clone)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), clone(x), atol=1e-5, rtol=1e-5)
    assert model.head.out_features == 1000  # the original's head is untouched


# --------------------------------------------------------------------------------------
# Training-mode behaviour
# --------------------------------------------------------------------------------------


def test_drop_path_drops_whole_branches_per_sample():
    torch.manual_seed(0)
    block = perturb_(ResMLPBlock(dim=8, num_tokens=4, init_values=0.5, drop_path=0.5))
    x = torch.randn(4, 64, 8)
    with torch.no_grad():
        out = block.train()(x)
        # the four possible outcomes per sample: each branch kept (scaled by 1/keep = 2) or dropped
        outcomes = []
        for keep1 in (0.0, 2.0):
            for keep2 in (0.0, 2.0):
                z = torch.addcmul(x, block.linear_tokens(block.norm1(x)), block.ls1 * keep1)
                outcomes.append(torch.addcmul(z, block.mlp_channels(block.norm2(z)), block.ls2 * keep2))
    seen = set()
    for b in range(64):
        match = [k for k, o in enumerate(outcomes) if torch.allclose(out[:, b], o[:, b], atol=1e-5)]
        assert len(match) == 1, b
        seen.add(match[0])
    assert seen == {0, 1, 2, 3}


def test_training_gradients_match_timm():
    torch.manual_seed(0)
    ours = perturb_(timm.create_model("resmlp_s12", num_classes=5, **SMALL))
    ref = timm_reference(ours)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    for m in (ours, ref):
        nn.functional.cross_entropy(m(x), y).backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_vision_does_not_import_fairseq_or_translation_code():
    import subprocess
    import sys

    code = ("import sys, vision, vision.train, vision.evaluate, benchmarks.bench_vision, vision.plot; "
            "print(any(m.split('.')[0] in ('fairseq', 'resmlp_mt') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
