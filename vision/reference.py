"""timm's own ResMLP implementation (``MlpMixer`` with ``ResBlock`` and ``Affine``) with the
weights of one of our models: the peer for equivalence tests, evaluation and benchmarks."""

from __future__ import annotations

from functools import partial

from torch import nn

from .resmlp import ResMLP


def timm_reference(model: ResMLP) -> nn.Module:
    """A timm ``MlpMixer``-based ResMLP of the same geometry, holding ``model``'s weights.

    The state dict loads as is (same names and shapes), which is also a check that ours
    keeps timm's layout. Returned in the mode of ``model`` (train/eval), on its device.
    """
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    block0 = model.blocks[0]
    if not hasattr(block0, "mlp_channels"):
        raise ValueError("timm_reference needs an unfolded model (build the reference before reparameterize_model)")
    embed_dim = model.embed_dim
    ref = MlpMixer(
        num_classes=model.num_classes,
        img_size=model.stem.img_size,
        in_chans=model.in_chans,
        patch_size=model.stem.patch_size[0],
        num_blocks=len(model.blocks),
        embed_dim=embed_dim,
        mlp_ratio=block0.mlp_channels.fc1.out_features / embed_dim,
        block_layer=partial(ResBlock, init_values=1e-4),
        norm_layer=Affine,
        drop_path_rate=block0.drop_path_rate,
        global_pool=model.global_pool,
    )
    ref.load_state_dict(model.state_dict(), strict=True)
    param = next(model.parameters())
    return ref.to(device=param.device, dtype=param.dtype).train(model.training)
