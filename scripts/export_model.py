#!/usr/bin/env python
"""Export a trained translation checkpoint as a self-contained model folder.

    python scripts/export_model.py CHECKPOINT DATA_BIN OUT_DIR [--average CKPT ...] [--eval-json FILE]

``OUT_DIR`` then holds everything needed to translate, and nothing else:

* ``model.pt``: the weights (float32; averaged over CHECKPOINT and ``--average`` files if
  given) and the model/task configuration, without optimizer state; it loads with torch's
  ``weights_only=True`` once ``resmlp_mt`` is imported;
* ``dict.<src>.txt``, ``dict.<tgt>.txt`` and ``sentencepiece.bpe.model`` from DATA_BIN (a folder
  written by ``scripts/prepare_multi30k.py`` or ``scripts/prepare_wmt14.py``);
* ``model_card.json`` and ``README.md``: architecture, parameters, data, training recipe, and
  BLEU with its sacreBLEU signature (from ``--eval-json``, the output of
  ``scripts/evaluate_mt.py --output``; by default ``eval_test.json`` beside CHECKPOINT if present).

Load it with ``resmlp_mt.ResMLPTranslationModel.from_pretrained(OUT_DIR)`` (README, "Translating
from Python"). The folder is built in a hidden folder beside OUT_DIR and swapped into place once
complete (:func:`resmlp_core.io.staged_folder`), so a kill at any point leaves a complete model at
OUT_DIR, the old or the new one; an existing OUT_DIR is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

import resmlp_mt  # noqa: F401  (registers the model; allows fairseq's Namespace in safe loading)
from mt_tools.evaluate import EvaluationError, average_checkpoints
from mt_tools.layout import PreparedData
from resmlp_core.checkpoint import count_parameters, load_weights_only, share_equal_matrices
from resmlp_core.io import recover_folder, staged_folder
from resmlp_mt.hub import CARD_FILE, MODEL_FILE, SPM_FILE
from resmlp_mt.model import TOKEN_MIXING_DEFAULTS, token_mixing_options

log = logging.getLogger("export_model")

RECIPE_KEYS = {
    "optimization": ("max_update", "lr", "clip_norm", "update_freq", "stop_time_hours"),
    "dataset": ("max_tokens", "batch_size"),
    "optimizer": ("_name", "adam_betas", "weight_decay"),
    "lr_scheduler": ("_name", "warmup_updates", "warmup_init_lr"),
    "criterion": ("_name", "label_smoothing"),
}


class ExportError(Exception):
    pass


def _cfg_get(section, key):
    if section is None:
        return None
    value = section.get(key) if isinstance(section, dict) else getattr(section, key, None)
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig" else value


def exported_state(state: dict, src: str, tgt: str) -> dict:
    """A copy of a fairseq checkpoint's state with what translation needs only: the weights in
    float32 (each tied matrix stored once, also where the checkpoint holds equal copies), the
    configuration (paths of the training machine removed, languages set), the update count. No
    optimizer state, no data-loader state."""
    cfg = state["cfg"]
    cfg["common"]["user_dir"] = None
    cfg["checkpoint"]["save_dir"] = "."
    cfg["task"]["data"] = "."
    cfg["task"]["source_lang"], cfg["task"]["target_lang"] = src, tgt
    model_cfg = cfg["model"]
    for key in ("data", "save_dir", "user_dir", "restore_file"):
        if hasattr(model_cfg, key):
            setattr(model_cfg, key, "." if key in ("data", "save_dir") else None)
    if hasattr(model_cfg, "source_lang"):
        model_cfg.source_lang, model_cfg.target_lang = src, tgt
    history = state.get("optimizer_history") or [{}]
    last = history[-1]
    return {
        "cfg": cfg,
        "args": None,
        "model": share_equal_matrices({k: (v.float() if v.is_floating_point() else v).contiguous()
                                       for k, v in state["model"].items()}),
        "optimizer_history": [
            {"criterion_name": last.get("criterion_name"), "optimizer_name": last.get("optimizer_name"),
             "lr_scheduler_state": {}, "num_updates": last.get("num_updates", 0)}
        ],
        "extra_state": {"train_iterator": {
            "epoch": state.get("extra_state", {}).get("train_iterator", {}).get("epoch", 0)}},
    }


def model_card(state: dict, data_bin: Path, sources, evaluation) -> dict:
    cfg, model_cfg = state["cfg"], state["cfg"]["model"]
    prep = PreparedData(data_bin).info()
    params = sum(v.numel() for k, v in state["model"].items()
                 if v.is_floating_point() and not k.endswith("_float_tensor"))
    recipe = {f"{section}.{key}": _cfg_get(cfg.get(section), key)
              for section, keys in RECIPE_KEYS.items() for key in keys}
    architecture = {
        key: getattr(model_cfg, key, None)
        for key in ("arch", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "decoder_layers",
                    "decoder_attention_heads", "layerscale_init", "norm", "final_norm_init", "positional_embeddings",
                    "max_source_positions", "max_target_positions", "dropout", "share_all_embeddings",
                    *TOKEN_MIXING_DEFAULTS, "embedding_rank")
    }
    return {
        "format": "resmlp_mt model folder 1",
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_lang": prep["src_lang"],
        "target_lang": prep["tgt_lang"],
        "normalization": "moses-punct",
        "bpe": {"kind": "sentencepiece", "vocab_size": prep.get("vocab_size"), "file": SPM_FILE},
        "architecture": architecture,
        "parameters": count_parameters(state["model"]),
        "parameters_counting_tied_copies": params,
        "updates": state["optimizer_history"][-1]["num_updates"],
        "checkpoints": [str(p) for p in sources],
        "data": {k: v for k, v in prep.items() if k in ("corpus", "splits", "vocab_size", "max_positions")},
        "recipe": recipe,
        "evaluation": evaluation,
    }


def _away_from_the_paper(arch: dict) -> str:
    """The architecture's token-mixing and embedding flags set away from the paper's model, as
    ``"; --flag value ..."`` (empty for the paper's model, and for a card written before the
    card recorded them)."""
    flags = token_mixing_options(argparse.Namespace(**{k: v for k, v in arch.items() if v is not None}))
    if arch.get("embedding_rank"):
        flags["--embedding-rank"] = arch["embedding_rank"]
    return "; " + " ".join(f"{k} {v}" for k, v in flags.items()) if flags else ""


def card_markdown(card: dict) -> str:
    arch = card["architecture"]
    lines = [
        f"# {arch['arch']} {card['source_lang']}-{card['target_lang']}",
        "",
        f"ResMLP translation model (Touvron et al. 2021, §3.6), exported {card['exported']}.",
        "",
        "| | |", "|---|---|",
        f"| architecture | {arch['arch']}: {arch['encoder_layers']}+{arch['decoder_layers']} layers, "
        f"d={arch['encoder_embed_dim']}, MLP {arch['encoder_ffn_embed_dim']}, "
        f"LayerScale init {arch['layerscale_init']}, norm {arch['norm']}{_away_from_the_paper(arch)} |",
        f"| parameters | {card['parameters']:,} |",
        f"| updates | {card['updates']:,} |",
        f"| data | {card['data'].get('corpus', '?')}, SentencePiece {card['bpe']['vocab_size']} |",
        f"| checkpoints | {len(card['checkpoints'])} ({'averaged' if len(card['checkpoints']) > 1 else 'one'}) |",
    ]
    for key, value in card["recipe"].items():
        if value is not None:
            lines.append(f"| {key} | {value} |")
    lines += ["", "## Evaluation", ""]
    if card["evaluation"]:
        lines += ["| split | sentences | sacreBLEU | tokenized BLEU | signature |", "|---|---:|---:|---:|---|"]
        for split, r in card["evaluation"]["results"].items():
            lines.append(f"| {split} | {r['sentences']} | {r['sacrebleu']} | {r['tok_bleu']} | "
                         f"`{r['sacrebleu_signature']}` |")
    else:
        lines.append("Not evaluated (export with --eval-json FILE from scripts/evaluate_mt.py --output FILE).")
    lines += ["", "## Use", "", "```python", "from resmlp_mt import ResMLPTranslationModel",
              "m = ResMLPTranslationModel.from_pretrained(\"THIS_FOLDER\")", "m.translate([\"A dog runs.\"], beam=4)",
              "```", ""]
    return "\n".join(lines)


def export(checkpoint: Path, data_bin: Path, out_dir: Path, average=(), eval_json: Path | None = None,
           force: bool = False) -> Path:
    checkpoint, data_bin, out_dir = Path(checkpoint), Path(data_bin), Path(out_dir)
    for path in (checkpoint, *map(Path, average)):
        if not path.is_file():
            raise ExportError(f"checkpoint not found: {path}")
    prepared = PreparedData(data_bin)
    if not prepared.is_prepared():
        raise ExportError(f"{prepared.info_file} not found: DATA_BIN must be a folder written by scripts/prepare_*.py")
    prep = prepared.info()
    src, tgt = prep["src_lang"], prep["tgt_lang"]
    needed = [prepared.dictionary(src), prepared.dictionary(tgt), prepared.spm_model]
    for path in needed:
        if not path.is_file():
            raise ExportError(f"{path} not found in DATA_BIN")
    recover_folder(out_dir)  # a replacement a kill interrupted, where the folder swap is not atomic
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} exists: pass --force to replace it")
    if eval_json is None and (checkpoint.parent / "eval_test.json").is_file():
        eval_json = checkpoint.parent / "eval_test.json"
    evaluation = json.loads(Path(eval_json).read_text()) if eval_json else None

    sources = [checkpoint, *map(Path, average)]
    # built beside OUT_DIR and swapped into place once complete: a kill at any point leaves the
    # old model folder or the new one at OUT_DIR, and what a killed export left is removed here
    with staged_folder(out_dir, replace=force) as tmp:
        if len(sources) > 1:
            state = torch.load(average_checkpoints(sources, tmp / "averaged.pt"), map_location="cpu", weights_only=True)
            (tmp / "averaged.pt").unlink()
        else:
            state = load_weights_only(checkpoint, error=ExportError)
        if "cfg" not in state or "model" not in state:
            raise ExportError(f"{checkpoint} is not a fairseq checkpoint (keys: {', '.join(sorted(state))})")
        state = exported_state(state, src, tgt)
        torch.save(state, tmp / MODEL_FILE)
        torch.load(tmp / MODEL_FILE, map_location="cpu", weights_only=True)  # loads weights-only
        shutil.copyfile(needed[0], tmp / needed[0].name)
        if tgt != src:
            shutil.copyfile(needed[1], tmp / needed[1].name)
        shutil.copyfile(needed[2], tmp / SPM_FILE)
        card = model_card(state, data_bin, sources, evaluation)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(card_markdown(card))
    log.info("wrote %s: %s (%s parameters, %d updates)", out_dir, ", ".join(sorted(p.name for p in out_dir.iterdir())),
             f"{card['parameters']:,}", card["updates"])
    return out_dir


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="fairseq checkpoint (checkpoint_best.pt, ...)")
    p.add_argument("data_bin", type=Path, help="the prepared data folder the model was trained on")
    p.add_argument("out_dir", type=Path, help="model folder to write")
    p.add_argument("--average", type=Path, nargs="+", default=[], metavar="CKPT",
                   help="average these checkpoints' weights with CHECKPOINT's")
    p.add_argument("--eval-json", type=Path, help="scores from scripts/evaluate_mt.py --output, for the model card")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    args = p.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout, force=True)
    try:
        export(args.checkpoint, args.data_bin, args.out_dir, args.average, args.eval_json, args.force)
    except (ExportError, EvaluationError) as e:  # EvaluationError: a checkpoint given to --average
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
