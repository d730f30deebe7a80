"""The WMT14 recipe, offline, on a small corpus written by the test (helpers.write_corpus) laid out
like the unpacked WMT14 archives: preparation (corpora concatenated, newstest2013 valid, newstest2014 from SGM,
length/ratio cleaning), the paper's training script and the evaluation script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import resmlp_mt  # noqa: F401  (weights-only loading of fairseq checkpoints)
from helpers import run, write_corpus

pytestmark = pytest.mark.slow

CORPORA = {
    "en-de": ["training/europarl-v7.de-en", "commoncrawl.de-en", "training/news-commentary-v12.de-en"],
    "en-fr": ["training/europarl-v7.fr-en", "commoncrawl.fr-en", "un/undoc.2000.fr-en",
              "training/news-commentary-v9.fr-en", "giga-fren.release2.fixed"],
}


def write(path: Path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def sgm(lines, setid, lang, kind):
    doc = [f'<{kind}set setid="{setid}" srclang="any" trglang="{lang}">',
           '<doc sysid="ref" docid="d1" genre="news" origlang="en">']
    doc += [f'<seg id="{i + 1}">{line}</seg>' for i, line in enumerate(lines)]
    return doc + ["</doc>", f"</{kind}set>"]


def fake_wmt14(root: Path, pair: str):
    """A written Multi30k-style corpus in the WMT14 file layout: train split over the pair's
    corpora, val as newstest2013, test as newstest2014 SGM (with a typographic apostrophe)."""
    src, tgt = pair.split("-")
    multi30k = write_corpus(root.parent / "written", sizes={"train": 600, "val": 20, "test_2016_flickr": 15},
                            langs=(src, tgt))
    lines = {lang: (multi30k / f"train.{lang}").read_text(encoding="utf-8").splitlines()[:600] for lang in (src, tgt)}
    # 300 pairs well inside clean-corpus-n's limits, so that only the two below are removed
    keep = [i for i in range(600) if max(len(lines[src][i].split()), len(lines[tgt][i].split()))
            <= 1.3 * min(len(lines[src][i].split()), len(lines[tgt][i].split()))][:300]
    train = {lang: [lines[lang][i] for i in keep] for lang in (src, tgt)}
    # one over-long pair and one with a bad length ratio, for clean-corpus-n
    train[src][7] = " ".join(["word"] * 260)
    train[tgt][7] = " ".join(["Wort"] * 260)
    train[src][8] = "Hi."
    train[tgt][8] = "Dies ist ein viel zu langer Satz für eine so kurze Quelle ."
    parts = len(CORPORA[pair])
    for i, corpus in enumerate(CORPORA[pair]):
        for lang in (src, tgt):
            write(root / f"{corpus}.{lang}", train[lang][i::parts])
    for lang in (src, tgt):
        write(root / "dev" / f"newstest2013.{lang}",
              (multi30k / f"val.{lang}").read_text(encoding="utf-8").splitlines()[:20])
    test = {lang: (multi30k / f"test_2016_flickr.{lang}").read_text(encoding="utf-8").splitlines()[:15]
            for lang in (src, tgt)}
    test[tgt][0] = test[tgt][0].rstrip(".") + " \u2019s."
    code = f"{tgt}{src}"
    write(root / "test-full" / f"newstest2014-{code}-src.{src}.sgm", sgm(test[src], f"newstest2014-{code}", src, "src"))
    write(root / "test-full" / f"newstest2014-{code}-ref.{tgt}.sgm", sgm(test[tgt], f"newstest2014-{code}", tgt, "ref"))
    return test


@pytest.mark.parametrize("pair", ["en-de", "en-fr"])
def test_prepare_wmt14_from_a_local_copy(tmp_path, pair):
    raw = tmp_path / "wmt14"
    test = fake_wmt14(raw, pair)
    dest = tmp_path / f"wmt14.{pair}"
    result = run([sys.executable, "scripts/prepare_wmt14.py", "--pair", pair, "--raw-dir", raw,
                  "--destdir", dest, "--vocab-size", "300", "--workers", "1"])
    info = json.loads((dest / "prep.json").read_text())
    train = info["splits"]["train"]
    assert [Path(a).name for a, _ in train["files"]] == [Path(c).name + f".{pair[:2]}" for c in CORPORA[pair]]
    assert train["dropped_clean"] == 2 and train["kept"] == 298
    assert info["splits"]["valid"]["kept"] == 20 and info["splits"]["test"]["kept"] == 15
    tgt = pair[3:]
    refs = (dest / "ref" / f"test.{tgt}").read_text(encoding="utf-8").splitlines()
    assert refs[1:] == test[tgt][1:]
    assert refs[0].endswith(" 's."), "typographic apostrophes become ' as in fairseq's scripts"
    assert "2 pairs longer than 250 words or with a length ratio above 1.5" in result.stdout


def test_paper_recipe_scripts_train_and_evaluate_on_the_slice(tmp_path):
    raw = tmp_path / "wmt14"
    fake_wmt14(raw, "en-de")
    data = tmp_path / "data-bin" / "wmt14.en-de"
    run([sys.executable, "scripts/prepare_wmt14.py", "--pair", "en-de", "--raw-dir", raw,
         "--destdir", data, "--vocab-size", "300", "--workers", "1"])
    save = tmp_path / "ckpt"
    tiny = ["--encoder-embed-dim", "32", "--encoder-layers", "1", "--decoder-layers", "1",
            "--decoder-attention-heads", "2", "--max-update", "3", "--max-tokens", "800",
            "--save-interval-updates", "1", "--warmup-updates", "2", "--num-workers", "0"]
    env = {"DATA": str(data), "SAVE_DIR": str(save),
           "FAIRSEQ_TRAIN": str(Path(sys.executable).parent / "fairseq-train")}
    result = run(["scripts/train_wmt14.sh", "en-de", *tiny], env=env)
    # fairseq keeps the legacy command-line configuration as one Namespace
    args = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=True)["cfg"]["model"]
    assert (args.optimizer, args.lr, args.label_smoothing) == ("adagrad", [0.2], 0.1)
    assert args.warmup_updates == 2  # 32000 unless overridden, as here
    assert (args.arch, args.dropout, args.layerscale_init, args.share_all_embeddings) == ("resmlp_mt", 0.15, 0.2, True)
    assert (args.encoder_embed_dim, args.decoder_layers) == (32, 1)  # the extra flags override
    # without the override, the script trains with the paper's 32k warm-up updates
    command = run(["scripts/train_wmt14.sh", "en-de"], env={**env, "FAIRSEQ_TRAIN": "/bin/echo"}).stdout.split()
    assert command[command.index("--warmup-updates") + 1] == "32000"
    assert sorted(p.name for p in save.glob("checkpoint_*_*.pt")) == ["checkpoint_1_1.pt", "checkpoint_1_2.pt",
                                                                      "checkpoint_1_3.pt"]
    result = run(["scripts/evaluate_wmt14.sh", "en-de", save],
                 env={"AVERAGE_LAST": "2", "PY": sys.executable, "DATA": str(data)})
    assert "tokenized BLEU, compound split" in result.stdout
    scores = json.loads((save / "eval_test.json").read_text())
    assert scores["results"]["test"]["sentences"] == 15
    assert "checkpoint_avg_last2.pt" in scores["checkpoint"]


def test_unknown_pair_is_refused():
    result = run(["scripts/train_wmt14.sh", "en-xx"], check=False)
    assert result.returncode == 2 and "unknown pair 'en-xx'" in result.stderr
