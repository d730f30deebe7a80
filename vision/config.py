"""YAML run configs: files whose keys are the command-line options (``lr``, ``model_kwargs``,
...). A config sets the defaults of the parser; flags on the command line still win
(timm's ``train.py`` convention). ``--config NAME`` takes a path or the name of a file in
``vision/configs/`` (``imagenet_s12``, ``cifar10_cpu``, ...)."""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config {name!r} is neither a file nor one of vision/configs: "
                            f"{', '.join(available_configs())}")


def load_config(name: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read a config and check every key is an option of ``parser`` (a typo is an error)."""
    path = resolve_config(name)
    with open(path) as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config {path} must be a mapping of option names to values")
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"config {path}: unknown option(s) {', '.join(unknown)}")
    return cfg


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with the defaults of the ``--config`` file given in it, if any."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", "-c", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            parser.set_defaults(**load_config(known.config, parser))
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
    return parser.parse_args(argv)


def check_model_name(name: str, parser: Optional[argparse.ArgumentParser] = None) -> None:
    """A ``--model`` timm knows, else an error (``parser.error``, or ``ValueError``) naming the
    ResMLP models and the closest names (every vision CLI)."""
    import timm

    from .resmlp import MODEL_NAMES

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, list(MODEL_NAMES) + timm.list_models(), n=5, cutoff=0.6)
    msg = f"unknown model {name!r}. ResMLP models: {', '.join(MODEL_NAMES)}"
    if close:
        msg += f"; did you mean: {', '.join(close)}?"
    msg += " (all names: timm.list_models())"
    if parser is not None:
        parser.error(msg)
    raise ValueError(msg)
