"""Sequence-level knowledge distillation data (Kim and Rush 2016, arXiv 1606.07947): a teacher's
beam-search translations of the training sources become the training targets of a student.

    python -m mt_tools.distill --teacher checkpoints/teacher/checkpoint_best.pt \\
        --data data-bin/multi30k.en-de --out data-bin/multi30k.en-de.distilled

writes a prepared folder (the layout of :mod:`mt_tools.layout`) beside the original: the same
dictionaries and SentencePiece model, the ``train`` split binarized from (source, teacher's
hypothesis) pairs, the ``valid`` and ``test`` splits and their references copied unchanged (they
keep their human references), and ``prep.json`` with a ``distillation`` entry (teacher, beam,
sentences, pairs left out). Any fairseq translation checkpoint of the pair is a teacher (the
Transformer of the race, a ResMLP model): it decodes with fairseq's ``SequenceGenerator`` (beam 4,
length penalty 1, fairseq-generate's length limit), one batch of similar-length sentences at a time.

Resumable: the training set is translated in chunks of ``--chunk`` sentences, each written once
complete (``<out>.work/chunk_<i>.tsv``, atomically); a killed run starts again at the first
missing chunk. The folder itself is built beside ``--out`` and put in place once complete
(:func:`resmlp_core.io.staged_folder`). A teacher hypothesis that is empty leaves its pair out,
and so does a runaway one, longer than ``--max-length-ratio`` R times its source plus 5 pieces
(R = 2 by default, which leaves out no reference pair of Multi30k): a beam search that repeats a
word or a fragment until the length limit ("- C ola - C ola - C ola ...", 128 pieces for a source
of 27; 8 of the 29,000 translations of a Multi30k Transformer). Such targets, four times longer
than any reference, trained the ResMLP students over positions they meet nowhere else, and two of
them diverged (loss 1e8) or spiked (gradient norms of 1e4) where the same students trained on the
references did not. Both counts are in ``prep.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from resmlp_core.io import staged_folder, write_text_atomic

from .layout import PreparedData

log = logging.getLogger("mt_tools.distill")


#: ``--max-length-ratio``'s default, and the pieces a kept translation may have beyond that many
#: times its source's
MAX_LENGTH_RATIO, LENGTH_SLACK = 2.0, 5


def runaway(source: str, hypothesis: str, max_length_ratio: float) -> bool:
    """Whether ``hypothesis`` (SentencePiece pieces, space-separated) is longer than
    ``max_length_ratio`` times ``source`` plus :data:`LENGTH_SLACK` pieces (0: no limit)."""
    return bool(max_length_ratio) and len(hypothesis.split()) > max_length_ratio * len(source.split()) + LENGTH_SLACK


class DistillationError(RuntimeError):
    """Bad input to the distillation (a missing folder or checkpoint, a teacher of another pair)."""


def load_teacher(teacher: Path, data: Path):
    """``(models, task)``: the teacher checkpoint loaded for the prepared folder ``data`` (weights
    only, through the plugin's safe loading), in eval mode on the CPU."""
    import resmlp_mt  # noqa: F401  (safe loading; registers the plugin's models)
    from fairseq import checkpoint_utils

    if not teacher.is_file():
        raise DistillationError(f"--teacher {teacher}: no such checkpoint")
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(teacher)],
                                                                       arg_overrides={"data": str(data)})
    for model in models:
        model.eval()
    return models, task


def translate_chunk(models, task, indices: List[int], beam: int, max_tokens: int) -> List[str]:
    """``id \\t source pieces \\t hypothesis pieces`` lines of the training pairs ``indices``
    (their best beam hypotheses), in the order of ``indices``."""
    import torch
    from fairseq.sequence_generator import SequenceGenerator

    dataset = task.dataset("train")
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    generator = SequenceGenerator(models, tgt_dict, beam_size=beam, max_len_b=200)
    order = sorted(indices, key=lambda i: (int(dataset.src_sizes[i]), i))
    out: Dict[int, str] = {}
    batch: List[int] = []

    def flush():
        samples = {i: dataset[i] for i in batch}
        for sample in samples.values():
            sample["target"] = None  # decode, do not score
        net = dataset.collater(list(samples.values()))
        with torch.no_grad():
            hypos = generator.generate(models, net)
        for sample_id, hyps in zip(net["id"].tolist(), hypos):
            source = src_dict.string(samples[sample_id]["source"])
            best = tgt_dict.string(hyps[0]["tokens"]) if hyps else ""
            out[sample_id] = f"{sample_id}\t{source}\t{best}"
        batch.clear()

    for i in order:  # ascending length: sentence i is the longest of the batch it joins
        if batch and int(dataset.src_sizes[i]) * (len(batch) + 1) > max_tokens:
            flush()
        batch.append(i)
    if batch:
        flush()
    return [out[i] for i in indices]


def distill(teacher: Path, data: Path, out: Path, beam: int = 4, chunk: int = 2000, max_tokens: int = 4096,
            force: bool = False, progress: bool = True, max_length_ratio: float = MAX_LENGTH_RATIO) -> dict:
    """Translate the training sources of ``data`` with ``teacher`` and write the distilled
    folder ``out`` (module docstring). Returns the ``distillation`` entry of its ``prep.json``."""
    data, out, teacher = Path(data), Path(out), Path(teacher)
    prepared = PreparedData(data)
    if not prepared.is_prepared():
        raise DistillationError(f"--data {data}: not a prepared folder ({prepared.info_file} missing; "
                                "run scripts/prepare_multi30k.py first)")
    if out.exists() and not force:
        raise DistillationError(f"--out {out} exists (use --force to replace it)")
    info = prepared.info()
    src, tgt = info["src_lang"], info["tgt_lang"]
    models, task = load_teacher(teacher, data)
    task.load_dataset("train")
    n = len(task.dataset("train"))
    work = out.parent / f"{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    settings = {"teacher": str(teacher.resolve()), "data": str(data.resolve()), "beam": beam, "chunk": chunk,
                "sentences": n, "teacher_size": teacher.stat().st_size, "teacher_mtime_ns": teacher.stat().st_mtime_ns}
    settings_file = work / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        for old in work.glob("chunk_*.tsv"):  # another teacher, beam or corpus: nothing to resume
            old.unlink()
    write_text_atomic(settings_file, json.dumps(settings, indent=1) + "\n")

    chunks = [list(range(start, min(start + chunk, n))) for start in range(0, n, chunk)]
    done = sum(len(c) for i, c in enumerate(chunks) if (work / f"chunk_{i}.tsv").is_file())
    bar = _progress(total=n, initial=done, enabled=progress)
    start = time.time()
    for i, indices in enumerate(chunks):
        path = work / f"chunk_{i}.tsv"
        if path.is_file():
            continue
        lines = translate_chunk(models, task, indices, beam, max_tokens)
        write_text_atomic(path, "\n".join(lines) + "\n")
        bar.update(len(indices))
    bar.close()
    seconds = time.time() - start

    pairs = [line.split("\t") for i in range(len(chunks))
             for line in (work / f"chunk_{i}.tsv").read_text().splitlines()]
    filled = [(s, h) for _id, s, h in pairs if h.strip() and s.strip()]
    kept = [(s, h) for s, h in filled if not runaway(s, h, max_length_ratio)]
    if not kept:
        raise DistillationError(
            f"no training pair left: {len(pairs) - len(filled)} empty translations, {len(filled)} longer than "
            f"{max_length_ratio:g} x their source + {LENGTH_SLACK} pieces (--max-length-ratio): is {teacher} a trained "
            f"translation model of {data}? (the translations stay in {work})")
    entry = {"teacher": _shown(teacher), "teacher_mtime_ns": teacher.stat().st_mtime_ns, "beam": beam, "sentences": n,
             "pairs": len(kept), "left_out_empty": len(pairs) - len(filled),
             "max_length_ratio": max_length_ratio, "left_out_runaway": len(filled) - len(kept),
             "translate_seconds_this_run": round(seconds, 1)}
    with staged_folder(out, replace=force) as tmp:
        text = tmp / ".text"
        text.mkdir()
        (text / f"train.{src}").write_text("".join(s + "\n" for s, _ in kept), encoding="utf-8")
        (text / f"train.{tgt}").write_text("".join(h + "\n" for _, h in kept), encoding="utf-8")
        _binarize(text / "train", src, tgt, prepared, tmp)
        shutil.rmtree(text)
        for path in sorted(data.iterdir()):  # everything else as it was: dictionaries, SentencePiece, valid, test, refs
            if path.name.startswith("train.") or path.name in ("preprocess.log", prepared.info_file.name):
                continue
            target = tmp / path.name
            if target.exists():
                continue
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)
        new_info = dict(info, distillation=entry)
        (tmp / prepared.info_file.name).write_text(json.dumps(new_info, indent=1) + "\n")
    shutil.rmtree(work)
    log.info("wrote %s: %d training pairs from the teacher's beam-%d translations (left out: %d empty, %d longer "
             "than %g x the source + %d pieces)", out, len(kept), beam, entry["left_out_empty"],
             entry["left_out_runaway"], max_length_ratio, LENGTH_SLACK)
    return entry


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when under it (results name no machine's folders)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _binarize(prefix: Path, src: str, tgt: str, prepared: PreparedData, dest: Path) -> None:
    """fairseq-preprocess of the ``prefix.{src,tgt}`` pieces with the original dictionaries."""
    exe = Path(sys.executable).parent / "fairseq-preprocess"
    cmd = [str(exe) if exe.exists() else "fairseq-preprocess", "--source-lang", src, "--target-lang", tgt,
           "--trainpref", str(prefix), "--srcdict", str(prepared.dictionary(src)),
           "--tgtdict", str(prepared.dictionary(tgt)), "--destdir", str(dest), "--workers", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        raise DistillationError(f"fairseq-preprocess failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    for name in ("preprocess.log",):
        (dest / name).unlink(missing_ok=True)


def _progress(total: int, initial: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    if tqdm is None or not enabled:
        class Silent:
            def update(self, n):
                pass

            def close(self):
                pass
        return Silent()
    return tqdm(total=total, initial=initial, unit="sent", desc="teacher translating the training set")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, required=True, help="the teacher's fairseq checkpoint")
    p.add_argument("--data", type=Path, required=True, help="the prepared folder the teacher was trained on")
    p.add_argument("--out", type=Path, help="the distilled folder (default: <data>.distilled)")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--chunk", type=int, default=2000, help="sentences per resumable chunk")
    p.add_argument("--max-tokens", type=int, default=4096, help="source tokens per batch (padded)")
    p.add_argument("--max-length-ratio", type=float, default=MAX_LENGTH_RATIO, metavar="R",
                   help="leave out a pair whose translation has more than R times its source's pieces plus "
                        f"{LENGTH_SLACK} (a beam search that repeats itself to the length limit); 0: keep every one")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress-bar", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    out = args.out or args.data.parent / f"{args.data.name}.distilled"
    if args.beam < 1 or args.chunk < 1 or args.max_tokens < 1:
        p.error("--beam, --chunk and --max-tokens must be at least 1")
    if args.max_length_ratio < 0:
        p.error(f"--max-length-ratio {args.max_length_ratio:g}: a ratio of at least 0 (0: no limit)")
    try:
        distill(args.teacher, args.data, out, args.beam, args.chunk, args.max_tokens, args.force,
                progress=not args.no_progress_bar, max_length_ratio=args.max_length_ratio)
    except (DistillationError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
