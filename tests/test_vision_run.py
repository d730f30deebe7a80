"""vision.run: the RunContext every vision loop takes, built from a run's options; a distributed
context wraps the model and trains it as a single process does; the two training CLIs share
their set-up through vision.run, neither imports the other."""

from __future__ import annotations

import ast
import contextlib

import pytest
import torch
import torch.distributed as dist
from torch import nn

from conftest import REPO
from vision.run import RunContext, unwrap

CPU = torch.device("cpu")


@pytest.fixture
def no_torchrun_environment(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def test_context_of_a_cpu_run_from_its_options(no_torchrun_environment):
    from vision import dino, train

    args = train.build_parser().parse_args(["--device", "cpu", "--log-interval", "7", "--clip-grad", "0.5", "--amp"])
    ctx = RunContext.from_args(args)
    assert (ctx.device, ctx.rank, ctx.world_size, ctx.distributed, ctx.primary) == (CPU, 0, 1, False, True)
    assert ctx.autocast is contextlib.nullcontext and not ctx.scaler.is_enabled()  # --amp is for CUDA only
    assert (ctx.log_interval, ctx.clip_grad) == (7, 0.5)
    assert RunContext.from_args(train.build_parser().parse_args(["--device", "cpu"])).clip_grad is None
    assert RunContext.from_args(dino.build_parser().parse_args(["--device", "cpu"])).clip_grad == 3.0  # DINO's default


def test_single_process_context_leaves_the_model_as_it_is():
    ctx = RunContext(CPU)
    model = nn.Linear(4, 3)
    assert ctx.primary and not ctx.distributed and not ctx.scaler.is_enabled()
    assert ctx.wrap(model) is model and unwrap(model) is model


def _train(ctx: RunContext, seed: int = 0):
    """Two epochs of vision.engine.train_one_epoch (EMA, per-update schedule, clipping) on a
    linear model, then the validation metrics: ``(parameters, EMA parameters, metrics)``."""
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    from vision.engine import evaluate, train_one_epoch
    from vision.losses import DistillationLoss

    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)) for _ in range(4)]
    torch.manual_seed(seed)
    model = nn.Linear(5, 3)
    ema = ModelEmaV3(model, decay=0.5)
    train_model = ctx.wrap(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    scheduler = CosineLRScheduler(optimizer, t_initial=8, t_in_epochs=False)
    criterion = DistillationLoss(nn.CrossEntropyLoss(), None, "none", 0.5, 1.0)
    num_updates = 0
    for epoch in range(2):
        summary, num_updates = train_one_epoch(train_model, criterion, batches, optimizer, scheduler, ctx,
                                               epoch=epoch, num_updates=num_updates, model_ema=ema)
        assert set(summary) == {"loss", "img_per_s", "minutes"}
    assert num_updates == 8
    metrics = evaluate(model, batches, ctx)
    return ([p.detach().clone() for p in model.parameters()], [p.detach().clone() for p in ema.module.parameters()],
            metrics)


def test_distributed_context_trains_as_a_single_process(tmp_path):
    """One gloo process: the model goes into DistributedDataParallel (unwrap gives it back), the
    EMA follows the module inside, sums go through all_reduce: the same weights, EMA and metrics
    as without a process group."""
    plain = _train(RunContext(CPU, clip_grad=1.0, log_interval=1))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ctx = RunContext(CPU, distributed=True, clip_grad=1.0, log_interval=1)
        model = nn.Linear(2, 2)
        wrapped = ctx.wrap(model)
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel) and unwrap(wrapped) is model
        distributed = _train(ctx)
    finally:
        dist.destroy_process_group()
    for a, b in zip(plain[0] + plain[1], distributed[0] + distributed[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert plain[2] == pytest.approx(distributed[2])
    assert plain[2]["count"] == 24
    assert not torch.equal(plain[0][0], plain[1][0])  # the EMA lags the model: it was updated, not copied


def _imports(path) -> set[str]:
    """Every module and name a file of the ``vision`` package imports, as absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = ("vision" + (f".{node.module}" if node.module else "")) if node.level == 1 else node.module
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


@pytest.mark.parametrize("cli, other", [("dino", "train"), ("train", "dino")])
def test_training_clis_share_their_set_up_through_vision_run(cli, other):
    imported = _imports(REPO / "vision" / f"{cli}.py")
    assert not [name for name in imported if name == f"vision.{other}" or name.startswith(f"vision.{other}.")], imported
    assert {"vision.run.launch", "vision.run.parse_run_args", "vision.run.add_device_args",
            "vision.run.with_model_kwargs"} <= imported
