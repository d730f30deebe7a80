"""What a training run is given by the process it runs in, and the set-up both training CLIs
(:mod:`vision.train`, :mod:`vision.dino`) share.

* :class:`RunContext`: where and how every step computes (device, rank, world size, AMP
  autocast and gradient scaler, progress-bar interval, gradient clip); built once per process by
  :meth:`RunContext.from_args`, handed to the loops of :mod:`vision.engine` and :mod:`vision.dino`;
* the run's plumbing: :func:`add_device_args` (the options of where a run computes),
  :func:`parse_run_args`, :func:`with_model_kwargs` (``timm.create_model`` arguments),
  :func:`launch` (threads, ``torch.distributed``, output folder and log, then the run through
  :func:`run_guarded`: the exit status of a non-finite loss or bad input).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn

from .config import check_model_name, parse_with_config
from .data import BadImageError, error_line
from .resmlp import MODEL_NAMES

#: The exit status of a run stopped by a non-finite loss.
EXIT_NONFINITE_LOSS = 3


class NonFiniteLossError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------
# The context of a run
# --------------------------------------------------------------------------------------


def _no_scaling() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=False)


@dataclass(frozen=True)
class RunContext:
    """Where and how a run's steps compute, the same for every epoch of a process.

    ``device``: this process's device; ``rank`` / ``world_size``: its place among the
    processes of a ``torchrun`` launch (``distributed``: a process group is up, metrics and
    stops are reduced over it); ``autocast``: a factory of the forward's autocast context
    (``--amp``); ``scaler``: the gradient scaler (on only for float16 autocast; its state is
    saved in the checkpoints); ``log_interval``: steps between progress-bar updates;
    ``clip_grad``: ``--clip-grad`` (None or 0: no clipping; each loop says how it clips).

    The defaults are a single process computing in float32 on ``device``.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    distributed: bool = False
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler = field(default_factory=_no_scaling)
    log_interval: int = 50
    clip_grad: Optional[float] = None

    @property
    def primary(self) -> bool:
        """The process that logs and writes the output folder (rank 0)."""
        return self.rank == 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunContext":
        """The context of this process from a run's options (:func:`add_device_args`,
        ``--clip-grad``); starts ``torch.distributed`` when torchrun's environment says so."""
        device, rank, world_size, distributed = init_distributed(args)
        return cls(
            device=device,
            rank=rank,
            world_size=world_size,
            distributed=distributed,
            autocast=autocast_context(args, device),
            scaler=grad_scaler(args, device),
            log_interval=args.log_interval,
            clip_grad=args.clip_grad,
        )

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module a training step calls: ``model`` in DistributedDataParallel in a distributed
        run, else ``model`` itself (:func:`unwrap` gives it back)."""
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module :meth:`RunContext.wrap` was given (its parameters, without the ``module.``
    prefix of DistributedDataParallel)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def autocast_context(args: argparse.Namespace, device: torch.device) -> Callable[[], ContextManager]:
    """A factory of the forward's autocast context: ``--amp`` on CUDA (``--amp-dtype``), else none."""
    if args.amp and device.type == "cuda":
        dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
        return lambda: torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext


def grad_scaler(args: argparse.Namespace, device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler: on only for float16 autocast on CUDA (a no-op otherwise)."""
    return torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda" and args.amp_dtype == "float16")


def init_distributed(args: argparse.Namespace) -> tuple[torch.device, int, int, bool]:
    """``(device, rank, world_size, distributed)``; torchrun's environment starts DDP (nccl on
    CUDA, gloo on the CPU)."""
    from timm.utils.distributed import init_distributed_device_so

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = init_distributed_device_so(device=device)
    return torch.device(info["device"]), info["global_rank"], info["world_size"], info["distributed"]


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


def add_device_args(g) -> None:
    """The options of where and how a run computes (vision.train and vision.dino): --device,
    --amp, --amp-dtype, --threads, --log-interval."""
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="autocast on CUDA (no effect on the CPU)")
    g.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"])
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    g.add_argument("--log-interval", type=int, default=50)


def parse_run_args(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> argparse.Namespace:
    """The options of a training run (``--config`` file first): ``--data-dir``, ``--output`` and
    a known ``--model`` required (vision.train and vision.dino)."""
    args = parse_with_config(parser, argv)
    if args.data_dir is None:
        parser.error("--data-dir is required (or data_dir in the config)")
    if args.output is None:
        parser.error("--output is required (the folder for checkpoints and logs)")
    check_model_name(args.model, parser)
    return args


def with_model_kwargs(args: argparse.Namespace, **kwargs: Any) -> Dict[str, Any]:
    """``kwargs``, then ``img_size`` for a ResMLP (which needs it), then ``--model-kwargs``: the
    ``timm.create_model`` keyword arguments of a run (vision.train and vision.dino)."""
    if args.model in MODEL_NAMES:
        kwargs["img_size"] = args.img_size
    kwargs.update(args.model_kwargs or {})
    return kwargs


# --------------------------------------------------------------------------------------
# Process set-up and exit status
# --------------------------------------------------------------------------------------


def setup_logging(output: Optional[Path], primary: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if output is not None and primary:
        handlers.append(logging.FileHandler(output / "log.txt"))
    logging.basicConfig(
        level=logging.INFO if primary else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


def run_guarded(run: Callable[[], int], output: Path, ctx: RunContext, logger: logging.Logger) -> int:
    """``run()``'s exit status; a non-finite loss gives :data:`EXIT_NONFINITE_LOSS` (the last
    checkpoint is left as it was), bad input (data, checkpoint, option) 2 with a one-line
    message (the traceback goes to ``log.txt``). Ends the process group of a distributed run."""
    try:
        return run()
    except NonFiniteLossError as err:
        last = output / "last.pth"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written before it"
        logger.error(f"stopping: {err}; {kept} (left unchanged). Lower the learning rate or check the data.")
        return EXIT_NONFINITE_LOSS
    except (BadImageError, ValueError, FileNotFoundError) as err:
        logger.error(f"error: {error_line(err)}")
        if ctx.primary:
            with open(output / "log.txt", "a") as fh:
                traceback.print_exc(file=fh)
        return 2
    finally:
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()


def launch(args: argparse.Namespace, run: Callable[[argparse.Namespace, RunContext, Path], int],
           logger: logging.Logger) -> int:
    """Set up the process (threads, :class:`RunContext` with distributed, the output folder and
    its log) and return ``run(args, ctx, output)``'s exit status through :func:`run_guarded`
    (vision.train and vision.dino)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = RunContext.from_args(args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    setup_logging(output, ctx.primary)
    return run_guarded(lambda: run(args, ctx, output), output, ctx, logger)
