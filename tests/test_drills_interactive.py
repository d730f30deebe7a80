"""``fairseq-interactive --user-dir resmlp_mt`` on bad input lines: a line that
is not UTF-8, an empty line and an over-long line each get a per-line answer, and the session goes
on (resmlp_mt/fairseq_patches/interactive_input.py). A real run on a tiny model trained here for 2 updates."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO
from helpers import run, tool, write_corpus

pytestmark = pytest.mark.slow

USER_DIR = str(REPO / "resmlp_mt")
MAX_SOURCE = 64
GOOD_1 = "A man is walking a dog."
GOOD_2 = "Two children play in the park."
TOO_LONG = " ".join(["A man in a blue shirt is walking a big dog in the park."] * 10)  # > 64 pieces


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small corpus written by the test, prepared with our script, and a 1-layer model trained for 2 updates."""
    root = tmp_path_factory.mktemp("interactive")
    raw = write_corpus(root / "raw", sizes={"train": 120, "val": 8, "test_2016_flickr": 8})
    prep = run([sys.executable, "scripts/prepare_multi30k.py", "--raw-dir", raw, "--destdir-root", root / "data-bin",
                "--vocab-size", "200", "--workers", "1"])
    assert prep.returncode == 0, prep.stderr[-3000:]
    data = root / "data-bin" / "multi30k.en-de"
    train = run([tool("fairseq-train"), data, "--user-dir", USER_DIR, "--arch", "resmlp_mt_small",
                 "--encoder-embed-dim", "32", "--encoder-layers", "1", "--decoder-layers", "1",
                 "--decoder-attention-heads", "2", "--share-all-embeddings", "--max-source-positions", MAX_SOURCE,
                 "--max-target-positions", MAX_SOURCE, "--optimizer", "adam", "--lr", "5e-3",
                 "--criterion", "label_smoothed_cross_entropy", "--max-tokens", "1000", "--no-progress-bar",
                 "--num-workers", "0", "--seed", "1", "--save-dir", root / "ckpt", "--max-update", "2",
                 "--disable-validation", "--no-epoch-checkpoints"])
    assert train.returncode == 0, train.stderr[-3000:]
    return {"data": data, "checkpoint": root / "ckpt" / "checkpoint_last.pt"}


def interactive(model, stdin: bytes, *extra):
    result = run([tool("fairseq-interactive"), model["data"], "--user-dir", USER_DIR, "--path", model["checkpoint"],
                  "--beam", "2", "--max-len-b", "5", "--source-lang", "en", "--target-lang", "de",
                  "--bpe", "sentencepiece", "--sentencepiece-model", model["data"] / "spm.model", *extra],
                 input=stdin, check=False, text=False, timeout=300)
    out = result.stdout.decode("utf-8", "replace")
    err = result.stderr.decode("utf-8", "replace")
    hyps = {}
    for line in out.splitlines():
        if line[:2] in ("H-", "D-"):
            tag, _score, text = line.split("\t", 2)
            hyps.setdefault(tag[:1], {})[int(tag[2:])] = text
    return result.returncode, hyps.get("H", {}), hyps.get("D", {}), out + err, err


@pytest.fixture(scope="module")
def mixed(model):
    """good, not UTF-8, empty, too long, good: one session on stdin."""
    stdin = b"\n".join([GOOD_1.encode(), b"A caf\xe9 \xff on the street.", b"", TOO_LONG.encode(), GOOD_2.encode()])
    return interactive(model, stdin + b"\n")


def test_session_goes_on_to_the_last_line_and_exits_0(mixed):
    rc, hyps, detok, log, _ = mixed
    assert rc == 0, log[-3000:]
    assert detok.get(4), "the last line is translated"


def test_good_lines_are_translated_with_ids_of_their_input_lines(mixed):
    _, hyps, detok, log, _ = mixed
    assert sorted(hyps) == [0, 2, 4], log[-3000:]  # no output for the two bad lines, ids stay in step
    assert detok[0] and detok[4] and "▁" not in detok[4]


def test_line_that_is_not_utf8_is_reported_by_line_number(mixed):
    err = mixed[4]
    assert "input line 2 (id 1): not valid UTF-8" in err, err[-3000:]
    assert "Traceback" not in err and "Unable to cast" not in err


def test_empty_line_gives_an_empty_hypothesis(mixed):
    _, hyps, detok, log, _ = mixed
    assert hyps.get(2) == "" and detok.get(2) == "", log[-3000:]


def test_too_long_line_is_reported_naming_max_source_positions(mixed):
    err = mixed[4]
    assert "input line 4 (id 3): too long" in err and f"at most {MAX_SOURCE} source positions" in err, err[-3000:]
    assert "--max-source-positions" in err


def test_empty_line_between_good_lines_is_not_hallucinated(model):
    """On its own (no crash before it): today the model 'translates' an empty line."""
    rc, hyps, detok, log, _ = interactive(model, f"{GOOD_1}\n\n   \n{GOOD_2}\n".encode())
    assert rc == 0, log[-3000:]
    assert sorted(hyps) == [0, 1, 2, 3]
    assert hyps[1] == hyps[2] == "" and detok[1] == detok[2] == ""
    assert detok[0] and detok[3]


def test_input_file_with_buffered_batches_keeps_ids_per_line(model, tmp_path):
    """--input FILE, several lines per buffer and batch: ids still follow the input lines."""
    path = tmp_path / "in.txt"
    path.write_bytes(b"\n".join([GOOD_1.encode(), b"\xfe\xfe", b"", GOOD_2.encode(), TOO_LONG.encode(),
                                 GOOD_1.encode(), b"\xc3"]) + b"\n")
    rc, hyps, detok, log, err = interactive(model, b"", "--input", path, "--buffer-size", "4", "--batch-size", "2")
    assert rc == 0, log[-3000:]
    assert sorted(hyps) == [0, 2, 3, 5] and hyps[2] == ""
    assert detok[0] == detok[5] and detok[3]  # the same sentence, the same translation
    for line in (2, 5, 7):
        assert f"input line {line} (id {line - 1}):" in err, err[-3000:]


def test_install_is_idempotent_and_only_touches_a_loaded_interactive():
    code = (
        "import sys, resmlp_mt\n"
        "assert 'fairseq_cli.interactive' not in sys.modules\n"
        "import fairseq_cli.interactive as fi\n"
        "from resmlp_mt.fairseq_patches import interactive_input as ii\n"
        "original = fi.make_batches\n"
        "ii.install(); hardened = fi.make_batches\n"
        "ii.install()\n"
        "assert hardened is not original and fi.make_batches is hardened and fi.buffered_read is ii.buffered_read\n"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr.decode()[-3000:]
