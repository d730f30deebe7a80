#!/usr/bin/env python
"""engine='onnx' (our search in Python, the decoder step in ONNX Runtime) against 'onnx-search'
(ONNX Runtime's BeamSearch operator), int8, 1 thread, interleaved rounds, on a trained checkpoint:

    python scripts/compare_onnx_search_speed.py CHECKPOINT SOURCES_FILE   # e.g. data-bin/multi30k.en-de/ref/test.en

Sentences/s at batch 1 (the first 100 lines) and batch 128 (the first 1000), and how many
translations the two engines share. Run it alone on the machine."""
import sys
import tempfile
import time
import warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, ".")
import torch
torch.set_num_threads(1)
from pathlib import Path
from benchmarks.bench_decode import load_module
export_model = load_module("export_model", Path("scripts/export_model.py"))
ckpt = Path(sys.argv[1]); data = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("data-bin/multi30k.en-de")
folder = Path(tempfile.mkdtemp()) / "model"
if not folder.exists():
    export_model.export(ckpt, data, folder, force=True)
from resmlp_mt import ResMLPTranslationModel
m = ResMLPTranslationModel.from_pretrained(str(folder)).quantize()
src = [l.strip() for l in open(sys.argv[2])]
b1, b128 = src[:100], src[:1000]
for e in ("onnx", "onnx-search"):
    m.translate(b1[:5], engine=e, batch_size=1)
res = {}
for rnd in range(2):
    for e in ("onnx", "onnx-search"):
        t = time.perf_counter(); out1 = m.translate(b1, engine=e, batch_size=1); d1 = time.perf_counter() - t
        t = time.perf_counter(); out128 = m.translate(b128, engine=e, batch_size=128); d128 = time.perf_counter() - t
        res.setdefault(e, []).append((len(b1) / d1, len(b128) / d128, out1, out128))
        print(rnd, e, f"b1 {len(b1)/d1:.1f} sent/s  b128 {len(b128)/d128:.1f} sent/s", flush=True)
a, b = res["onnx"][-1], res["onnx-search"][-1]
print("same b1 translations", sum(x == y for x, y in zip(a[2], b[2])), "/", len(a[2]),
      " same b128", sum(x == y for x, y in zip(a[3], b[3])), "/", len(a[3]))
