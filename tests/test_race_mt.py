"""The translation race: python -m benchmarks.race_mt's stages (sweep, race, curves, report) on a
tiny corpus written by the test, with a tiny model; the cache of finished runs; the goal logic."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from benchmarks import race_mt
from helpers import prepare_multi30k, write_corpus

# Options both models take: a 1+1-layer, d=32 model, small batches, a progress record every 5 updates.
TINY = ("--encoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-layers 1 "
        "--decoder-layers 1 --decoder-attention-heads 2 --max-tokens 500 --num-workers 0 --log-interval 5 "
        "--max-source-positions 64 --max-target-positions 64")
EVAL_EVERY = 50


# --- the whole command, on a tiny corpus --------------------------------------------------------


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    root = tmp_path_factory.mktemp("race_mt")
    raw = write_corpus(root / "raw")
    for name in ("train", "val", "test_2016_flickr"):  # an En-Fr pair too (the same words)
        shutil.copy(raw / f"{name}.de", raw / f"{name}.fr")
    assert prepare_multi30k(raw, root / "data-bin", "--pairs", "en-de", "en-fr").returncode == 0
    command = [sys.executable, "-m", "benchmarks.race_mt", "--quick", "--stage", "all", "--pairs", "en-de",
               "--data-root", str(root / "data-bin"), "--work-dir", str(root / "work"),
               "--results-dir", str(root / "results"), "--eval-every", str(EVAL_EVERY), "--max-minutes", "0.03",
               "--progress-seconds", "0", "--extra-train-args", TINY]
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    results = root / "results"
    return {"root": root, "results": results, "command": command, "first": first,
            **{name: json.loads((results / f"{name}.json").read_text())
               for name in ("mt_sweep", "mt_race", "mt_curves", "mt_report")}}


@pytest.mark.slow
def test_sweep_scores_every_configuration_and_marks_the_best(raced):
    sweep = raced["mt_sweep"]
    rows = sweep["rows"]
    assert sorted(r["system"] for r in rows) == ["resmlp", "resmlp", "transformer", "transformer"]
    assert all(r["updates"] == 4 and r["valid_sacrebleu"] >= 0 for r in rows)
    assert {r["recipe"]["norm"] for r in rows if r["system"] == "transformer"} == {"pre", "post"}
    assert {r["recipe"]["layerscale_init"] for r in rows if r["system"] == "resmlp"} == {0.2, 0.5}
    for system in ("resmlp", "transformer"):
        best = [r for r in rows if r["system"] == system and r["best"]]
        assert len(best) == 1 and sweep["best"][system]["recipe"] == best[0]["recipe"]
    assert sweep["machine"]["torch"] and sweep["machine"]["fairseq"] and sweep["machine"]["cores"]
    assert "(best)" in (raced["results"] / "mt_sweep.md").read_text()


@pytest.mark.slow
def test_race_uses_the_sweep_recipes_and_reports_each_seed(raced):
    race = raced["mt_race"]
    assert race["settings"]["recipe_source"].startswith("best of the sweep")
    assert race["settings"]["recipes"] == {s: raced["mt_sweep"]["best"][s]["recipe"] for s in ("resmlp", "transformer")}
    assert sorted((r["pair"], r["system"], r["seed"]) for r in race["runs"]) == [("en-de", "resmlp", 1),
                                                                                 ("en-de", "transformer", 1)]
    for run in race["runs"]:
        assert run["updates"] > 0
        assert run["eval"]["test"]["sentences"] == 10 and run["eval"]["valid"]["sentences"] == 12
        assert run["trained_by"] == {**race_mt.segment_machine(race["machine"]),
                                     "load_5min": run["trained_by"]["load_5min"]}  # where it trained: here
    summary = race["summary"]["en-de"]
    for split in ("test", "valid"):
        assert summary["resmlp"][split]["n"] == 1 and summary["resmlp"][split]["mean"] is not None
        diff = summary["resmlp_minus_transformer"][split]["mean"]
        assert diff == pytest.approx(summary["resmlp"][split]["mean"] - summary["transformer"][split]["mean"], abs=1e-3)
    assert "ResMLP − Transformer" in (raced["results"] / "mt_race.md").read_text()


@pytest.mark.slow
def test_curves_record_bleu_against_minutes_and_average_the_last_checkpoints(raced):
    curves = raced["mt_curves"]["pairs"]["en-de"]
    for system in ("resmlp", "transformer"):
        e = curves[system]
        points = e["points"]
        assert points and [p["updates"] for p in points] == [EVAL_EVERY * (i + 1) for i in range(len(points))]
        minutes = [p["train_minutes"] for p in points]
        assert minutes == sorted(minutes)
        machine = raced["mt_curves"]["machine"]  # every segment says where it trained: here, this process
        assert {p["trained_by"]["commit"] for p in points} == {race_mt.segment_machine(machine)["commit"]}
        assert all(p["trained_by"]["host"] == machine["hostname"] and p["trained_by"]["load_5min"] >= 0
                   for p in points)
        if e["stop_reason"].startswith("training-minutes budget"):
            assert minutes[-1] >= 0.03 and not e["converged"]
        else:  # the tiny model's BLEU can stay at 0: no improvement in 3 evaluations
            assert e["stop_reason"].startswith("early stop") and len(points) >= 4 and e["converged"]
        models = ["best", "last"]
        if e["converged"]:  # a plateau: the last checkpoints are averaged
            assert 1 <= len(e["averaged_checkpoints"]) <= 5
            assert e["eval"]["averaged"]["valid"]["sentences"] == 12
            models.append("averaged")
        else:  # stopped while rising: no average, the last checkpoint is the reported model
            assert e["averaged_checkpoints"] == [] and "averaged" not in e["eval"]
        assert race_mt.reported_model(e) == models[-1]
        for model in models:
            assert e["eval"][model]["test"]["sentences"] == 10
    for png in ("mt_curves.png", "mt_curves_en-de.png"):
        assert (raced["results"] / png).stat().st_size > 10_000


@pytest.mark.slow
def test_report_states_each_goal_as_met_or_missed(raced):
    goals = raced["mt_report"]["goals"]
    assert [g["goal"] for g in goals] == [race_mt.GOAL_RACE, race_mt.GOAL_CONVERGENCE]
    assert all(g["status"] in ("met", "missed") for g in goals)
    race_goal = goals[0]
    assert race_goal["status"] == "missed" and "en-fr was not raced" in race_goal["caveats"]
    assert any("--quick" in c for c in race_goal["caveats"])
    assert len(goals[1]["figures"]) == 2  # En-De test and valid
    text = (raced["results"] / "mt_report.md").read_text()
    assert text.count("**MET**") + text.count("**MISSED**") == 2
    assert "## Race" in text and "## Curves" in text and "## Sweep" in text


@pytest.mark.slow
def test_a_rerun_skips_the_finished_runs(raced):
    results = sorted((raced["root"] / "work").glob("*/*/result.json"))
    assert len(results) == 4 + 2 + 2
    before = {p: p.stat().st_mtime_ns for p in results}
    again = subprocess.run(raced["command"], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "[sweep] 4 runs: 4 cached (skipped), 0 to run" in again.stdout
    assert "[race] 2 runs: 2 cached (skipped), 0 to run" in again.stdout
    assert "[curves] 2 runs: 2 cached (skipped), 0 to run" in again.stdout
    assert " start: " not in again.stdout and " resume: " not in again.stdout  # no training started
    assert {p: p.stat().st_mtime_ns for p in results} == before
    assert json.loads((raced["results"] / "mt_race.json").read_text())["runs"] == raced["mt_race"]["runs"]


# --- the pieces, without training ----------------------------------------------------------------


def test_the_sweep_grid_is_the_same_for_both_systems():
    grid = race_mt.sweep_grid(quick=False)
    assert len(grid["resmlp"]) == len(grid["transformer"]) == 12
    for system in grid:
        assert {(r["lr"], r["warmup"]) for r in grid[system]} == {(lr, w) for lr in (5e-4, 1e-3, 2e-3)
                                                                  for w in (300, 1000)}
    assert len(race_mt.sweep_grid(quick=True)["resmlp"]) == 2
    flags, env = race_mt.recipe_flags("transformer", {"lr": 1e-3, "warmup": 300, "norm": "post"})
    assert flags == ["--lr", "0.001", "--warmup-updates", "300"] and env == {"TRANSFORMER_NORM": "post"}
    flags, env = race_mt.recipe_flags("resmlp", {"lr": 5e-4, "warmup": 1000, "layerscale_init": 0.2})
    assert flags[-2:] == ["--layerscale-init", "0.2"] and env == {}


def test_training_minutes_leave_out_validation_and_checkpoint_writing():
    log = """\
2024-01-01 10:00:00 | INFO | fairseq.trainer | begin training epoch 1
2024-01-01 10:00:50 | INFO | train_inner | {"epoch": 1, "num_updates": "50", "loss": "9"}
2024-01-01 10:01:00 | INFO | fairseq_cli.train | begin validation on "valid" subset
2024-01-01 10:01:30 | INFO | valid | {"epoch": 1, "valid_loss": "7.5", "valid_num_updates": "60"}
2024-01-01 10:01:40 | INFO | fairseq.checkpoint_utils | Saved checkpoint x/checkpoint_last.pt (epoch 1 @ 60 \
updates, score 7.5)
2024-01-01 10:02:40 | INFO | train_inner | {"epoch": 1, "num_updates": "100", "loss": "8"}
2024-01-01 10:03:40 | INFO | fairseq_cli.train | begin validation on "valid" subset
2024-01-01 10:04:00 | INFO | valid | {"epoch": 2, "valid_loss": "6.5", "valid_num_updates": "120"}
"""
    tracker = race_mt.LogTracker()
    events = [tracker.feed(line) for line in log.splitlines()]
    assert events.count("valid") == 2 and "saved" in events
    assert tracker.updates == 120
    assert [p["train_minutes"] for p in tracker.points] == [1.0, 3.0]  # 60 s, then 40 s of validation and saving out
    assert [p["wall_minutes"] for p in tracker.points] == [1.0, pytest.approx(3.667, abs=1e-3)]
    assert tracker.train_minutes() == pytest.approx(3.0)  # frozen during the open validation


def test_curves_stop_after_three_evaluations_without_improvement_or_at_the_budget():
    def points(bleus, minutes=1.0):
        return [{"valid_bleu": b, "train_minutes": minutes * (i + 1)} for i, b in enumerate(bleus)]

    assert race_mt.curve_stop_reason([], 10, True) is None
    assert race_mt.curve_stop_reason(points([5, 6, 6, 5.9]), 10, True) is None  # 2 without improvement
    # equal is no improvement
    assert race_mt.curve_stop_reason(points([5, 6, 6, 5.9, 6]), 10, True).startswith("early stop")
    assert race_mt.curve_stop_reason(points([5, 6, 6, 5.9, 6]), 10, False) is None  # En-Fr: no early stopping
    assert race_mt.curve_stop_reason(points([5, 6], minutes=5), 10, False).startswith("training-minutes budget")


def _race(diffs, minutes=25, seeds=3, source="best of the sweep"):
    summary = {pair: {"resmlp": {s: {"mean": 30 + d, "std": 0.1} for s, d in zip(("test", "valid"), ds)},
                      "transformer": {s: {"mean": 30.0, "std": 0.1} for s in ("test", "valid")}}
               for pair, ds in diffs.items()}
    return {"settings": {"minutes": minutes, "seeds": seeds, "recipe_source": source, "quick": False},
            "summary": summary}


def _curves(test_diff, valid_diff, converged=True):
    def entry(test, valid):  # the last checkpoint 5 points under the average: a goal on it would fail
        scores = {"averaged": {"test": {"sacrebleu": test}, "valid": {"sacrebleu": valid}},
                  "last": {"test": {"sacrebleu": test - 5 * (test != 30)},
                           "valid": {"sacrebleu": valid - 5 * (valid != 30)}}}
        if not converged:  # a budget-stopped run is reported by its last checkpoint
            scores = {"averaged": scores["last"], "last": scores["averaged"]}  # an old result's average is ignored
        return {"eval": scores, "converged": converged,
                "stop_reason": "early stop" if converged else "training-minutes budget (120 min) reached"}

    return {"settings": {"recipe_source": "best of the sweep", "quick": False},
            "pairs": {"en-de": {"resmlp": entry(30 + test_diff, 30 + valid_diff), "transformer": entry(30, 30)}}}


def test_goals_are_met_or_missed_by_their_figures():
    met = race_mt.assess_goals(_race({"en-de": (1.2, 1.0), "en-fr": (1.5, 2.0)}), _curves(-0.4, 0.3))
    assert [g["status"] for g in met] == ["met", "met"] and not met[0]["caveats"] and not met[1]["caveats"]
    assert len(met[0]["figures"]) == 4 and met[0]["figures"][0]["difference"] == pytest.approx(1.2)
    missed = race_mt.assess_goals(_race({"en-de": (1.2, 0.9), "en-fr": (1.5, 2.0)}, minutes=10,
                                        source="default recipe"),
                                  _curves(-0.6, 0.3, converged=False))
    assert [g["status"] for g in missed] == ["missed", "missed"]
    assert [f["met"] for f in missed[0]["figures"]] == [True, False, True, True]
    assert any("10 minutes" in c for c in missed[0]["caveats"]) and any("not tuned" in c for c in missed[0]["caveats"])
    assert any("not necessarily converged" in c for c in missed[1]["caveats"])
    assert {f["model"] for f in met[1]["figures"]} == {"average of the last checkpoints"}
    assert {f["model"] for f in missed[1]["figures"]} == {"last checkpoint"}
    assert [f["difference"] for f in missed[1]["figures"]] == [pytest.approx(-0.6), pytest.approx(0.3)]
    one_pair = race_mt.assess_goals(_race({"en-de": (2, 2)}), None)
    assert one_pair[0]["status"] == "missed" and one_pair[1]["status"] == "not run"


def test_curves_table_averages_only_runs_that_reached_a_plateau():
    """A run stopped by its minutes budget is still rising: it is reported by its last checkpoint,
    and an average of its last checkpoints (written by older versions) is not shown or compared."""
    def entry(converged, last, averaged):
        score = lambda b: {"test": {"sacrebleu": b}, "valid": {"sacrebleu": b - 1}}  # noqa: E731
        return {"eval": {"best": score(last), "last": score(last), "averaged": score(averaged)}, "converged": converged,
                "stop_reason": "early stop" if converged else "training-minutes budget (25 min) reached",
                "updates": 1500, "train_minutes": 25.0, "best_point": {"valid_bleu": last - 1, "updates": 1500},
                "averaged_checkpoints": [f"curve_{i}.pt" for i in range(5)],
                "points": [{"updates": 1500, "train_minutes": 25.0, "valid_bleu": last - 1}]}

    d = {"settings": {"recipe_source": "test", "recipes": {}, "method": "test",
                      "max_training_minutes": {"en-de": 120, "en-fr": 25},
                      "early_stopping": {"en-de": True, "en-fr": False}},
         "machine": {}, "pairs": {"en-de": {"resmlp": entry(True, 34.0, 36.0), "transformer": entry(True, 35.0, 38.0)},
                                  "en-fr": {"resmlp": entry(False, 50.0, 49.0),
                                            "transformer": entry(False, 52.0, 47.0)}}}
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[1:-1]]
            for line in race_mt.curves_markdown(d).splitlines() if line.startswith("| en-")}
    assert rows[("en-de", "resmlp")][-1] == "**36.00 / 35.00** (N=5)"
    assert rows[("en-de", "**ResMLP − Transformer**")][-1] == "**-2.00 / -2.00**"  # the averages
    assert rows[("en-fr", "resmlp")][-2:] == ["**50.00 / 49.00**", "— (no plateau: last checkpoint reported)"]
    assert rows[("en-fr", "**ResMLP − Transformer**")][-2:] == ["**-2.00 / -2.00**", ""]  # the last checkpoints, not +2
    assert race_mt.reported_model(d["pairs"]["en-fr"]["resmlp"]) == "last"


def test_a_page_says_where_its_segments_trained_when_its_machine_line_does_not():
    here = {"cpu": "Xeon", "hostname": "vm", "git_commit": "a" * 40, "git_dirty": False, "runs_at_a_time": 2}
    by = lambda commit, host="vm", load=2.0: {"trained_by": {"cpu": "Xeon", "host": host, "commit": commit,  # noqa
                                                             "load_5min": load}}
    assert race_mt.trained_on_lines([by("a" * 10)] * 3, here) == []  # all said by the machine line
    assert race_mt.trained_on_lines([{}, {}], here) == []  # nothing recorded: an older page
    line, blank = race_mt.trained_on_lines([by("a" * 10), by("b" * 10 + "+", load=3.4), {}], here)
    assert line == ("Where the 3 segments trained: Xeon (host vm): 1 at commit aaaaaaaaaa, 1 at commit bbbbbbbbbb+; "
                    "1 trained before segments recorded their machine. 1 ended with a 5-minute load average of 2.5 "
                    "or more (at most 3.40; 2 run(s) at a time planned): their minutes include other work's.")
    assert blank == ""
    assert "host other" in race_mt.trained_on_lines([by("a" * 10), by("a" * 10, host="other")], here)[0]
    loaded = race_mt.trained_on_lines([by("a" * 10, load=2.6)], here)[0]
    assert loaded.startswith("Where the 1 segment trained: as above. 1 ended")


def test_a_cached_result_is_reused_only_with_the_same_settings(tmp_path):
    args = argparse.Namespace(work_dir=tmp_path / "work", results_dir=tmp_path / "results", data_root=tmp_path / "data",
                              extra_train_args="", threads=1)
    race = race_mt.Race(args)
    job = race_mt.Job("race", "en-de.resmlp.seed1", "resmlp", "en-de", 1,
                      {"lr": 1e-3, "warmup": 300, "layerscale_init": 0.5}, minutes=25.0)
    assert race.cached(job) is None
    race_mt.write_json(race.run_dir(job) / "result.json", {"spec": race.spec(job), "figures": {}})
    assert race.cached(job) is not None
    longer = race_mt.Job(**{**race_mt.asdict(job), "minutes": 30.0})
    assert race.cached(longer) is None
    other_seed = race_mt.Job(**{**race_mt.asdict(job), "seed": 2})
    assert race.cached(other_seed) is None


def test_only_an_interrupted_update_budget_run_resumes(tmp_path):
    args = argparse.Namespace(work_dir=tmp_path / "work", results_dir=tmp_path / "results", data_root=tmp_path / "data",
                              extra_train_args="", threads=1)
    race = race_mt.Race(args)
    recipe = {"lr": 1e-3, "warmup": 300, "layerscale_init": 0.5}
    sweep = race_mt.Job("sweep", "resmlp.lr0.001.wu300.ls0.5", "resmlp", "en-de", 1, recipe, max_update=600)
    timed = race_mt.Job("race", "en-de.resmlp.seed1", "resmlp", "en-de", 1, recipe, minutes=25.0)
    for job in (sweep, timed):
        assert not race.resumable(job)  # nothing there yet
        folder = race.run_dir(job)
        folder.mkdir(parents=True)
        race_mt.write_json(folder / "started.json", race.spec(job))  # as execute() records it
        (folder / "checkpoint_last.pt").write_bytes(b"")
    assert race.resumable(sweep)
    assert not race.resumable(timed)  # a wall-clock budget restarts from scratch
    for other in (300, 60):
        shorter = race_mt.Job(**{**race_mt.asdict(sweep), "max_update": other})
        assert not race.resumable(shorter)  # another budget: the checkpoint is not this run's


def test_the_sweep_grid_can_be_narrowed_alike_for_both_systems():
    grid = race_mt.sweep_grid(quick=False, lrs=(2e-3,), warmups=(300,))
    assert [r["layerscale_init"] for r in grid["resmlp"]] == [0.2, 0.5]
    assert [r["norm"] for r in grid["transformer"]] == ["pre", "post"]
    assert all((r["lr"], r["warmup"]) == (2e-3, 300) for rows in grid.values() for r in rows)


def test_finished_runs_outside_a_narrowed_grid_are_listed_not_eligible(tmp_path):
    args = argparse.Namespace(work_dir=tmp_path / "work", results_dir=tmp_path / "results", data_root=tmp_path / "data",
                              extra_train_args="", threads=1)
    race = race_mt.Race(args)

    def job(warmup, updates=600):
        recipe = {"lr": 5e-4, "warmup": warmup, "layerscale_init": 0.5}
        return race_mt.Job("sweep", race_mt.recipe_name("resmlp", recipe), "resmlp", "en-de", 1, recipe,
                           max_update=updates)

    asked, earlier, other_budget = job(300), job(1000), job(1000, updates=50)
    race_mt.write_json(race.run_dir(earlier) / "result.json",
                       {"spec": race.spec(earlier), "name": earlier.name, "system": "resmlp"})
    race_mt.write_json(race.run_dir(asked) / "result.json",
                       {"spec": race.spec(asked), "name": asked.name, "system": "resmlp"})
    found = race.outside_grid({"resmlp": [asked], "transformer": []})
    assert [r["name"] for r in found] == [earlier.name] and not found[0]["in_grid"]
    # a run of another update budget is not this sweep's
    race_mt.write_json(race.run_dir(earlier) / "result.json",
                       {"spec": race.spec(other_budget), "name": earlier.name, "system": "resmlp"})
    assert race.outside_grid({"resmlp": [asked], "transformer": []}) == []


def _timed_race(tmp_path, monkeypatch, seconds, fail=()):
    """A Race on two places whose runner sleeps ``seconds[name]`` and records when each job starts
    and ends (the ``events`` list); a name in ``fail`` raises instead."""
    import threading
    import time

    args = argparse.Namespace(work_dir=tmp_path / "work", results_dir=tmp_path / "results", data_root=tmp_path / "data",
                              extra_train_args="", threads=1, parallel=2)
    race = race_mt.Race(args)
    monkeypatch.setattr(race, "record_machine", lambda: {})
    events, lock = [], threading.Lock()

    def runner(job, tag):
        with lock:
            events.append(("start", job.name))
        if job.name in fail:
            raise RuntimeError(f"{job.name} failed")
        time.sleep(seconds[job.name])
        with lock:
            events.append(("end", job.name))
        return {"name": job.name}

    return race, runner, events


@pytest.mark.parametrize("early_stop", [True, False])
def test_early_stopping_runs_queue_and_fixed_length_runs_go_in_groups(tmp_path, monkeypatch, early_stop):
    """Curves (early stopping, no common length) start each run as a place frees up, in the order
    given; fixed-length runs start in full groups, so ``c`` waits for the group's longest run ``a``."""
    race, runner, events = _timed_race(tmp_path, monkeypatch, {"a": 0.6, "b": 0.05, "c": 0.05})
    jobs = [[race_mt.Job("curves", name, "resmlp", "en-de", 1, {}, early_stop=early_stop)] for name in "abc"]
    results = race.run_jobs("curves", [[jobs[0][0], jobs[1][0]], jobs[2]], runner=runner)
    assert [r["name"] for r in results] == ["a", "b", "c"]  # job order, whatever the finishing order
    assert events.index(("start", "c")) > events.index(("end", "b"))  # never more than two at a time
    assert (events.index(("start", "c")) < events.index(("end", "a"))) is early_stop


def test_a_failed_run_in_the_queue_stops_the_runs_not_started(tmp_path, monkeypatch, caplog):
    """The failure is logged when it happens, with the runs still under way, not only raised after
    they end (a curve run can take an hour)."""
    race, runner, events = _timed_race(tmp_path, monkeypatch, {"a": 0.3, "b": 0, "c": 0.3, "d": 0.01}, fail={"b"})
    jobs = [[race_mt.Job("curves", name, "resmlp", "en-de", 1, {}, early_stop=True)] for name in "abcd"]
    logged_before_a_ended = []
    end_a = runner

    def runner_noting_the_log(job, tag):
        result = end_a(job, tag)
        if job.name == "a":
            logged_before_a_ended.extend(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
        return result

    with caplog.at_level("ERROR", logger=race_mt.log.name), pytest.raises(RuntimeError, match="b failed"):
        race.run_jobs("curves", jobs, runner=runner_noting_the_log)
    started = [name for kind, name in events if kind == "start"]
    assert "a" in started and ("end", "a") in events  # the run under way finishes (it is resumable anyway)
    assert "d" not in started
    assert any("RuntimeError: b failed" in m and "finish: a" in m for m in logged_before_a_ended), logged_before_a_ended


def test_sigterm_stops_the_trainings_under_way_and_no_new_one_starts(tmp_path, monkeypatch):
    """``kill PID`` of a harness stops its fairseq-train children too (before, they trained on,
    into folders a restarted harness resumes from); once stopping, no training starts."""
    import os
    import signal
    import threading
    import time

    script = tmp_path / "harness.py"
    script.write_text(
        "import sys\n"
        "from benchmarks import race_mt\n"
        "race_mt.stop_trainings_on_sigterm()\n"
        "procs = [race_mt.start_training([sys.executable, '-c', 'import time; time.sleep(120)']) for _ in range(2)]\n"
        "print(' '.join(str(p.pid) for p in procs), flush=True)\n"
        "import time; time.sleep(120)\n")  # the harness's main thread waits on its pool, not on the trainings
    harness = subprocess.Popen([sys.executable, script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    children = [int(pid) for pid in harness.stdout.readline().split()]
    assert len(children) == 2
    start = time.monotonic()
    harness.send_signal(signal.SIGTERM)
    assert harness.wait(60) == 128 + signal.SIGTERM and time.monotonic() - start < 30

    def alive(pid: int) -> bool:  # a zombie waiting for its reaper counts as gone
        try:
            return " (Z) " not in open(f"/proc/{pid}/stat").read()
        except FileNotFoundError:
            return False

    assert not any(alive(pid) for pid in children)
    stopping = threading.Event()
    stopping.set()
    monkeypatch.setattr(race_mt, "_STOPPING", stopping)
    with pytest.raises(RuntimeError, match="stopping"):
        race_mt.start_training([sys.executable, "-c", "pass"])


def test_runs_side_by_side_fill_every_place():
    # every group but the last is full: a slot (three systems on two places, or what the cache left
    # of one) fills the free place left by the one before, so no run trains alone between others
    assert race_mt.pack_groups([["a1", "b1"], ["a2", "b2"]], 2) == [["a1", "b1"], ["a2", "b2"]]
    assert race_mt.pack_groups([["a1", "b1", "c1"], ["a2", "b2", "c2"]], 2) == [["a1", "b1"], ["c1", "a2"],
                                                                                 ["b2", "c2"]]
    assert race_mt.pack_groups([["a1"], [], ["b1"], ["c1", "d1"]], 2) == [["a1", "b1"], ["c1", "d1"]]
    assert race_mt.pack_groups([["a1", "b1", "c1"]], 3) == [["a1", "b1", "c1"]]
    # a rerun after seed 3's first group and seed 2's runs of a second pair: no run alone
    assert race_mt.pack_groups([["c3"], ["b2", "c2"], ["a3", "b3", "c3"]], 2) == [["c3", "b2"], ["c2", "a3"],
                                                                                   ["b3", "c3"]]
    assert race_mt.pack_groups([["a1", "b1"], ["c1"], ["a2", "b2"]], 2) == [["a1", "b1"], ["c1", "a2"], ["b2"]]
    assert race_mt.pack_groups([], 2) == []


class Trained(Exception):
    """Raised by :func:`_curve_race`'s stand-in for ``Race.train``: ``args`` are its ``max_update`` and ``fresh``."""


def _curve_race(tmp_path, monkeypatch, pair: str, cap_minutes: float):
    """A Race in ``tmp_path`` whose ``train`` raises :class:`Trained`, and a curve job of ``pair``."""
    args = argparse.Namespace(work_dir=tmp_path / "work", results_dir=tmp_path / "results", data_root=tmp_path / "data",
                              extra_train_args="", threads=1)
    race = race_mt.Race(args)

    def train(job, tag, max_update=None, fresh=True, **kwargs):
        raise Trained(max_update, fresh)

    monkeypatch.setattr(race, "train", train)
    recipe = {"lr": 1e-3, "warmup": 300, "layerscale_init": 0.5}
    job = race_mt.Job("curves", f"{pair}.resmlp", "resmlp", pair, 1, recipe, cap_minutes=cap_minutes,
                      segment_updates=250, early_stop=True)
    return race, recipe, job


def test_a_curve_run_goes_on_when_only_its_budget_grows(tmp_path, monkeypatch):
    """A curve run stopped at its training-minutes budget continues from its last segment when the
    budget grows (the same run, longer); a smaller budget is refused (it would delete the run); any
    other change of settings trains from scratch."""
    race, recipe, job = _curve_race(tmp_path, monkeypatch, "en-de", 10.0)
    folder = race.run_dir(job)
    folder.mkdir(parents=True)
    points = [{"updates": 250 * (i + 1), "train_minutes": 5.0 * (i + 1), "valid_bleu": 10.0 + i,
               "checkpoint": f"curve_{250 * (i + 1):07d}.pt"} for i in range(2)]
    race_mt.write_json(folder / "progress.json", {"spec": race.spec(job), "points": points})
    for name in ("checkpoint_last.pt", "curve_0000250.pt", "curve_0000500.pt"):
        (folder / name).write_bytes(b"")
    assert race_mt.curve_stop_reason(points, job.cap_minutes, True).startswith("training-minutes budget")
    longer = race_mt.Job(**{**race_mt.asdict(job), "cap_minutes": 20.0})
    assert race_mt.run_grew(race.spec(job), race.spec(longer))
    with pytest.raises(Trained) as trained:
        race.curve_run(longer, "[test]")
    assert trained.value.args == (750, False)  # the third segment, resumed from checkpoint_last.pt
    assert race_mt.read_json(folder / "progress.json")["spec"] == race.spec(longer)
    assert len(race_mt.read_json(folder / "progress.json")["points"]) == 2

    shorter = race_mt.Job(**{**race_mt.asdict(longer), "cap_minutes": 15.0})
    assert not race_mt.run_grew(race.spec(longer), race.spec(shorter))
    for other in ({"seed": 2}, {"recipe": {**recipe, "lr": 2e-3}}):  # a larger budget and another setting
        changed = race_mt.Job(**{**race_mt.asdict(longer), "cap_minutes": 30.0, **other})
        assert not race_mt.run_grew(race.spec(longer), race.spec(changed))
    with pytest.raises(SystemExit, match=r"budget of 20 training minutes; --max-minutes 15 is smaller"):
        race.curve_run(shorter, "[test]")  # would delete the longer run: refused, nothing trained
    assert (folder / "checkpoint_last.pt").is_file()
    with pytest.raises(Trained) as trained:
        race.curve_run(changed, "[test]")
    assert trained.value.args == (250, True)  # another run (another seed or recipe): from scratch


def test_a_curve_run_goes_on_when_its_patience_grows_and_a_copy_continues_it(tmp_path, monkeypatch):
    """A curve run early-stopped with patience 3 is the start of the same run with patience 6:
    a larger patience continues it from its last segment, a smaller one is refused; the default
    patience stays out of the recorded settings (the published runs' specs have none), and
    continue_run copies a finished run into a new folder that goes on from where it stopped,
    leaving the original as it was."""
    race, recipe, job = _curve_race(tmp_path, monkeypatch, "en-fr", 100.0)
    assert "patience" not in race.spec(job)
    points = [{"updates": 250 * (i + 1), "train_minutes": 5.0 * (i + 1), "valid_bleu": bleu,
               "checkpoint": f"curve_{250 * (i + 1):07d}.pt"} for i, bleu in enumerate([10.0, 12.0, 11.0, 11.5, 11.9])]
    assert race_mt.curve_stop_reason(points, 100.0, True) == \
        "early stop: validation BLEU did not improve for 3 evaluations"
    assert race_mt.curve_stop_reason(points, 100.0, True, patience=6) is None
    folder = race.run_dir(job)
    folder.mkdir(parents=True)
    race_mt.write_json(folder / "progress.json", {"spec": race.spec(job), "points": points})
    race_mt.write_json(folder / "result.json", {"spec": race.spec(job)})
    for name in ("checkpoint_last.pt", "checkpoint_averaged.pt", "train.0001250.log", "command.txt",
                 *(p["checkpoint"] for p in points)):
        (folder / name).write_text(name)

    patient = race_mt.Job(**{**race_mt.asdict(job), "name": "en-fr.resmlp.patience6", "patience": 6})
    assert race.spec(patient)["patience"] == 6
    same_name = race_mt.Job(**{**race_mt.asdict(patient), "name": job.name})
    assert race_mt.run_grew(race.spec(job), race.spec(same_name))
    assert not race_mt.run_grew(race.spec(same_name), race.spec(job))
    assert not race_mt.run_grew(race.spec(job), race.spec(race_mt.Job(**{**race_mt.asdict(same_name), "seed": 2})))
    assert not race_mt.run_grew(race.spec(job), race.spec(patient))  # another name: another run, unless copied
    assert race_mt.continue_run(folder, race.run_dir(patient), race.spec(patient))
    copied = race.run_dir(patient)
    assert sorted(p.name for p in copied.iterdir()) == sorted(
        ["checkpoint_last.pt", "command.txt", "progress.json", "train.0001250.log", *(p["checkpoint"] for p in points)])
    assert (copied / "curve_0001250.pt").read_text() == "curve_0001250.pt"
    assert not race_mt.continue_run(folder, copied, race.spec(patient))  # started already: left alone
    other = race_mt.Job(**{**race_mt.asdict(patient), "name": "other", "recipe": {**recipe, "lr": 2e-3}})
    assert not race_mt.continue_run(folder, race.run_dir(other), race.spec(other))  # another run
    assert not race.run_dir(other).exists()
    with pytest.raises(Trained) as trained:
        race.curve_run(patient, "[test]")
    assert trained.value.args == (1500, False)  # the sixth segment, resumed from the copied checkpoint_last.pt
    assert race_mt.read_json(copied / "progress.json")["spec"] == race.spec(patient)
    assert race_mt.read_json(folder / "progress.json")["spec"] == race.spec(job)  # the original is untouched
    impatient = race_mt.Job(**{**race_mt.asdict(patient), "patience": 4})
    with pytest.raises(SystemExit, match=r"early-stopping patience of 6; --patience 4 is smaller"):
        race.curve_run(impatient, "[test]")


def test_a_curve_run_that_diverges_is_finished_with_its_evaluations_and_not_trained_again(tmp_path, monkeypatch):
    """A segment whose fairseq-train stops with ``FloatingPointError`` (non-finite gradients) finishes
    the run: its result says where it diverged and reports the checkpoints evaluated before, so the
    stage's other runs go on, and a rerun of the stage takes it from the cache instead of diverging
    again; a run that diverges before its first evaluation has nothing to report and raises."""
    race, recipe, job = _curve_race(tmp_path, monkeypatch, "en-de", 100.0)
    folder = race.run_dir(job)
    folder.mkdir(parents=True)
    points = [{"updates": 250 * (i + 1), "train_minutes": 5.0 * (i + 1), "valid_bleu": bleu,
               "checkpoint": f"curve_{250 * (i + 1):07d}.pt"} for i, bleu in enumerate([20.0, 28.0])]
    race_mt.write_json(folder / "progress.json", {"spec": race.spec(job), "points": points})
    for name in ("checkpoint_last.pt", "checkpoint_best_bleu.pt", "command.txt", "curve_0000250.pt",
                 "curve_0000500.pt"):
        (folder / name).write_text(name)
    trained = []

    def train(job, tag, max_update=None, fresh=True, log_name="train.log", **kwargs):
        trained.append(max_update)
        raise race_mt.TrainingDiverged("diverged", 0, folder / log_name)  # at the segment's first update

    scored = []
    monkeypatch.setattr(race, "train", train)
    monkeypatch.setattr(race, "score", lambda job, checkpoint, split: scored.append((checkpoint.name, split))
                        or {"sacrebleu": 27.5})
    result = race.curve_run(job, "[test]")
    assert trained == [750]
    assert result["diverged"] == {"after_update": 500, "segment": [500, 750], "log": "train.0000750.log"}
    assert result["stop_reason"] == "diverged: non-finite gradients after update 500"
    assert not result["converged"] and result["updates"] == 500 and result["eval"]["best"]["test"]["sacrebleu"] == 27.5
    assert scored == [("curve_0000500.pt", "test")] and "averaged" not in result["eval"]  # the best is the last
    assert race.cached(job) == result  # the stage's next run reports it and trains nothing

    fresh = race_mt.Job(**{**race_mt.asdict(job), "seed": 2})  # diverges before its first evaluation: raised
    with pytest.raises(race_mt.TrainingDiverged):
        race.curve_run(fresh, "[test]")
    assert trained == [750, 250] and race.cached(fresh) is None


@pytest.mark.parametrize("tail, diverged", [("FloatingPointError: gradients are Nan/Inf", True),
                                            ("RuntimeError: something else", False)])
def test_a_training_that_stops_with_non_finite_gradients_is_told_from_other_failures(tmp_path, monkeypatch, tail,
                                                                                      diverged):
    """Race.train reads the failed fairseq-train's log: fairseq's ``FloatingPointError`` is a
    divergence (:class:`race_mt.TrainingDiverged`, with the last update its log reported), any
    other failure stays a plain error."""
    args = argparse.Namespace(work_dir=tmp_path / "work", results_dir=tmp_path / "results", data_root=tmp_path / "data",
                              extra_train_args="", threads=1, progress_seconds=60)
    race = race_mt.Race(args)
    job = race_mt.Job("curves", "en-de.resmlp", "resmlp", "en-de", 1, {"lr": 1e-3, "warmup": 300,
                                                                         "layerscale_init": 0.5})
    inner = json.dumps({"epoch": 4, "num_updates": "750", "loss": "1e5", "gnorm": "1e7"})
    log_text = (f"2026-12-07 20:23:41 | INFO | fairseq.trainer | begin training epoch 4\n"
                f"2026-12-07 20:23:42 | INFO | train_inner | {inner}\n{tail}\n")
    real_start = race_mt.start_training
    monkeypatch.setattr(race_mt, "start_training", lambda cmd, **kw: real_start(
        [sys.executable, "-c", f"import sys; sys.stdout.write({log_text!r}); sys.exit(1)"], **kw))
    monkeypatch.setattr(race, "job_data", lambda job: tmp_path / "data")
    with pytest.raises(RuntimeError) as failed:
        race.train(job, "[test]", max_update=1000, fresh=True, log_name="train.0001000.log")
    assert isinstance(failed.value, race_mt.TrainingDiverged) == diverged
    if diverged:
        assert failed.value.updates == 750 and failed.value.log == race.run_dir(job) / "train.0001000.log"
        said = str(failed.value)
        assert "diverged (fairseq-train: FloatingPointError: gradients are Nan/Inf) after update 750" in said
