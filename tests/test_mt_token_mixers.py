"""The token-mixer study (python -m benchmarks.mt_token_mixers): its screen, race and curves on a
tiny corpus with tiny models; rows compared with the paper's mixer and the Transformer; the cache;
the curves' choice of each system's dropout and the differences, on hand-made runs."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.mt_token_mixers import (TRANSFORMER, VARIANTS, TokenMixerStudy, curve_row, curves_markdown,
                                        curves_summary, parse_args, race_goal_lines)
from benchmarks.race_mt import Job
from conftest import REPO
from helpers import prepare_multi30k, write_corpus

TINY = ("--encoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-layers 1 "
        "--decoder-layers 1 --decoder-attention-heads 2 --max-tokens 500 --num-workers 0 --log-interval 2 "
        "--max-source-positions 64 --max-target-positions 64")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("token_mixers")
    raw = write_corpus(root / "raw", sizes={"train": 80, "val": 8, "test_2016_flickr": 6})
    assert prepare_multi30k(raw, root / "data-bin").returncode == 0
    base = [sys.executable, "-m", "benchmarks.mt_token_mixers", "--pairs", "en-de",
            "--data-root", str(root / "data-bin"), "--work-dir", str(root / "work"),
            "--results-dir", str(root / "results"), "--progress-seconds", "0", "--extra-train-args", TINY]
    screen = base + ["--stage", "screen", "--updates", "4", "--variants", "paper", "relative", "glu", "transformer"]
    first = subprocess.run(screen, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    race = base + ["--stage", "race", "--minutes", "0.1", "--seeds", "1", "--race-variants", "paper", "relative"]
    raced = subprocess.run(race, capture_output=True, text=True, cwd=REPO)
    assert raced.returncode == 0, raced.stdout[-4000:] + raced.stderr[-4000:]
    return {"root": root, "base": base, "screen": screen, "first": first}


@pytest.mark.slow
def test_screen_rows_compare_every_variant_with_the_paper_and_the_transformer(study):
    out = json.loads((study["root"] / "results" / "mt_token_mixers_screen.json").read_text())
    rows = {r["variant"]: r for r in out["rows"]}
    assert set(rows) == {"paper", "relative", "glu", "transformer"}
    for name, row in rows.items():
        assert row["updates"] == 4 and row["parameters"] > 0
        assert row["vs_paper"] == pytest.approx(row["valid_sacrebleu"] - rows["paper"]["valid_sacrebleu"], abs=0.011)
        assert row["vs_transformer"] == pytest.approx(row["valid_sacrebleu"] - rows["transformer"]["valid_sacrebleu"],
                                                      abs=0.011)
        assert row["flags"] == ("" if name == "transformer" else " ".join(VARIANTS[name][1]))
    assert rows["glu"]["parameters"] > rows["paper"]["parameters"]  # the gate's projections
    assert rows["paper"]["run"].startswith("sweep/")  # the sweep's run of the paper's mixer, shared
    text = (study["root"] / "results" / "mt_token_mixers_screen.md").read_text()
    assert "| relative |" in text and f" {study['root']}" not in text  # paths relative to the repository


@pytest.mark.slow
def test_race_reports_every_variant_per_seed_with_speed_and_parameters(study):
    out = json.loads((study["root"] / "results" / "mt_token_mixers_race.json").read_text())
    assert {(r["variant"], r["seed"]) for r in out["runs"]} == {("paper", 1), ("relative", 1), ("transformer", 1)}
    assert all(r["updates"] > 0 and r["parameters"] > 0 and set(r["sacrebleu"]) == {"test", "valid"}
               for r in out["runs"])
    assert {r["trained_by"]["host"] for r in out["runs"]} == {out["machine"]["hostname"]}  # where each trained
    summary = out["summary"]["en-de"]
    assert summary["relative"]["test"]["values"] == [r["sacrebleu"]["test"] for r in out["runs"]
                                                     if r["variant"] == "relative"]
    assert "test vs Transformer" in (study["root"] / "results" / "mt_token_mixers_race.md").read_text()


@pytest.mark.slow
def test_race_report_only_reports_the_finished_runs_lists_the_others_and_decides_nothing(study):
    """A race of two seeds reported when only the fixture's seed 1 has trained: nothing trains, the
    seed-2 runs are listed as not finished, the means are seed 1's, and the goal waits."""
    root = study["root"]
    race = study["base"] + ["--stage", "race", "--minutes", "0.1", "--race-variants", "paper", "relative"]
    before = json.loads((root / "results" / "mt_token_mixers_race.json").read_text())
    report = subprocess.run(race + ["--seeds", "2", "--report-only", "--output", "partial"], capture_output=True,
                            text=True, cwd=REPO)
    assert report.returncode == 0, report.stdout[-4000:] + report.stderr[-4000:]
    assert " start: " not in report.stdout and "[race]" not in report.stdout
    out = json.loads((root / "results" / "partial_race.json").read_text())
    missing = [f"en-de.{v}.seed2" for v in ("paper", "relative", "transformer")]
    assert out["settings"]["not_finished"] == missing and len(out["settings"]["planned"]) == 6
    assert "report-only" not in out["settings"]["command"]
    assert out["runs"] == before["runs"] and out["summary"] == before["summary"]
    text = (root / "results" / "partial_race.md").read_text()
    assert "Not finished yet (3 of 6 runs" in text and ", ".join(missing) in text
    assert "Goal **not decided yet**: 3 runs not finished" in text and "Goal **met**" not in text
    assert "Goal **missed**" not in text and "| relative | 1 |" in text


@pytest.mark.slow
def test_a_rerun_of_the_screen_trains_nothing(study):
    again = subprocess.run(study["screen"], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0 and "4 cached (skipped), 0 to run" in again.stdout


@pytest.mark.slow
def test_curves_report_each_system_at_the_dropout_of_its_best_valid_and_rerun_from_the_cache(study):
    """The curves stage on the fixture's data: one variant and the Transformer at two dropouts, a
    training-minutes cap of 0, so that every run stops at its first evaluation (the fewest runs and
    segments that check the choice and the differences); a rerun trains nothing; --report-only
    reports the finished runs of a larger grid."""
    root = study["root"]
    curves = study["base"] + ["--stage", "curves", "--curve-variants", "relative", "--eval-every", "100",
                              "--max-minutes", "0", "--dropouts"]
    first = subprocess.run(curves + ["0.1", "0.3"], capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "[curves] 4 runs: 0 cached (skipped), 4 to run" in first.stdout
    out = json.loads((root / "results" / "mt_token_mixers_curves.json").read_text())
    runs = {(r["variant"], r["dropout"]): r for r in out["runs"]}
    assert list(runs) == [("relative", 0.1), ("transformer", 0.1), ("relative", 0.3), ("transformer", 0.3)]
    for (variant, dropout), r in runs.items():
        assert r["run"] == f"token_mixers_curves/en-de.{variant}.dropout{dropout:g}"
        assert r["points"] and r["updates"] == 100 * len(r["points"]) and r["parameters"] > 0
        assert all(p["trained_by"]["cpu"] == out["machine"]["cpu"] for p in r["points"])
        assert r["reported_model"] == ("averaged" if r["converged"] else "last")
        assert r["valid"] == r["eval"][r["reported_model"]]["valid"]["sacrebleu"]
        command = shlex.split(r["command"])
        last_dropout = len(command) - 1 - command[::-1].index("--dropout")
        assert command[last_dropout + 1] == f"{dropout:g}"  # after the script's own --dropout 0.1: it counts
    assert runs[("relative", 0.1)]["parameters"] < runs[("transformer", 0.1)]["parameters"]
    chosen = out["chosen"]["en-de"]
    for variant in ("relative", "transformer"):
        best = max((runs[(variant, d)] for d in (0.1, 0.3)), key=lambda r: r["valid"])  # of equal ones the lower
        assert chosen[variant]["dropout"] == best["dropout"] and chosen[variant]["valid"] == best["valid"]
    diff = out["differences"]["en-de"]["relative"]
    mine, ref = runs[("relative", diff["dropout"])], runs[("transformer", diff["transformer_dropout"])]
    assert diff["transformer_dropout"] == chosen["transformer"]["dropout"]
    for split in ("test", "valid"):
        assert diff[split] == pytest.approx(mine["eval"][diff["model"]][split]["sacrebleu"]
                                            - ref["eval"][diff["model"]][split]["sacrebleu"], abs=0.011)
    text = (root / "results" / "mt_token_mixers_curves.md").read_text()
    assert "| relative − Transformer |" in text and "Not finished yet" not in text
    assert f" {root}" not in text and f"`{root}" not in text  # paths relative to the repository
    assert (root / "results" / "mt_token_mixers_curves.png").stat().st_size > 5_000
    again = subprocess.run(curves + ["0.1", "0.3"], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0 and "[curves] 4 runs: 4 cached (skipped), 0 to run" in again.stdout
    assert " start: " not in again.stdout and " resume: " not in again.stdout
    # a larger grid, reported before its new runs trained: they are listed, not trained
    partial = subprocess.run(curves + ["0.1", "0.2", "0.3", "--report-only"], capture_output=True, text=True, cwd=REPO)
    assert partial.returncode == 0, partial.stdout[-4000:] + partial.stderr[-4000:]
    out = json.loads((root / "results" / "mt_token_mixers_curves.json").read_text())
    assert out["settings"]["not_finished"] == ["en-de.relative.dropout0.2", "en-de.transformer.dropout0.2"]
    assert len(out["runs"]) == 4 and out["chosen"]["en-de"]["relative"]["dropouts_finished"] == [0.1, 0.3]
    assert not (root / "work" / "token_mixers_curves" / "en-de.relative.dropout0.2").exists()
    assert "Not finished yet (2 of 6 runs" in (root / "results" / "mt_token_mixers_curves.md").read_text()
    # a new machine: the repository (its results/) without the work folder; the published runs carry over
    before = {r["run"]: (r["test"], r["valid"], r["points"]) for r in out["runs"]}
    shutil.rmtree(root / "work" / "token_mixers_curves")
    fresh = subprocess.run(curves + ["0.1", "0.3"], capture_output=True, text=True, cwd=REPO)
    assert fresh.returncode == 0, fresh.stdout[-4000:] + fresh.stderr[-4000:]
    assert "[curves] 4 runs carried over from" in fresh.stdout and " start: " not in fresh.stdout
    out = json.loads((root / "results" / "mt_token_mixers_curves.json").read_text())
    assert {r["run"]: (r["test"], r["valid"], r["points"]) for r in out["runs"]} == before
    assert out["settings"]["not_finished"] == [] and all(r["machine"]["date"] for r in out["runs"])
    line = next(x for x in (root / "results" / "mt_token_mixers_curves.md").read_text().splitlines()
                if x.startswith("Carried over from this page"))
    assert all(f"{Path(r).name} ({out['machine']['cpu']}, " in line for r in before)  # each run by its folder name


def test_curves_default_plan_runs_the_variant_beside_the_transformer_first_and_the_papers_mixer_last(tmp_path):
    """18 runs queued in the order that reaches the verdict first: relative + GLU right before the
    Transformer at each dropout (two places: they start together), En-De then En-Fr; then the
    paper's mixer, the reference, at every dropout, En-De then En-Fr."""
    study = TokenMixerStudy(parse_args(["--stage", "curves", "--work-dir", str(tmp_path)]))
    order = [(job.pair, variant, dropout) for slot in study.curve_plan() for variant, dropout, job in slot]
    assert len(order) == 18
    beside = [(pair, variant, d) for pair in ("en-de", "en-fr") for d in (0.1, 0.2, 0.3)
              for variant in ("relative_glu", "transformer")]
    assert order[:12] == beside
    assert order[12:] == [(pair, "paper", d) for pair in ("en-de", "en-fr") for d in (0.1, 0.2, 0.3)]


def test_race_goal_picks_the_variant_by_valid_leaves_out_the_hybrid_and_needs_every_difference():
    def system(test, valid):
        return {"test": {"mean": test}, "valid": {"mean": valid}}

    summary = {"en-de": {"paper": system(35.0, 30.0), "relative_glu": system(33.0, 32.0),
                         "hybrid1": system(40.0, 40.0), "transformer": system(32.5, 31.5)},
               "en-fr": {"paper": system(48.0, 47.0), "transformer": system(48.0, 46.0)}}
    text = "\n".join(race_goal_lines(summary))
    # relative_glu, best by valid (not paper, best by test; not the hybrid, which is not attention-free)
    assert "| en-de | relative_glu | +0.50 | +0.50 |" in text and "| en-fr | paper | +0.00 | +1.00 |" in text
    assert "Goal **met**: 4 of 4" in text
    summary["en-fr"]["transformer"] = system(48.01, 46.0)
    assert "Goal **missed**: 3 of 4" in "\n".join(race_goal_lines(summary))
    # runs missing: the differences so far, no verdict; a pair without the Transformer's runs yet is left out
    summary["en-fr"]["transformer"] = system(None, None)
    text = "\n".join(race_goal_lines(summary, not_finished=3))
    assert "Goal **not decided yet**: 3 runs not finished; so far 2 of 2" in text and "| en-fr |" not in text


def _curve_run(pair, variant, dropout, last, averaged=None):
    """A hand-made finished curve run as a report row: ``last`` (and, for a run that plateaued,
    ``averaged``) are (test, valid) sacreBLEU."""
    scores = {"last": last, **({"averaged": averaged} if averaged else {})}
    evals = {model: {"test": {"sacrebleu": t, "sacrebleu_signature": "sig"}, "valid": {"sacrebleu": v}}
             for model, (t, v) in scores.items()}
    evals["best"] = evals["last"]
    result = {"stop_reason": "early stop" if averaged else "training-minutes budget (150 min) reached",
              "converged": averaged is not None, "updates": 3000, "train_minutes": 60.0,
              "best_point": {"updates": 3000, "train_minutes": 60.0, "valid_bleu": last[1]}, "eval": evals,
              "averaged_checkpoints": ["c"] * 5 if averaged else [], "points": [], "command": "train"}
    job = Job("token_mixers_curves", f"{pair}.{variant}.dropout{dropout:g}", "resmlp", pair, 1, {})
    return curve_row(variant, dropout, job, result, 1000)


def test_published_curve_runs_carry_over_only_with_the_plans_settings_and_no_local_result(tmp_path):
    """A row of the published page stands for its run on a machine without the run's folder, if it
    recorded the settings this plan would train it with; other settings, or a local result, win."""
    def study(*extra):
        return TokenMixerStudy(parse_args(["--stage", "curves", "--pairs", "en-de", "--curve-variants", "relative_glu",
                                           "--dropouts", "0.1", "--work-dir", str(tmp_path / "work"),
                                           "--results-dir", str(tmp_path / "results"), *extra]))

    def page(st):
        jobs = [job for slot in st.curve_plan() for _, _, job in slot]
        rows = []
        for job in jobs:
            row = _curve_run(job.pair, job.name.split(".")[1], 0.1, last=(30.0, 31.0))
            rows.append(dict(row, run=f"{job.stage}/{job.name}", spec=st.portable_spec(job), machine={"date": "d"}))
        (tmp_path / "results").mkdir(exist_ok=True)
        (tmp_path / "results" / "mt_token_mixers_curves.json").write_text(json.dumps({"runs": rows}))
        return jobs

    st = study()
    jobs = page(st)
    assert st.portable_spec(jobs[0])["data"] == "data-bin/multi30k.en-de"  # the same on every clone
    assert sorted(st.published_curve_runs("mt_token_mixers_curves", jobs)) == sorted(j.name for j in jobs)
    other = study("--eval-every", "100")  # the page's runs were made with segments of 250 updates
    other_jobs = [job for slot in other.curve_plan() for _, _, job in slot]
    assert [j.name for j in other_jobs] == [j.name for j in jobs]
    assert other.published_curve_runs("mt_token_mixers_curves", other_jobs) == {}
    (st.run_dir(jobs[0])).mkdir(parents=True)  # a finished local run of the same settings
    (st.run_dir(jobs[0]) / "result.json").write_text(json.dumps({"spec": st.spec(jobs[0])}))
    assert sorted(st.published_curve_runs("mt_token_mixers_curves", jobs)) == [jobs[1].name]
    # another page's runs carry over with --carry-from, the stage's own page first
    (tmp_path / "results" / "mt_token_mixers_curves.json").rename(tmp_path / "main.json")
    assert study().published_curve_runs("mt_token_mixers_curves", jobs) == {}
    carrying = study("--carry-from", str(tmp_path / "main.json"))
    assert sorted(carrying.published_curve_runs("mt_token_mixers_curves", jobs)) == [jobs[1].name]


def test_layers_give_every_system_of_the_curves_the_same_depth_under_its_own_names(tmp_path):
    """--layers 6 1: the variant and the Transformer both train with 6 encoder and 1 decoder layers
    (flags after the system's own, so they override scripts/train_multi30k.sh's 3 + 3), in runs
    whose names say so: the 3 + 3 runs' cache is never taken for them."""
    argv = ["--stage", "curves", "--pairs", "en-de", "--curve-variants", "relative_glu", "--work-dir", str(tmp_path)]
    plain = [job for slot in TokenMixerStudy(parse_args(argv)).curve_plan() for _, _, job in slot]
    deep = [job for slot in TokenMixerStudy(parse_args([*argv, "--layers", "6", "1"])).curve_plan()
            for _, _, job in slot]
    assert [j.name for j in plain][:2] == ["en-de.relative_glu.dropout0.1", "en-de.transformer.dropout0.1"]
    assert [j.name for j in deep] == [j.name.replace(".dropout", ".layers6+1.dropout") for j in plain]
    for p, d in zip(plain, deep):
        assert "--encoder-layers" not in p.train_args
        flags = d.train_args
        assert flags[flags.index("--encoder-layers"):][:4] == ["--encoder-layers", "6", "--decoder-layers", "1"]
        assert flags[-2:] == p.train_args[-2:]  # the dropout still last
    for bad in (["--layers", "0", "1"], ["--layers", "6"]):
        with pytest.raises(SystemExit):
            parse_args([*argv, *bad])
    with pytest.raises(SystemExit):
        parse_args(["--stage", "screen", "--layers", "6", "1"])


def test_layers_give_every_system_of_the_race_the_same_depth_under_its_own_names(tmp_path):
    """--stage race --layers 3 1: every system of every pair and seed with 3 encoder and 1 decoder
    layers, after its own flags, in runs named for it (never the 3 + 3 race's cached runs)."""
    argv = ["--stage", "race", "--race-variants", "relative_glu_dynamic_heads4", "--seeds", "2",
            "--work-dir", str(tmp_path)]
    plain = [job for slot in TokenMixerStudy(parse_args(argv)).race_plan() for job in slot]
    deep_slots = TokenMixerStudy(parse_args([*argv, "--layers", "3", "1"])).race_plan()
    assert [len(slot) for slot in deep_slots] == [2, 2, 2, 2]  # (variant, Transformer) per pair and seed
    deep = [job for slot in deep_slots for job in slot]
    assert [j.name for j in deep][:2] == ["en-de.relative_glu_dynamic_heads4.layers3+1.seed1",
                                          "en-de.transformer.layers3+1.seed1"]
    assert [j.name for j in deep] == [j.name.replace(".seed", ".layers3+1.seed") for j in plain]
    for p, d in zip(plain, deep):
        assert d.train_args == [*p.train_args, "--encoder-layers", "3", "--decoder-layers", "1"]
        assert (d.minutes, d.seed, d.recipe) == (p.minutes, p.seed, p.recipe)


def test_curve_seed_trains_new_runs_named_with_their_seed_and_seed_1_keeps_its_names(tmp_path):
    """--curve-seed 2: the same plan with seed 2 (the training script's SEED), in runs whose names
    end in .seed2, so that seed 1's finished runs are neither reused nor overwritten; the page
    records the seed. Seed 1, the default, keeps the names the published pages have."""
    argv = ["--stage", "curves", "--pairs", "en-de", "--curve-variants", "relative_glu", "--layers", "3", "1",
            "--work-dir", str(tmp_path)]
    first = [job for slot in TokenMixerStudy(parse_args(argv)).curve_plan() for _, _, job in slot]
    assert first[0].name == "en-de.relative_glu.layers3+1.dropout0.1" and {j.seed for j in first} == {1}
    assert parse_args([*argv, "--curve-seed", "1"]).command.endswith("--curve-seed 1")
    second = [job for slot in TokenMixerStudy(parse_args([*argv, "--curve-seed", "2"])).curve_plan()
              for _, _, job in slot]
    assert [j.name for j in second] == [f"{j.name}.seed2" for j in first]
    assert {j.seed for j in second} == {2} and second[0].label.endswith("dropout 0.1 seed 2")
    assert [j.train_args for j in second] == [j.train_args for j in first]
    assert {TokenMixerStudy(parse_args([*argv, "--curve-seed", "2"])).run_dir(j) for j in second}.isdisjoint(
        {TokenMixerStudy(parse_args(argv)).run_dir(j) for j in first})
    for bad in ([*argv, "--curve-seed", "0"], ["--stage", "race", "--curve-seed", "2"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_train_only_trains_the_named_systems_and_reports_every_run(tmp_path, monkeypatch):
    argv = ["--stage", "curves", "--pairs", "en-de", "--curve-variants", "relative_glu", "--dropouts", "0.1", "0.2",
            "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results")]
    study = TokenMixerStudy(parse_args([*argv, "--train-only", "transformer", "--max-runs", "1"]))
    plan = [(variant, job) for slot in study.curve_plan() for variant, _, job in slot]
    trained = []
    monkeypatch.setattr(study, "check_data", lambda pairs: None)
    published = {plan[0][1].name: _curve_run("en-de", "relative_glu", 0.1, last=(30.0, 31.0))}
    monkeypatch.setattr(study, "published_curve_runs", lambda stem, jobs: published)
    monkeypatch.setattr(study, "run_jobs",
                        lambda stage, slots, runner: [trained.append(j.name) for slot in slots for j in slot])
    study.curves()
    transformer_runs = [job.name for variant, job in plan if variant == TRANSFORMER]
    assert len(transformer_runs) == 2 and trained == transformer_runs[:1]  # the first Transformer run only
    out = json.loads((tmp_path / "results" / "mt_token_mixers_curves.json").read_text())
    assert [r["run"] for r in out["runs"]] == [f"token_mixers_curves/{plan[0][1].name}"]
    assert out["settings"]["not_finished"] == [job.name for _, job in plan[1:]]  # the variant's 0.2 is listed
    # recorded without --train-only; a system outside the plan, or with --report-only, is refused
    assert parse_args([*argv, "--train-only", "transformer", "relative_glu"]).command == parse_args(argv).command
    for bad in (["--train-only", "paper"], ["--train-only", "transformer", "--report-only"]):
        with pytest.raises(SystemExit):
            parse_args([*argv, *bad])


def test_max_runs_trains_the_first_unfinished_runs_in_plan_order_and_skips_the_published(tmp_path, monkeypatch):
    argv = ["--stage", "curves", "--pairs", "en-de", "--curve-variants", "relative_glu", "--work-dir",
            str(tmp_path / "work"), "--results-dir", str(tmp_path / "results"), "--max-runs", "2"]
    study = TokenMixerStudy(parse_args(argv))
    plan = [job for slot in study.curve_plan() for _, _, job in slot]
    trained = []
    monkeypatch.setattr(study, "check_data", lambda pairs: None)
    published = {plan[0].name: _curve_run("en-de", "relative_glu", 0.1, last=(30.0, 31.0))}
    monkeypatch.setattr(study, "published_curve_runs", lambda stem, jobs: published)
    monkeypatch.setattr(study, "run_jobs",
                        lambda stage, slots, runner: [trained.append(j.name) for slot in slots for j in slot])
    study.curves()
    assert trained == [plan[1].name, plan[2].name]  # the first is published: the next two in order
    out = json.loads((tmp_path / "results" / "mt_token_mixers_curves.json").read_text())
    assert [r["run"] for r in out["runs"]] == [f"token_mixers_curves/{plan[0].name}"]
    assert out["settings"]["not_finished"] == [j.name for j in plan[1:]]
    for bad in (["--max-runs", "0"], ["--max-runs", "1", "--report-only"]):
        with pytest.raises(SystemExit):
            parse_args(argv[:-2] + bad)
    # the page's command reproduces the results: without --max-runs (what trains in this call)
    assert "--max-runs" not in out["settings"]["command"]
    expected = shlex.join(["python", "-m", "benchmarks.mt_token_mixers", *argv[:-2]])
    assert parse_args(argv).command == parse_args([*argv[:-2], "--report-only"]).command == expected


def test_curves_choose_each_dropout_by_valid_never_test_and_compare_like_with_like():
    runs = [
        # relative_glu: 0.1 plateaued (averaged valid 30.0, best test); 0.3 still rising (last valid 30.5)
        _curve_run("en-de", "relative_glu", 0.1, last=(30.5, 29.5), averaged=(31.0, 30.0)),
        _curve_run("en-de", "relative_glu", 0.3, last=(29.0, 30.5)),
        # the Transformer: 0.3 has the better test but the worse valid
        _curve_run("en-de", "transformer", 0.1, last=(32.5, 30.8), averaged=(33.0, 31.0)),
        _curve_run("en-de", "transformer", 0.3, last=(33.5, 30.7), averaged=(34.0, 30.9)),
        # the paper's: equal valid at 0.2 and 0.1 (listed first): the lower dropout
        _curve_run("en-de", "paper", 0.2, last=(27.5, 27.0), averaged=(28.0, 27.5)),
        _curve_run("en-de", "paper", 0.1, last=(26.5, 27.0), averaged=(27.0, 27.5)),
        _curve_run("en-fr", "paper", 0.1, last=(40.0, 41.0)),  # no Transformer finished: no difference
    ]
    summary = curves_summary(runs)
    chosen = summary["chosen"]
    assert {v: c["dropout"] for v, c in chosen["en-de"].items()} == {"relative_glu": 0.3, "transformer": 0.1,
                                                                     "paper": 0.1}
    assert chosen["en-de"]["relative_glu"] == {"dropout": 0.3, "model": "last", "valid": 30.5, "test": 29.0,
                                               "dropouts_finished": [0.1, 0.3]}
    assert chosen["en-de"]["transformer"]["model"] == "averaged" and chosen["en-de"]["transformer"]["test"] == 33.0
    assert chosen["en-fr"] == {"paper": {"dropout": 0.1, "model": "last", "valid": 41.0, "test": 40.0,
                                         "dropouts_finished": [0.1]}}
    diffs = summary["differences"]
    assert set(diffs) == {"en-de"}
    # a run still rising against one that plateaued: the last checkpoints of both
    assert diffs["en-de"]["relative_glu"] == {"dropout": 0.3, "transformer_dropout": 0.1, "model": "last",
                                              "test": -3.5, "valid": -0.3}
    # both plateaued: the averages
    assert diffs["en-de"]["paper"] == {"dropout": 0.1, "transformer_dropout": 0.1, "model": "averaged",
                                       "test": -6.0, "valid": -3.5}
    settings = {"pairs": ["en-de", "en-fr"], "variants": ["paper", "relative_glu", "transformer"],
                "dropouts": [0.1, 0.2, 0.3], "seed": 1, "method": "segments", "average_last": 5,
                "resmlp_recipe": {"lr": 4e-3, "warmup": 300, "layerscale_init": 0.5},
                "transformer_recipe": {"lr": 2e-3, "warmup": 300, "norm": "pre"}, "command": "python -m x",
                "planned": ["a"] * 18, "not_finished": ["en-fr.transformer.dropout0.1"], "plot": "p.png"}
    text = curves_markdown({"settings": settings, "machine": {}, "runs": runs, **summary})
    assert "| relative_glu − Transformer | 0.3 / 0.1 | last checkpoint of both | **-3.50** | **-0.30** |" in text
    assert ("| paper − Transformer | 0.1 / 0.1 | average of the last checkpoints of both | **-6.00** | **-3.50** |"
            in text)
    assert "| relative_glu | **0.3** | training-minutes budget (150 min) reached |" in text
    assert ("| transformer | 0.3 | early stop | 3000 | 60.0 | 30.70 (@ 3000) | average of last 5 | 34.00 | 30.90 |"
            in text)
    assert "Not finished yet (1 of 18 runs" in text and "## en-fr" in text


def test_patience_trains_new_runs_named_with_it_that_start_from_the_rules_runs(tmp_path, monkeypatch):
    """--patience 6: the same plan with early stopping after 6 evaluations, in runs whose names end
    in .patience6; each not started yet is first copied from the same run with the rule's patience
    (3) when that one exists, so that it goes on from where that one stopped. The default keeps the
    published names; the page records the patience."""
    argv = ["--stage", "curves", "--pairs", "en-fr", "--curve-variants", "relative_glu", "--dropouts", "0.2",
            "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results")]
    rule = [job for slot in TokenMixerStudy(parse_args(argv)).curve_plan() for _, _, job in slot]
    study = TokenMixerStudy(parse_args([*argv, "--patience", "6", "--output", "patient"]))
    patient = [job for slot in study.curve_plan() for _, _, job in slot]
    assert [j.name for j in patient] == [f"{j.name}.patience6" for j in rule]
    assert {j.patience for j in patient} == {6} and {j.patience for j in rule} == {3}
    assert patient[0].label.endswith("dropout 0.2 patience 6")
    shorter = study.run_dir(rule[0])  # the rule's run of the first system, stopped after 2 segments
    shorter.mkdir(parents=True)
    points = [{"updates": 250 * (i + 1), "train_minutes": 4.0 * (i + 1), "valid_bleu": 10.0 + i,
               "checkpoint": f"curve_{250 * (i + 1):07d}.pt"} for i in range(2)]
    (shorter / "progress.json").write_text(json.dumps({"spec": study.spec(rule[0]), "points": points}))
    for name in ("checkpoint_last.pt", "curve_0000250.pt", "curve_0000500.pt"):
        (shorter / name).write_text(name)
    monkeypatch.setattr(study, "check_data", lambda pairs: None)
    trained = []
    monkeypatch.setattr(study, "run_jobs",
                        lambda stage, slots, runner: [trained.append(j.name) for slot in slots for j in slot])
    out = study.curves()
    assert trained == [j.name for j in patient]
    assert out["settings"]["patience"] == 6 and "after 6 evaluations" in out["settings"]["method"]
    continued = json.loads((study.run_dir(patient[0]) / "progress.json").read_text())
    assert continued["points"] == points and (study.run_dir(patient[0]) / "curve_0000500.pt").is_file()
    assert not study.run_dir(patient[1]).exists()  # no run of the Transformer to start from
    # the page says where the unfinished run stands: the copied run, before it goes on
    assert out["settings"]["in_progress"] == [{
        "run": patient[0].name, "variant": "relative_glu", "dropout": 0.2, "pair": "en-fr", "updates": 500,
        "train_minutes": 8.0, "best_valid": 11.0, "best_updates": 500, "last_valid": 11.0, "since_best": 0,
        "evaluated": None}]
    text = (tmp_path / "results" / "patient_curves.md").read_text()
    assert f"| {patient[0].name} | 500 | 8.0 | 11.00 (@ 500) | 11.00 | 0 | - |" in text
    for bad in ([*argv, "--patience", "0"], ["--stage", "race", "--patience", "6"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_a_plan_that_would_drop_runs_from_its_page_is_refused_before_training(tmp_path, monkeypatch):
    """A curves page reporting dropouts 0.1 and 0.2 is not rewritten by a plan of dropout 0.2 alone
    (that would drop the 0.1 runs from it): refused before anything trains, naming the runs and the
    flags; the whole plan, or another --output, goes ahead."""
    argv = ["--stage", "curves", "--pairs", "en-de", "--curve-variants", "relative_glu",
            "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results"), "--output", "page"]
    whole = TokenMixerStudy(parse_args([*argv, "--dropouts", "0.1", "0.2"]))
    runs = [{"run": job.key} for slot in whole.curve_plan() for _, _, job in slot]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "page_curves.json").write_text(json.dumps({"runs": runs}))
    trained = []
    for refused, argv_ in ((True, [*argv, "--dropouts", "0.2"]), (False, [*argv, "--dropouts", "0.1", "0.2"]),
                           (False, [*argv[:-1], "other", "--dropouts", "0.2"])):
        study = TokenMixerStudy(parse_args(argv_))
        monkeypatch.setattr(study, "check_data", lambda pairs: None)
        monkeypatch.setattr(study, "published_curve_runs", lambda stem, jobs: {})
        monkeypatch.setattr(study, "run_jobs",
                            lambda stage, slots, runner: [trained.append(j.name) for slot in slots for j in slot])
        if refused:
            with pytest.raises(SystemExit, match=r"--output page: .*page_curves.json reports 2 run\(s\) this plan "
                                                 r"leaves out \(en-de.relative_glu.dropout0.1, "
                                                 r"en-de.transformer.dropout0.1\).*--train-only or --max-runs"):
                study.curves()
            assert trained == []
            assert json.loads((tmp_path / "results" / "page_curves.json").read_text()) == {"runs": runs}
        else:
            study.curves()
    assert len(trained) == 4 + 2  # the whole plan, then the other page's
