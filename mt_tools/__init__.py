"""Translation tools that fairseq never loads: data preparation (:mod:`mt_tools.corpus`, into the
folder layout of :mod:`mt_tools.layout`), evaluation with fairseq-generate and sacreBLEU
(:mod:`mt_tools.evaluate`) and the races' recipes (:mod:`mt_tools.recipes`). The studies that
run them live in the ``benchmarks`` package.

The model itself is the fairseq plugin :mod:`resmlp_mt`, a layer below: these modules run it
through fairseq's command-line tools (checkpoint averaging imports it, for weights-only loading),
and the plugin never imports them (``tests/test_import_graph.py``).
"""
