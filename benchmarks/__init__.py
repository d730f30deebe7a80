"""The project's studies: one module per study, each writing one results file
(``results/<study>.{json,md}``) and runnable as ``python -m benchmarks.<study>`` from the repo root
(``benchmarks.gpu_race``: ResMLP against the Transformer on one GPU for equal GPU minutes). What
several studies share lives in :mod:`benchmarks.harness` (processes bound by deadlines, the
machine's measured slowdown for the CPU rehearsals, the Multi30k data, the machine's
description); the models, data tools and scorers they run are those of ``resmlp_mt``,
``mt_tools`` and ``vision``, imported, never copied. The older studies still live in
``scripts/`` and move here one at a time.
"""
