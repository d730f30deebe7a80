#!/usr/bin/env python
"""Distilling the Transformer into fast attention-free students: sequence-level knowledge
distillation on Multi30k, measured as a user would judge it (quality and decoding speed).

    .venv/bin/python -m benchmarks.mt_distill --stage all --pairs en-de      # every stage, hours on 2 cores
    .venv/bin/python -m benchmarks.mt_distill --stage students               # one stage (the earlier ones cached)
    .venv/bin/python -m benchmarks.mt_distill --teacher-checkpoint T.pt --stage distill students \
        --student-targets distilled --students resmlp_mt_small_deep_shallow  # distil your model, train a student

Stages:

1. ``teacher``: the tuned Transformer of the race (pre-norm, lr 2e-3, warm-up 300), trained to
   convergence with the race's curve rule (segments of ``--eval-every`` updates, valid sacreBLEU
   after each, stop after 3 evaluations without improvement or at ``--max-minutes`` of training);
   the teacher is the average of its last 5 checkpoints when it converged, else its best. With
   ``--teacher-run`` nothing trains: the teacher is that finished curve run, for example the
   token-mixer curves' Transformer at its chosen dropout
   (``checkpoints/race/token_mixers_curves/en-de.transformer.dropout0.1``), so the students learn
   from the study's converged, tuned peer. With ``--teacher-checkpoint`` nothing trains either: the
   teacher is that fairseq checkpoint of the pair (yours: any translation model trained on the
   prepared folder), scored once on valid and test (beam 4) for the report.
2. ``distill``: :mod:`mt_tools.distill` translates the training sources with the teacher (beam 4)
   into ``<work-dir>/distilled/multi30k.<pair>`` (the original dictionaries, SentencePiece model
   and evaluation splits with their human references).
3. ``students``: every student of ``--students`` trained the same way twice, on the distilled
   folder and on the original references, so that the effect of distillation is measured:
   ``resmlp_mt_small`` (the paper's ResMLP), ``resmlp_mt_small_deep_shallow`` (6 + 1 layers) and
   each ``--variant-flags`` (a variant of the token-mixer study, named by the ``--variant-name`` at
   the same place; repeat the pair for more students; ``--students`` with no name: the variants only).
4. ``speed``: :mod:`benchmarks.bench_decode` with every distilled student (``--speed-students
   best``: the best by valid sacreBLEU), each in its own run against the teacher (rerun only when
   either checkpoint is newer than its figures), 1 thread,
   beam 4: sentences/s at batch 128 and batch 1 and the equal-output-length rows, the student
   through the project's engines (fast and ONNX, int8), the teacher through CTranslate2 int8 and
   fairseq; and both again with a vocabulary map (a lexical shortlist learned from the references,
   :mod:`mt_tools.vocabulary_map`, the same file for both: ``--no-vocabulary-map`` leaves it out).
   ``--student-beams 4 1`` adds an operating point: every measured student decoded greedily
   (bench_decode ``--resmlp-beam 1``) beside the teacher at beam 4, and the students and the
   teacher scored at beam 1 on valid and test (sequence-level distillation makes a student's
   greedy output nearly as good as its beam search: Kim and Rush 2016). Run it on an otherwise
   idle machine.
5. ``report``: ``results/mt_distill.{json,md,png}``; the JSON's ``summary`` names the best student
   and gives ``teacher_test_bleu``, ``student_test_bleu``, ``speedup_b128`` and ``speedup_b1``
   (student sentences/s over the teacher's through CTranslate2 int8; ``speedup_b128_vocabulary_map``
   and ``speedup_b1_vocabulary_map`` with the map on both sides; ``operating_points``, the same at
   each other beam of ``--student-beams``), each goal met or missed, and at each other beam both
   goals at once.

Runs are cached in ``--work-dir`` with the settings that produced them and resume after a kill
(the race's harness, :mod:`benchmarks.race_mt`); a student stopped by ``--max-minutes`` goes on
from where it stopped when the stage runs again with a larger budget; every score is sacreBLEU of
mt_tools.evaluate (beam 4) against the original references.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
from benchmarks.common import cli_path, drop_options, repo_relative, training_minutes, write_result  # noqa: E402
from benchmarks.mt_token_mixers import parameters  # noqa: E402
from benchmarks.race_mt import (  # noqa: E402
    PAIRS, SEGMENT_ARGS, Job, Race, _machine_line, minutes_text, read_json, stop_trainings_on_sigterm,
)
from mt_tools.distill import LENGTH_SLACK, MAX_LENGTH_RATIO, DistillationError, distill  # noqa: E402

log = logging.getLogger("mt_distill")

STAGES = ("teacher", "distill", "students", "speed", "report")
#: the beam the teacher decodes with (distillation, scores, speed) and the students' scores and first speed run
TEACHER_BEAM = 4
TEACHER_RECIPE = {"lr": 2e-3, "warmup": 300, "norm": "pre"}
STUDENT_RECIPE = {"lr": 4e-3, "warmup": 300, "layerscale_init": 0.5}
#: student name -> (what it is, fairseq-train flags)
STUDENTS: Dict[str, tuple] = {
    "resmlp_mt_small": ("the paper's ResMLP, 3 + 3 layers", []),
    "resmlp_mt_small_deep_shallow": ("ResMLP, 6 + 1 layers (deep encoder, shallow decoder)",
                                     ["--arch", "resmlp_mt_small_deep_shallow"]),
}
GOALS = {
    "quality": "The best student within 0.5 sacreBLEU of its teacher on En-De test (and valid)",
    "speed": "The same student >= 2.0x the teacher's sentences/s through CTranslate2 int8 at batch 128 "
             "and >= 1.5x at batch 1",
    "distillation": "Distillation improves every student over the same architecture trained on the references",
}


class DistillStudy(Race):
    def teacher_job(self, pair: str) -> Job:
        """The study's own teacher run: ``<pair>.teacher``, at scripts/train_multi30k.sh's dropout
        (0.1), or ``<pair>.teacher.dropout<d>`` with ``--teacher-dropout d``."""
        a = self.args
        dropout = a.teacher_dropout
        name, flags = f"{pair}.teacher", list(SEGMENT_ARGS)
        if dropout is not None:
            name, flags = f"{name}.dropout{dropout:g}", flags + ["--dropout", f"{dropout:g}"]
        return Job("distill", name, "transformer", pair, 1, dict(TEACHER_RECIPE), label=f"{pair} teacher",
                   cap_minutes=self.teacher_minutes, segment_updates=a.eval_every, early_stop=True,
                   train_args=flags, estimate_minutes=self.teacher_minutes * 1.3 + 6)

    @property
    def teacher_minutes(self) -> float:
        a = self.args
        return a.max_minutes if a.teacher_max_minutes is None else a.teacher_max_minutes

    def teacher_dir(self, pair: str) -> Path:
        """The teacher's run folder: ``--teacher-run``, else this study's own teacher run."""
        return self.args.teacher_run or self.run_dir(self.teacher_job(pair))

    def teacher_result(self, pair: str) -> Optional[dict]:
        """The teacher run's ``result.json`` (None while this study's own teacher is not trained):
        ``--teacher-run``'s, checked by :func:`check_teacher_run`, else the cached own run. None
        with ``--teacher-checkpoint`` (no run: :meth:`teacher_scores`)."""
        if self.args.teacher_checkpoint:
            return None
        if self.args.teacher_run:
            return read_json(self.args.teacher_run / "result.json")
        return self.cached(self.teacher_job(pair))

    def teacher_scores_file(self, pair: str) -> Path:
        return self.work / "teacher_checkpoint" / f"{pair}.json"

    def teacher_scores(self, pair: str) -> Optional[dict]:
        """``--teacher-checkpoint``'s scores (valid and test sacreBLEU, beam 4), update count,
        architecture and parameters, as the teacher stage recorded them; None before, or when the
        checkpoint has changed since."""
        checkpoint = self.args.teacher_checkpoint
        scores = read_json(self.teacher_scores_file(pair))
        if scores and scores.get("checkpoint_mtime_ns") == checkpoint.stat().st_mtime_ns:
            return scores
        return None

    def teacher_checkpoint(self, pair: str) -> Path:
        """The teacher: ``--teacher-checkpoint``, else the model its run reports
        (:func:`reported_model`), whose scores its row shows."""
        if self.args.teacher_checkpoint:
            return self.args.teacher_checkpoint
        result = self.teacher_result(pair)
        if result is None:
            job = self.teacher_job(pair)
            other = read_json(self.run_dir(job) / "result.json")
            if other is not None:  # a teacher run of this name, trained with other settings
                spec, theirs = self.spec(job), other.get("spec") or {}
                differ = [f"{k} {theirs.get(k)!r}, here {spec.get(k)!r}" for k in sorted(set(spec) | set(theirs))
                          if spec.get(k) != theirs.get(k)]
                raise SystemExit(f"the {pair} teacher run {self.run_dir(job)} was trained with other settings "
                                 f"({'; '.join(differ)}): give the flags it was trained with (--teacher-max-minutes, "
                                 "--max-minutes, --eval-every, --teacher-dropout), or --stage teacher to train one")
            raise SystemExit(f"the {pair} teacher is not trained yet: run --stage teacher first")
        return self.teacher_dir(pair) / reported_model(result)[1]

    def distilled(self, pair: str) -> Path:
        return self.work / "distilled" / f"multi30k.{pair}"

    def spec(self, job: Job) -> dict:
        """The race's spec (:meth:`Race.spec`) and, for a student on the distilled folder, which
        teacher file made its targets and which of them were left out (``prep.json``'s): a student
        of another teacher's targets is not the same run, though the folder's path is."""
        spec = super().spec(job)
        if job.data:
            made = (read_json(Path(job.data) / "prep.json") or {}).get("distillation") or {}
            spec["distilled_by"] = {k: made.get(k) for k in ("teacher", "teacher_mtime_ns")}
            if "max_length_ratio" in made:  # (folders from before the filter had none: their runs stay)
                spec["distilled_by"]["max_length_ratio"] = made["max_length_ratio"]
        return spec

    def student_jobs(self, pair: str) -> List[Job]:
        a = self.args
        students = {name: STUDENTS[name] for name in a.students}
        for name, flags in a.variants.items():
            students[name] = (f"the token-mixer study's variant: {flags}", flags.split())
        jobs = []
        for name, (_what, flags) in students.items():
            for kind, data in (("distilled", str(self.distilled(pair))), ("references", None)):
                jobs.append(Job("distill", f"{pair}.{name}.{kind}", "resmlp", pair, 1, dict(STUDENT_RECIPE),
                                label=f"{pair} {name} on {kind}", cap_minutes=a.max_minutes,
                                segment_updates=a.eval_every,
                                early_stop=True, train_args=SEGMENT_ARGS + flags, data=data,
                                estimate_minutes=a.max_minutes * 1.3 + 6))
        return jobs

    # -- stages --------------------------------------------------------------------------------

    def teacher(self) -> None:
        if self.args.teacher_run:
            log.info("[teacher] the finished run %s (--teacher-run): nothing to train", self.args.teacher_run)
            return
        if self.args.teacher_checkpoint:
            self.score_teacher_checkpoint()
            return
        self.check_data(self.args.pairs)
        self.run_jobs("teacher", [[self.teacher_job(p)] for p in self.args.pairs], runner=self.curve_run)

    def score_teacher_checkpoint(self) -> None:
        """``--teacher-checkpoint``: nothing to train; its valid and test sacreBLEU (beam 4, as every
        student's), once per checkpoint file, for the report's teacher row."""
        from benchmarks.bench_decode import checkpoint_info

        checkpoint = self.args.teacher_checkpoint
        for pair in self.args.pairs:
            if self.teacher_scores(pair):
                log.info("[teacher] %s: the checkpoint %s, scored before (%s)", pair, checkpoint,
                         self.teacher_scores_file(pair))
                continue
            self.check_data([pair])
            log.info("[teacher] %s: the checkpoint %s (--teacher-checkpoint): nothing to train; scoring it on valid "
                     "and test", pair, checkpoint)
            job = self.teacher_job(pair)
            info = checkpoint_info(checkpoint)
            scores = {"checkpoint": repo_relative(str(checkpoint)),
                      "checkpoint_mtime_ns": checkpoint.stat().st_mtime_ns, "arch": info["arch"],
                      "updates": info["updates"], "parameters": info["parameters"],
                      "eval": {split: self.score(job, checkpoint, split) for split in ("valid", "test")}}
            write_result(self.teacher_scores_file(pair), json.dumps(scores, indent=1) + "\n")
            log.info("[teacher] %s: sacreBLEU valid %.2f, test %.2f", pair, scores["eval"]["valid"]["sacrebleu"],
                     scores["eval"]["test"]["sacrebleu"])

    def distill(self) -> None:
        for pair in self.args.pairs:
            out = self.distilled(pair)
            teacher = self.teacher_checkpoint(pair)
            made = (read_json(out / "prep.json") or {}).get("distillation") or {}
            if (made.get("teacher_mtime_ns") == teacher.stat().st_mtime_ns
                    and made.get("max_length_ratio") == MAX_LENGTH_RATIO):
                log.info("[distill] %s: cached (%s)", pair, out)
                continue
            log.info("[distill] %s: translating the training sources with %s", pair, teacher)
            distill(teacher, self.data(pair), out, beam=4, force=True, progress=self.args.progress_bar)

    def students(self) -> None:
        for pair in self.args.pairs:
            if "distilled" in self.args.student_targets and not (self.distilled(pair) / "prep.json").is_file():
                raise SystemExit(f"{self.distilled(pair)} is missing: run --stage distill first")
        targets = self.args.student_targets
        jobs = [j for p in self.args.pairs for j in self.student_jobs(p) if targets_of(j) in targets]
        self.run_jobs("students", [[j] for j in jobs], runner=self.curve_run)
        for job in jobs:  # where each trained student is, for scripts/export_model.py
            result = self.cached(job)
            if result:
                model, name = reported_model(result)
                diverged = result.get("diverged")
                log.log(logging.WARNING if diverged else logging.INFO, "[students] %s: %s (%s; sacreBLEU valid %.2f, "
                        "test %.2f)%s", job.label, repo_relative(str(self.run_dir(job) / name)), model,
                        result["eval"][model]["valid"]["sacrebleu"], result["eval"][model]["test"]["sacrebleu"],
                        f"; DIVERGED after update {diverged['after_update']}: this is its checkpoint from before, "
                        "and the run is finished (train it again with another recipe, e.g. a variant with "
                        "--clip-norm 1.0)" if diverged else "")

    def speed(self) -> None:
        from benchmarks import bench_decode

        a = self.args
        for pair in a.pairs:
            students = self.distilled_students(pair)
            if not students:
                raise SystemExit("no distilled student is trained yet: run --stage students first")
            best = max(students, key=lambda r: r["valid"])
            self.export(pair, best)
            if a.speed_students == "best":
                students = [best]
            teacher = self.teacher_checkpoint(pair)
            if a.teacher_checkpoint:  # its architecture as the teacher stage recorded it, else read again
                from benchmarks.bench_decode import checkpoint_info, is_transformer

                arch = (self.teacher_scores(pair) or checkpoint_info(teacher))["arch"]
                if not is_transformer(arch):
                    raise SystemExit(f"--teacher-checkpoint {teacher}: a {arch} model; the speed stage measures the "
                                     "teacher as a fairseq Transformer through CTranslate2 (stop at --stage students)")
            vmap = self.vocabulary_map(pair) if a.vocabulary_map else None
            for beam in [b for b in a.student_beams if b != TEACHER_BEAM]:  # the other operating points' scores
                self.scores_at_beam(pair, "teacher", teacher, beam)
                for student in students:
                    self.scores_at_beam(pair, student["name"], student["checkpoint"], beam)
            for student in students:
                for beam in a.student_beams:
                    json_file = self.speed_file(pair, student["name"], beam)
                    out = json_file.with_suffix("")  # bench_decode writes OUT.json and OUT.md
                    settings = (self.measured(json_file, student["checkpoint"], teacher) or {}).get("settings")
                    if (settings is not None and bool(settings.get("vocabulary_map")) == bool(vmap)
                            and settings.get("resmlp_beam", settings.get("beam")) == beam):
                        log.info("[speed] %s %s at beam %d: cached (%s)", pair, student["name"], beam, json_file)
                        continue
                    argv = ["--data", str(self.data(pair)), "--resmlp", str(student["checkpoint"]),
                            "--transformer", str(teacher), "--threads", "1", "--out", str(out),
                            "--work-dir", str(self.work / "speed" / "work"),
                            "--beam", str(TEACHER_BEAM), "--resmlp-beam", str(beam)]
                    if vmap is not None:
                        argv += ["--vocabulary-map", str(vmap)]
                    if a.quick:
                        argv.append("--quick")
                    log.info("[speed] %s %s at beam %d: bench_decode %s", pair, student["name"], beam, " ".join(argv))
                    bench_decode.main(argv)

    @staticmethod
    def measured(json_file: Path, *checkpoints: Optional[Path]) -> Optional[dict]:
        """bench_decode's JSON ``json_file`` if it was written after each of ``checkpoints`` (the
        student's and the teacher's it timed; None: not known) last changed, else None: a
        student trained on (its budget grown, its reported model now the average) is measured
        again, not reported with the figures of its earlier checkpoint."""
        times = [p.stat().st_mtime for p in checkpoints if p is not None and p.is_file()]
        if json_file.is_file() and json_file.stat().st_mtime > max(times, default=0):
            return read_json(json_file)
        return None

    def speed_file(self, pair: str, student: str, beam: int) -> Path:
        """bench_decode's JSON of ``student`` decoded at ``beam`` beside the teacher at beam 4
        (the study's operating point, beam 4: ``<pair>.<student>.json``; another: ``.beam<N>.json``)."""
        return self.work / "speed" / (f"{pair}.{student}.json" if beam == TEACHER_BEAM
                                      else f"{pair}.{student}.beam{beam}.json")

    def sacrebleu(self, pair: str, checkpoint: Path, split: str, beam: int) -> float:
        """sacreBLEU of ``checkpoint`` on ``split`` of the pair's original folder (its human
        references), decoded at ``beam``."""
        from mt_tools.evaluate import evaluate

        return evaluate(self.data(pair), checkpoint, split=split, beam=beam, batch_size=128,
                        threads=self.args.threads).sacrebleu

    def scores_file(self, pair: str, model: str, beam: int) -> Path:
        return self.work / "speed" / f"{pair}.{model}.beam{beam}.scores.json"

    def scored(self, pair: str, model: str, checkpoint: Optional[Path], beam: int) -> Optional[dict]:
        """The scores :meth:`scores_at_beam` wrote for ``checkpoint`` as it is now (None if
        none, or if they are of another checkpoint, or of this file before it changed)."""
        scores = read_json(self.scores_file(pair, model, beam))
        if (scores and checkpoint is not None and checkpoint.is_file()
                and scores.get("checkpoint") == repo_relative(str(checkpoint))
                and scores.get("checkpoint_mtime_ns") == checkpoint.stat().st_mtime_ns):
            return scores
        return None

    def scores_at_beam(self, pair: str, model: str, checkpoint: Path, beam: int) -> dict:
        """Valid and test sacreBLEU of ``checkpoint`` (the teacher's, or a distilled student's
        reported model) decoded at ``beam`` (mt_tools.evaluate, as every score of the study but
        the beam), once per checkpoint file."""
        path = self.scores_file(pair, model, beam)
        scores = self.scored(pair, model, checkpoint, beam)
        if scores:
            return scores
        scores = {"checkpoint": repo_relative(str(checkpoint)), "checkpoint_mtime_ns": checkpoint.stat().st_mtime_ns,
                  "beam": beam, **{split: self.sacrebleu(pair, checkpoint, split, beam) for split in ("valid", "test")}}
        write_result(path, json.dumps(scores, indent=1) + "\n")
        log.info("[speed] %s %s at beam %d: sacreBLEU valid %.2f, test %.2f", pair, model, beam, scores["valid"],
                 scores["test"])
        return scores

    def vocabulary_map(self, pair: str) -> Path:
        """The vocabulary map of the speed stage's rows with a lexical shortlist, for teacher and
        student alike: learned from the pair's references (:func:`mt_tools.vocabulary_map.learn`,
        default settings) into the work folder, once."""
        path = self.work / "speed" / f"{pair}.vmap.txt"
        if not path.is_file():
            from mt_tools.vocabulary_map import learn

            report = learn(self.data(pair), path)
            log.info("[speed] %s: learned the vocabulary map %s (%s)", pair, path, report["coverage_valid"])
        return path

    def export(self, pair: str, best: dict) -> dict:
        """The best distilled student as a model folder (scripts/export_model.py), loaded back with
        ``ResMLPTranslationModel.from_pretrained`` and asked for one translation; rewritten when the
        checkpoint is newer than the folder. Returns what the report says of it."""
        folder = self.work / "export" / f"{pair}.{best['name']}"
        record = folder.with_name(folder.name + ".json")
        if record.is_file() and record.stat().st_mtime > best["checkpoint"].stat().st_mtime:
            return read_json(record)
        from benchmarks.bench_decode import load_module
        from resmlp_mt import ResMLPTranslationModel

        export_model = load_module("export_model", REPO / "scripts" / "export_model.py")
        export_model.export(best["checkpoint"], self.distilled(pair), folder, force=True)
        model = ResMLPTranslationModel.from_pretrained(folder)
        source = self.data(pair) / "ref" / f"valid.{pair.split('-')[0]}"  # the first valid sentence
        sentence = source.read_text(encoding="utf-8").splitlines()[0]
        info = {"folder": repo_relative(str(folder)), "source": sentence, "translation": model.translate(sentence)}
        write_result(record, json.dumps(info, indent=1) + "\n")
        log.info("[speed] %s: exported %s (%s -> %s)", pair, info["folder"], sentence, info["translation"])
        return info

    def distilled_students(self, pair: str) -> List[dict]:
        """Every trained student on the distilled data that did not diverge: its name, reported
        model, checkpoint and valid sacreBLEU."""
        found = []
        for job in self.student_jobs(pair):
            result = self.cached(job)
            if result is not None and job.data and not result.get("diverged"):  # not a recipe to ship
                model, name = reported_model(result)
                found.append({"name": job.name.split(".")[1], "model": model, "checkpoint": self.run_dir(job) / name,
                              "valid": result["eval"][model]["valid"]["sacrebleu"]})
        return found

    def best_student(self, pair: str) -> Optional[dict]:
        """The distilled student with the best valid sacreBLEU of its reported model."""
        return max(self.distilled_students(pair), key=lambda r: r["valid"], default=None)

    def teacher_run_settings(self) -> dict:
        """What the report says of a ``--teacher-run`` teacher (nothing for the study's own):
        its folder (relative to the repository), the run's recipe and fairseq-train flags; of a
        ``--teacher-checkpoint``, the file."""
        if self.args.teacher_checkpoint:
            return {"teacher_checkpoint": repo_relative(str(self.args.teacher_checkpoint))}
        run = self.args.teacher_run
        if not run:
            return {}
        spec = (self.teacher_result(self.args.pairs[0]) or {}).get("spec", {})
        return {"teacher_run": repo_relative(str(run)),
                "teacher_run_recipe": {k: spec.get(k) for k in ("system", "recipe", "train_args", "cap_minutes")}}

    def operating_points(self, pair: str, students: List[dict], teacher: Optional[Path]) -> dict:
        """Per distilled student (:meth:`distilled_students`; and the teacher, whose checkpoint is
        ``teacher``, scores only), what it gives decoded at each beam of ``--student-beams`` but 4
        (the rows' and the speed table's): ``{name: [{"beam", "valid", "test", "speed"}]}``,
        ``speed`` (:func:`_speed_summary`, the teacher at beam 4) None where the speed stage has
        not measured it; scores and speed found by the speed stage only, of the checkpoint each
        model reports now."""
        out = {}
        for name, checkpoint in [("teacher", teacher), *((r["name"], r["checkpoint"]) for r in students)]:
            points = []
            for beam in self.args.student_beams:
                scores = self.scored(pair, name, checkpoint, beam) if beam != TEACHER_BEAM else None
                if scores:
                    speed = None if name == "teacher" else _speed_summary(
                        self.measured(self.speed_file(pair, name, beam), checkpoint, teacher))
                    points.append({"beam": beam, "valid": scores["valid"], "test": scores["test"], "speed": speed})
            if points:
                out[name] = points
        return out

    def report(self) -> dict:
        a = self.args
        out = {"settings": {"pairs": a.pairs, "eval_every": a.eval_every, "max_minutes": a.max_minutes,
                            "teacher_beam": TEACHER_BEAM, "student_beams": a.student_beams,
                            "teacher_max_minutes": self.teacher_minutes, "teacher_dropout": a.teacher_dropout,
                            "teacher_recipe": TEACHER_RECIPE, "student_recipe": STUDENT_RECIPE,
                            **self.teacher_run_settings(),
                            "variants": a.variants, "command": a.command},
               "machine": self.record_machine(), "pairs": {}, "goals": []}
        for pair in a.pairs:
            teacher = self.teacher_result(pair)
            rows = []
            if teacher:
                rows.append(_row("teacher (Transformer)", "references", teacher, parameters(self.teacher_dir(pair))))
            elif a.teacher_checkpoint and (scores := self.teacher_scores(pair)):
                rows.append(_checkpoint_row(scores))
            for job in self.student_jobs(pair):
                result = self.cached(job)
                if result:
                    rows.append(_row(job.name.split(".")[1], targets_of(job), result, parameters(self.run_dir(job))))
            students = sorted(self.distilled_students(pair), key=lambda r: -r["valid"])  # the best first
            best = students[0]["name"] if students else None
            try:
                teacher_checkpoint = self.teacher_checkpoint(pair)
            except SystemExit:  # no teacher: no speed to report either
                teacher_checkpoint = None
            by_student = {r["name"]: _speed_summary(self.measured(self.speed_file(pair, r["name"], TEACHER_BEAM),
                                                                  r["checkpoint"], teacher_checkpoint))
                          for r in students}
            out["pairs"][pair] = {"rows": rows, "distillation": (read_json(self.distilled(pair) / "prep.json") or {})
                                  .get("distillation"), "speed": by_student.get(best),
                                  "speed_by_student": {k: v for k, v in by_student.items() if v},
                                  "operating_points": self.operating_points(pair, students, teacher_checkpoint),
                                  "export": read_json(self.work / "export" / f"{pair}.{best}.json")}
        out["summary"] = summary(out)
        out["goals"] = assess(out)
        text = markdown(out)
        write_result(self.results / "mt_distill.json", json.dumps(out, indent=1) + "\n")
        write_result(self.results / "mt_distill.md", text)
        plot(out, self.results / "mt_distill.png")
        print(text)
        return out


def check_teacher_run(run: Path, pairs: List[str]) -> Optional[str]:
    """Why ``run`` cannot be the teacher of ``pairs`` (None if it can): it must be one pair's
    finished curve run of the race's harness, with the checkpoint :meth:`DistillStudy.teacher_checkpoint`
    takes (averaged when it converged, else its best by valid BLEU)."""
    if len(pairs) != 1:
        return f"a teacher run serves one pair, --pairs gives {len(pairs)}"
    result = read_json(run / "result.json")
    if result is None:
        return "no result.json there: not a finished run of the race's harness"
    if "eval" not in result or "converged" not in result:
        return "its result.json is not a curve run's (no 'eval' or 'converged')"
    if result.get("pair") != pairs[0]:
        return f"it is a run of {result.get('pair')}, --pairs is {pairs[0]}"
    _, name = reported_model(result)
    if not (run / name).is_file():
        return f"{name} is missing"
    return None


def targets_of(job: Job) -> str:
    """A student's training targets: ``distilled`` (trained on the distilled folder) or ``references``."""
    return "distilled" if job.data else "references"


def reported_model(result: dict) -> tuple:
    """``(eval key, checkpoint file)`` of the model a run reports: the average of its last 5
    checkpoints when it has one (it converged), else its best by valid BLEU."""
    if "averaged" in result["eval"]:
        return "averaged", "checkpoint_averaged.pt"
    return "best", "checkpoint_best_bleu.pt"


def _checkpoint_row(scores: dict) -> dict:
    """The teacher row of a ``--teacher-checkpoint`` (:meth:`DistillStudy.teacher_scores`): its scores,
    no curve, training minutes or convergence (it was not trained here)."""
    from benchmarks.bench_decode import is_transformer

    name = "teacher (Transformer)" if is_transformer(scores["arch"]) else f"teacher ({scores['arch']})"
    return {"model": name, "data": "references", "parameters": scores["parameters"], "reported": "checkpoint",
            "test": scores["eval"]["test"]["sacrebleu"], "valid": scores["eval"]["valid"]["sacrebleu"],
            "updates": scores["updates"], "train_minutes": None, "converged": None, "valid_curve": []}


def _row(name: str, data: str, result: dict, params: Optional[int] = None) -> dict:
    model, _ = reported_model(result)
    e = result["eval"][model]
    return {"model": name, "data": data, "parameters": params, "reported": model, "test": e["test"]["sacrebleu"],
            "valid": e["valid"]["sacrebleu"], "updates": result["updates"], "train_minutes": result["train_minutes"],
            "converged": result["converged"], "diverged": result.get("diverged"),
            "valid_curve": [[q["updates"], q["valid_bleu"]] for q in result.get("points", [])]}


def equal_updates(distilled: dict, references: dict) -> Optional[tuple]:
    """``(updates, distilled valid, references valid)`` at the most updates both curves reached:
    the two runs of a student have the same training minutes, not the same number of updates
    (a run slowed by load makes fewer), so the gain is also read at equal updates."""
    ours, theirs = dict(distilled.get("valid_curve", [])), dict(references.get("valid_curve", []))
    common = sorted(set(ours) & set(theirs))
    return (common[-1], ours[common[-1]], theirs[common[-1]]) if common else None


#: the speed summary's rows (:func:`_speed_summary`): bench_decode's group and whether with the vocabulary map
SPEED_KEYS = {"b128": ("batch", False), "b1": ("latency", False),
              "b128_vocabulary_map": ("batch", True), "b1_vocabulary_map": ("latency", True)}


def _speed_summary(speed: Optional[dict]) -> Optional[dict]:
    """From a bench_decode JSON, per batch size (``b128``: its ``batch`` rows, ``b1``: ``latency``):
    the student's fastest int8 engine and the teacher's CTranslate2 int8 and fairseq-generate rows
    (sentences/s, ms per sentence at batch 1), the speedup over CTranslate2 int8 (sentences/s,
    :func:`~benchmarks.bench_decode.round_ratio`: the median of the rounds' ratios, each in
    ``speedup_rounds``); the same with the
    vocabulary map on both sides where it was measured (``b128_vocabulary_map``,
    ``b1_vocabulary_map``); the equal-output-length ratios (tokens/s); where a batch-1 sentence's
    time goes (``batch1_time_split``, when measured); when and at which commit it was measured."""
    if not speed:
        return None
    from benchmarks.bench_decode import round_ratio, round_ratios

    out = {}
    for key, (group, vmap) in SPEED_KEYS.items():
        rows = [r for r in speed["rows"] if r["group"] == group and r.get("vocabulary_map", False) == vmap]
        mine = [r for r in rows if r["system"] == "ResMLP" and r["precision"] == "int8"]
        ct2 = [r for r in rows if r["system"] == "Transformer" and r["engine"].startswith("CTranslate2")
               and r["precision"] == "int8"]
        fairseq = [r for r in rows if r["system"] == "Transformer" and r["engine"] == "fairseq-generate"]
        if not mine or not ct2:
            continue
        best = max(mine, key=lambda r: r["sentences_per_second"])
        out[key] = {"batch_size": best["batch_size"], "student_engine": best["engine"], "vocabulary_map": vmap,
                    "student_sentences_per_second": best["sentences_per_second"],
                    "teacher_ct2_int8_sentences_per_second": ct2[0]["sentences_per_second"],
                    "teacher_fairseq_sentences_per_second": fairseq[0]["sentences_per_second"] if fairseq else None,
                    "student_ms_per_sentence": best.get("latency_ms_mean"),
                    "teacher_ct2_int8_ms_per_sentence": ct2[0].get("latency_ms_mean"),
                    "speedup": round_ratio(best, ct2[0], "sentences"),
                    "speedup_rounds": round_ratios(best, ct2[0], "sentences")}
    out["interleaved"] = bool(speed["settings"].get("interleaved"))  # bench_decode's pairs decoded in turn
    out["equal_length_tokens_per_second_ratios"] = speed.get("equal_length_ratios")
    out["batch1_time_split"] = speed.get("batch1_time_split")
    out["measured"] = {"date": speed["settings"].get("date"), "git_commit": speed["machine"].get("git_commit")}
    return out


def summary(out: dict) -> Optional[dict]:
    """The best distilled student of the first pair, in the keys the goals are checked by."""
    pair = out["settings"]["pairs"][0]
    p = out["pairs"].get(pair, {})
    rows = p.get("rows", [])
    teacher = next((r for r in rows if r["model"].startswith("teacher")), None)
    students = [r for r in rows if r["data"] == "distilled"]
    if not teacher or not students:
        return None
    best = max(students, key=lambda r: r["valid"])  # chosen on valid, as the study's every choice
    def speedups(speed: Optional[dict]) -> dict:
        speed = speed or {}
        return {f"speedup_{key}": (speed.get(key) or {}).get("speedup") for key in SPEED_KEYS}

    return {"pair": pair, "student": best["model"], "student_beam": TEACHER_BEAM,
            "teacher_test_bleu": teacher["test"], "student_test_bleu": best["test"],
            "teacher_valid_bleu": teacher["valid"], "student_valid_bleu": best["valid"], **speedups(p.get("speed")),
            # the same student decoded at the other beams of --student-beams (the teacher at beam 4)
            "operating_points": [{"student_beam": q["beam"], "student_test_bleu": q["test"],
                                  "student_valid_bleu": q["valid"], **speedups(q["speed"])}
                                 for q in (p.get("operating_points") or {}).get(best["model"], [])]}


def _quality_goal(s: dict, point: dict) -> tuple:
    """``(met, figures)`` of the quality goal for the best student decoded as ``point`` says (the
    summary itself, or one of its ``operating_points``)."""
    gap_test = s["teacher_test_bleu"] - point["student_test_bleu"]
    gap_valid = s["teacher_valid_bleu"] - point["student_valid_bleu"]
    return (gap_test <= 0.5 and gap_valid <= 0.5,
            f"{s['student']}: test {point['student_test_bleu']:.2f} vs {s['teacher_test_bleu']:.2f} "
            f"({-gap_test:+.2f}), valid {point['student_valid_bleu']:.2f} vs {s['teacher_valid_bleu']:.2f}")


def _speed_goal(point: dict) -> Optional[tuple]:
    """``(met, figures)`` of the speed goal for ``point`` (None when its speed was not measured)."""
    if point["speedup_b128"] is None or point["speedup_b1"] is None:
        return None
    figures = f"{point['speedup_b128']:.2f}x at batch 128, {point['speedup_b1']:.2f}x at batch 1"
    if point.get("speedup_b128_vocabulary_map") is not None and point.get("speedup_b1_vocabulary_map") is not None:
        figures += (f"; with the vocabulary map on both sides {point['speedup_b128_vocabulary_map']:.2f}x and "
                    f"{point['speedup_b1_vocabulary_map']:.2f}x")
    return point["speedup_b128"] >= 2.0 and point["speedup_b1"] >= 1.5, figures


def assess(out: dict) -> List[dict]:
    s = out.get("summary")
    goals = []
    if s:
        met, figures = _quality_goal(s, s)
        goals.append({"goal": GOALS["quality"], "met": met, "figures": figures})
        speed = _speed_goal(s)
        if speed:
            goals.append({"goal": GOALS["speed"], "met": speed[0], "figures": speed[1]})
        for point in s.get("operating_points", []):  # both goals at once: the same student at another beam
            quality, speed = _quality_goal(s, point), _speed_goal(point)
            figures = quality[1] + (f"; {speed[1]}" if speed else "; speed not measured at this beam")
            goals.append({"goal": f"Both, the student decoded at beam {point['student_beam']} (the teacher at beam "
                                  f"{s['student_beam']}): {GOALS['quality'][0].lower()}{GOALS['quality'][1:]}, and "
                                  f"{GOALS['speed'][0].lower()}{GOALS['speed'][1:]}",
                          "met": quality[0] and bool(speed and speed[0]), "figures": figures})
    for pair, p in out["pairs"].items():
        rows = {(r["model"], r["data"]): r for r in p["rows"]}
        pairs_of_runs = {m: (rows[(m, "distilled")], rows[(m, "references")])
                         for m, d in rows if d == "distilled" and (m, "references") in rows}
        if pairs_of_runs:
            met, figures = True, []
            for m, (dist, ref) in pairs_of_runs.items():
                broken = [f"on the {r['data']} after update {r['diverged']['after_update']}"
                          for r in (dist, ref) if r.get("diverged")]
                if broken:  # no gain to read: a run stopped by its divergence, not by the curve rule
                    figures.append(f"{m} diverged {' and '.join(broken)} (its best before: test {dist['test']:.2f} "
                                   f"distilled, {ref['test']:.2f} references)")
                    met &= not dist.get("diverged") and dist["test"] > ref["test"]
                    continue
                gain = dist["test"] - ref["test"]
                # the same budget and stopping rule, not the same minutes: a run that converges stops early
                text = (f"{m} {gain:+.2f} test with the same budget ({dist['train_minutes']:.1f} vs "
                        f"{ref['train_minutes']:.1f} training minutes, {dist['updates']} vs {ref['updates']} updates)")
                met &= gain > 0
                same = equal_updates(dist, ref)
                if same:  # the same number of updates: valid sacreBLEU of both curves there
                    updates, ours, theirs = same
                    text += f"; at {updates} updates each, valid {ours:.2f} vs {theirs:.2f} ({ours - theirs:+.2f})"
                    met &= ours > theirs
                figures.append(text)
            goals.append({"goal": f"{GOALS['distillation']} ({pair}), with the same training budget and at equal "
                                  "updates",
                          "met": met, "figures": "; ".join(figures)})
    return goals


def markdown(out: dict) -> str:
    s = out["settings"]
    lines = ["# Distilling the Transformer into attention-free students (Multi30k)", "",
             "Sequence-level distillation (Kim and Rush 2016): "
             "the teacher's beam-4 translations of the training sources "
             "are the students' targets; every student is also trained on the original references, the same way. "
             "Every model trained with the race's curve rule until it converged or reached its budget "
             f"(valid sacreBLEU every {s['eval_every']} updates, stop after 3 without improvement, "
             f"at most {s['max_minutes']:g} training minutes, "
             + (f"the teacher the finished run `{s['teacher_run']}`" if s.get("teacher_run") else
                f"the teacher the checkpoint `{s['teacher_checkpoint']}`, not trained here"
                if s.get("teacher_checkpoint") else
                f"the teacher at most {s.get('teacher_max_minutes', s['max_minutes']):g}"
                + (f", at dropout {s['teacher_dropout']:g}" if s.get("teacher_dropout") is not None else "")) + "); "
             "reported: the average of the last 5 checkpoints when converged, else the best.", "",
             f"Reproduce: `{s['command']}`.", "", _machine_line(out["machine"]), ""]
    for pair, p in out["pairs"].items():
        lines += [f"## {pair}", "",
                  "| model | trained on | parameters | test sacreBLEU | valid sacreBLEU | updates | training min "
                  "| converged |", "|---|---|---:|---:|---:|---:|---:|---|"]
        made = p.get("distillation") or {}
        for r in p["rows"]:
            params = f"{r['parameters'] / 1e6:.2f}M" if r.get("parameters") else "-"
            minutes = "-" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}"
            converged = ("-" if r["converged"] is None else "yes" if r["converged"] else
                         f"no (diverged after update {r['diverged']['after_update']})" if r.get("diverged") else
                         "no (budget)")
            lines.append(f"| {r['model']} | {r['data']} | {params} | {r['test']:.2f} | {r['valid']:.2f} | "
                         f"{r['updates']} | {minutes} | {converged} |")
        if made.get("pairs"):
            lines += ["", f"Distilled targets: {made['pairs']:,} of the {made['sentences']:,} training sentences; "
                      f"left out: {made.get('left_out_empty', 0)} empty translations"
                      + (f", {made['left_out_runaway']} longer than {made['max_length_ratio']:g} x their source + "
                         f"{LENGTH_SLACK} pieces (a beam search repeating itself to the length limit)"
                         if "left_out_runaway" in made else "") + "."]
        speeds = p.get("speed_by_student") or {}
        if speeds:
            table = []
            for student, speed in speeds.items():
                for key, v in speed.items():
                    if key not in SPEED_KEYS:  # the rows of the table, not the ratios, split or date
                        continue
                    fairseq = v["teacher_fairseq_sentences_per_second"]
                    fs = f"{fairseq:.1f}" if fairseq else "-"
                    rounds = v.get("speedup_rounds") or []
                    spread = (f" ({min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else "")
                    table.append(f"| {student} | {v['batch_size']} | {'both' if v.get('vocabulary_map') else 'no'} | "
                                 f"{v['student_engine']} | {v['student_sentences_per_second']:.1f} | "
                                 f"{v['teacher_ct2_int8_sentences_per_second']:.1f} | {fs} | "
                                 f"{v['speedup']:.2f}x{spread} |")
            if table:
                lines += ["", "Decoding, 1 thread, beam 4, each distilled student measured in its own run beside the "
                          "teacher (best student by valid sacreBLEU first):", "",
                          "| student | batch | vocabulary map | student engine (int8) | student sent/s "
                          "| teacher CTranslate2 int8 sent/s | teacher fairseq sent/s "
                          "| speedup over CTranslate2 int8 |", "|---|---:|---|---|---:|---:|---:|---:|", *table]
                if any(len(v.get("speedup_rounds") or []) > 1 for speed in speeds.values() for v in speed.values()
                       if isinstance(v, dict)):
                    together = ("both systems decoding in turn, batch by batch, within a round"
                                if all(speed.get("interleaved") for speed in speeds.values())
                                else "the two systems measured in the same round")
                    lines += ["", "Sent/s: the median round; speedup: the median of the rounds' ratios (their range "
                              f"in brackets), {together}."]
            else:  # the speed stage ran without CTranslate2: no teacher rows, so no speedups
                lines += ["", "Decoding: no speedups, the teacher's CTranslate2 int8 rows were not measured "
                          "(CTranslate2 not installed: `pip install -r requirements-bench.txt`, then rerun the "
                          "speed stage); each student's batch-1 time split is below."]
            for student, speed in speeds.items():
                ratios = speed.get("equal_length_tokens_per_second_ratios")
                if ratios:
                    lines += ["", f"Equal output length, {student} (every hypothesis forced to the same length; "
                              "tokens/s ratios, student over teacher): "
                              + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()) + "."]
                split = speed.get("batch1_time_split")
                if split:
                    from benchmarks.bench_decode import SPLIT_PARTS

                    lines += ["", f"Batch 1, {student}, ONNX int8, where a sentence's {split['total_ms']:.2f} ms go "
                              f"({split['steps_per_sentence']:.1f} decoder steps): "
                              + ", ".join(f"{SPLIT_PARTS[part]} {ms:.2f} ms ({100 * ms / split['total_ms']:.0f}%)"
                                          for part, ms in split["ms"].items()) + "."]
            measured = [f"{student} on {speed['measured']['date'][:10]}"
                        + (f" at commit {speed['measured']['git_commit'][:10]}" if speed["measured"]["git_commit"]
                           else "")
                        for student, speed in speeds.items() if (speed.get("measured") or {}).get("date")]
            if measured:
                lines += ["", "Speed measured: " + "; ".join(measured) + "."]
        lines += _operating_points_table(p)
        if p.get("export"):
            e = p["export"]
            lines += ["", f"The best student exported as a model folder, `{e['folder']}` (scripts/export_model.py), "
                      f"loads with `ResMLPTranslationModel.from_pretrained` and translates \"{e['source']}\" as "
                      f"\"{e['translation']}\"."]
        lines.append("")
    lines += ["## Goals", ""] + [f"- **{'met' if g['met'] else 'missed'}**: {g['goal']}: {g['figures']}"
                                 for g in out["goals"]]
    return "\n".join(lines) + "\n"


def _operating_points_table(p: dict) -> List[str]:
    """The distilled students (and the teacher) decoded at each beam of ``--student-beams``, the
    teacher at beam 4 in every speed run: sacreBLEU and, where measured, the student's sentences/s
    and speedup over the teacher through CTranslate2 int8 (beam 4) at batch 128 and 1."""
    points = p.get("operating_points") or {}
    if not points:
        return []
    teacher = next((r for r in p["rows"] if r["model"].startswith("teacher")), None)
    beam4 = {r["model"]: r for r in p["rows"] if r["data"] == "distilled"}
    lines = ["", "Decoded at other beams (the speed stage's scores, mt_tools.evaluate; speed: each student in its "
                 "own run beside the teacher at beam 4, 1 thread, int8; beam 4 from the tables above):", "",
             "| model | beam | test sacreBLEU | valid sacreBLEU | sent/s, batch 128 | speedup | sent/s, batch 1 "
             "| speedup |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    speeds = p.get("speed_by_student") or {}
    for name, entries in points.items():
        base = teacher if name == "teacher" else beam4.get(name)
        rows = ([{"beam": TEACHER_BEAM, "test": base["test"], "valid": base["valid"], "speed": speeds.get(name)}]
                if base else []) + entries
        for q in rows:
            cells = []
            for key in ("b128", "b1"):
                v = (q["speed"] or {}).get(key)
                cells += ([f"{v['student_sentences_per_second']:.1f}", f"{v['speedup']:.2f}x"] if v else ["-", "-"])
            lines.append(f"| {name} | {q['beam']} | {q['test']:.2f} | {q['valid']:.2f} | " + " | ".join(cells) + " |")
    return lines


def plot(out: dict, path: Path) -> None:
    """Quality against decoding speed at batch 128: the teacher (CTranslate2 int8, in the best
    student's run) and every distilled student whose speed was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = out.get("summary")
    p = out["pairs"].get(s["pair"], {}) if s else {}
    speed = (p.get("speed") or {}).get("b128")
    if not speed:
        return
    test = {r["model"]: r["test"] for r in p["rows"] if r["data"] == "distilled"}
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.scatter([speed["teacher_ct2_int8_sentences_per_second"]], [s["teacher_test_bleu"]], marker="s",
               label="teacher, CTranslate2 int8")
    for student, v in (p.get("speed_by_student") or {}).items():
        if "b128" in v and student in test:
            ax.scatter([v["b128"]["student_sentences_per_second"]], [test[student]],
                       label=f"{student}, {v['b128']['student_engine']} int8")
    for student, points in (p.get("operating_points") or {}).items():
        for q in points:
            if (q["speed"] or {}).get("b128"):
                ax.scatter([q["speed"]["b128"]["student_sentences_per_second"]], [q["test"]], marker="^",
                           label=f"{student}, beam {q['beam']}")
    ax.set_xlabel("sentences/s, batch 128, 1 thread")
    ax.set_ylabel("test sacreBLEU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def variants_of(names: List[str], flags: List[str]) -> Dict[str, str]:
    """``{name: fairseq-train flags}`` from the repeated ``--variant-name`` and ``--variant-flags``
    (paired in order; one variant alone may go unnamed: ``variant``). ValueError names the problem."""
    flags = [f for f in flags if f.strip()]
    if not names and len(flags) == 1:
        names = ["variant"]
    if len(names) != len(flags):
        raise ValueError(f"give one --variant-name per --variant-flags ({len(names)} names, {len(flags)} flags)")
    taken = [n for n in names if n in STUDENTS or "." in n]
    if taken or len(set(names)) != len(names):
        raise ValueError(f"--variant-name must be unique, without '.', and not a --students name: {names}")
    return dict(zip(names, flags))


def study_command(argv: List[str]) -> str:
    """The command the report gives to reproduce it: these flags with ``--stage all`` whichever stage
    ran (a report written by ``--stage report`` comes from every stage), shell-quoted."""
    flags = drop_options(argv, {"--stage": "+"})
    return shlex.join(["python", "-m", "benchmarks.mt_distill", "--stage", "all", *flags])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", nargs="+", choices=[*STAGES, "all"], default=["all"],
                   help="the stages to run, in the study's order whatever the order given (all: every one)")
    p.add_argument("--pairs", nargs="+", choices=PAIRS, default=["en-de"])
    p.add_argument("--students", nargs="*", choices=list(STUDENTS), default=list(STUDENTS),
                   help="students to train (none: only --variant-flags)")
    p.add_argument("--variant-flags", action="append", default=[],
                   help="a student from the token-mixer study, as fairseq-train flags; repeat it (each with its "
                        "--variant-name) for more than one")
    p.add_argument("--variant-name", action="append", default=[],
                   help="the name in the tables of the --variant-flags at the same place (one variant alone may "
                        "leave it out: 'variant')")
    p.add_argument("--student-beams", type=int, nargs="+", default=[TEACHER_BEAM], metavar="N",
                   help="the beams the distilled students are decoded at by the speed stage and the report, 4 among "
                        "them (the teacher always at beam 4): add 1 for greedy decoding, which sequence-level "
                        "distillation makes nearly as good as beam search (Kim and Rush 2016); each other beam "
                        "scores the students and the teacher on valid and test and times every student again")
    p.add_argument("--speed-students", choices=["all", "best"], default="all",
                   help="speed: every distilled student (each in its own decoding run beside the teacher, about "
                        "13 to 30 minutes on 1 thread, depending on the machine) or only the best by valid sacreBLEU")
    p.add_argument("--eval-every", type=int, default=250, help="updates between validations")
    p.add_argument("--max-minutes", type=training_minutes, default=120.0,
                   help="most training minutes per model (0: stop at the first evaluation)")
    p.add_argument("--teacher-max-minutes", type=training_minutes, default=None,
                   help="most training minutes of the teacher (default: --max-minutes)")
    p.add_argument("--teacher-dropout", type=float, default=None, metavar="P",
                   help="the study's own teacher's dropout (default: scripts/train_multi30k.sh's 0.1); given, it is "
                        "in the teacher run's name (en-de.teacher.dropout0.2), so teachers of other dropouts are kept "
                        "apart")
    p.add_argument("--teacher-run", type=cli_path, default=None,
                   help="a finished curve run of the race's harness to distil from instead of training a teacher "
                        "(its folder: result.json and checkpoints), e.g. the token-mixer curves' Transformer at its "
                        "chosen dropout; one pair only")
    p.add_argument("--teacher-checkpoint", type=cli_path, default=None,
                   help="a fairseq translation checkpoint of the pair (a .pt file; for example your Transformer "
                        "trained on --data-root's folder) to distil from instead of training a teacher: scored once "
                        "on valid and test for the report; one pair only")
    p.add_argument("--student-targets", nargs="+", choices=["distilled", "references"],
                   default=["distilled", "references"],
                   help="students: which targets to train on; 'references' needs no teacher, so it can run beside "
                        "the teacher stage (the report and speed stages read whatever is cached)")
    p.add_argument("--work-dir", type=cli_path, default=REPO / "checkpoints" / "distill")
    p.add_argument("--results-dir", type=cli_path, default=REPO / "results")
    p.add_argument("--data-root", type=cli_path, default=REPO / "data-bin")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--no-vocabulary-map", dest="vocabulary_map", action="store_false",
                   help="speed: without the rows where teacher and student decode with a vocabulary map learned from "
                        "the references (a lexical shortlist, python -m mt_tools.vocabulary_map)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress-seconds", type=float, default=120.0)
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    p.add_argument("--quick", action="store_true", help="smoke test (tiny bench_decode)")
    p.add_argument("--extra-train-args", default="", help=argparse.SUPPRESS)  # testing: e.g. a tiny model
    args = p.parse_args(argv)
    try:
        args.variants = variants_of(args.variant_name, args.variant_flags)
    except ValueError as e:
        p.error(str(e))
    if TEACHER_BEAM not in args.student_beams or min(args.student_beams) < 1:
        p.error(f"--student-beams {' '.join(map(str, args.student_beams))}: beams of at least 1, "
                f"{TEACHER_BEAM} among them (the study's operating point)")
    args.student_beams = sorted(set(args.student_beams), key=lambda b: (b != TEACHER_BEAM, b))
    if not args.students and not args.variants:
        p.error("--students names no student and --variant-flags is empty: nothing to train")
    if args.teacher_dropout is not None and not 0 <= args.teacher_dropout < 1:
        p.error(f"--teacher-dropout {args.teacher_dropout:g}: a dropout probability, at least 0 and below 1")
    if args.teacher_checkpoint:
        others = [flag for flag, given in (("--teacher-run", args.teacher_run),
                                           ("--teacher-dropout", args.teacher_dropout is not None)) if given]
        if others:
            p.error(f"--teacher-checkpoint distils from a checkpoint; {' and '.join(others)} choose another teacher: "
                    "give one of them")
        if not args.teacher_checkpoint.is_file():
            p.error(f"--teacher-checkpoint {args.teacher_checkpoint}: no such file")
        if len(args.pairs) != 1:
            p.error(f"--teacher-checkpoint serves one pair, --pairs gives {len(args.pairs)}")
    if args.teacher_dropout is not None and args.teacher_run:
        p.error("--teacher-dropout sets the study's own teacher; --teacher-run distils from a finished run instead: "
                "give one of them")
    if args.teacher_run:
        problem = check_teacher_run(args.teacher_run, args.pairs)
        if problem:
            p.error(f"--teacher-run {args.teacher_run}: {problem}")
    if "all" in args.stage and len(args.stage) > 1:
        p.error(f"--stage all runs every stage: give it alone, or name the stages ({' '.join(args.stage)})")
    args.command = study_command(sys.argv[1:] if argv is None else argv)
    args.keep_checkpoints = True
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO,
                        stream=sys.stdout, force=True)
    logging.getLogger("mt_tools.evaluate").setLevel(logging.WARNING)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stop_trainings_on_sigterm()
    study = DistillStudy(args)
    start = time.time()
    for stage in STAGES if "all" in args.stage else [s for s in STAGES if s in args.stage]:
        log.info("=== stage %s ===", stage)
        try:
            getattr(study, stage)()
        except DistillationError as error:  # bad input found by the distillation (a teacher of another pair)
            print(f"error: {error}", file=sys.stderr)
            return 2
    log.info("done in %s", minutes_text((time.time() - start) / 60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
