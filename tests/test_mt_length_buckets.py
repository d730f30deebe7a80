"""benchmarks.mt_length_buckets: buckets by source length, per-bucket sacreBLEU and paired
bootstrap differences (on given hypotheses: no model needed)."""

from __future__ import annotations

import pytest

from benchmarks.mt_length_buckets import bucket_labels, bucket_of, bucket_table, markdown

SOURCES = ["a b", "a b c d e", "one two three four five six seven", "x y z"] * 5
REFERENCES = ["der Hund läuft über die Wiese", "ein Mann fährt Rad im Park", "zwei Kinder spielen im Sand am Meer",
              "eine Frau singt ein schönes Lied"] * 5


def test_buckets_cover_every_length_once():
    assert bucket_labels([3, 6]) == ["<= 3", "4-6", ">= 7"]
    assert [bucket_of(n, [3, 6]) for n in (1, 3, 4, 6, 7, 40)] == [0, 0, 1, 1, 2, 2]


def test_a_model_equal_to_the_baseline_differs_by_zero_and_a_worse_one_below_zero():
    worse = [r.split()[0] + " falsch" for r in REFERENCES]  # one word right
    rows = bucket_table({"same": list(REFERENCES), "worse": worse, "base": list(REFERENCES)}, REFERENCES, SOURCES,
                        [3, 6], "base", resamples=50)
    assert [r["bucket"] for r in rows] == ["<= 3", "4-6", ">= 7", "all"]
    assert [r["sentences"] for r in rows] == [10, 5, 5, 20]
    for row in rows:
        m = row["models"]
        assert m["base"]["sacrebleu"] == pytest.approx(100.0) and "difference" not in m["base"]
        assert m["same"]["difference"] == 0 and m["same"]["interval95"] == [0, 0]
        lo, hi = m["worse"]["interval95"]
        assert m["worse"]["difference"] < -50 and lo <= m["worse"]["difference"] <= hi < 0
        assert m["worse"]["length_ratio"] < 1
    out = {"models": {"same": "a.pt", "worse": "b.pt", "base": "c.pt"}, "baseline": "base", "split": "test",
           "data": "d", "beam": 4, "bootstrap": 50, "command": "python -m benchmarks.mt_length_buckets", "rows": rows,
           "signature": "s"}
    table = markdown(out)
    assert "| all | 20 | 100.00 |" in table and "worse - base (95% interval)" in table
