"""The project's studies: one module per study, each writing one results file
(``results/<study>.{json,md}``) and runnable as ``python -m benchmarks.<study>`` from the repo root
(``benchmarks.gpu_race``: ResMLP against the Transformer on one GPU for equal GPU minutes). What
several studies share lives in :mod:`benchmarks.harness` (processes bound by deadlines, the
machine's measured slowdown for the CPU rehearsals, the Multi30k data, the machine's
description); what every study shares lives in :mod:`benchmarks.common` (the machine's
description, results files with repository-relative paths), the fairseq runs of the translation
studies in :mod:`benchmarks.fairseq_runs`. The models, data tools and scorers they run are those
of ``resmlp_mt``, ``mt_tools`` and ``vision``, imported, never copied; none of those packages
imports this one. ``scripts/`` holds only what a user runs to prepare data, train, evaluate and
export.
"""
