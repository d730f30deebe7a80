"""What this plugin changes in fairseq 0.12, in one place; :func:`install` puts every patch in
place (idempotent) and is called once by ``import resmlp_mt``, which ``--user-dir resmlp_mt``
does before any checkpoint or input is read. The model files register the model and nothing else.

==========================  ==========================================  ==========================================
patch                       replaces (fairseq)                          why
==========================  ==========================================  ==========================================
safe loading                ``torch.serialization``'s allow-list        torch >= 2.6 loads weights only; fairseq
                            (:data:`FAIRSEQ_CHECKPOINT_GLOBALS`)        checkpoints hold an ``argparse.Namespace``
checkpoint configuration    ``checkpoint_utils.load_checkpoint_to_cpu``  a configuration string fairseq later
check                       (:mod:`.checkpoints`)                       ``eval``s could run code: refused, naming
                                                                        the file and option; non-fairseq files
                                                                        named as such
eval guard                  ``utils.eval_str_list``, ``eval_str_dict``, literals only, within size and depth limits,
                            ``eval_bool`` (also in ``options``)          whoever calls them
atomic checkpoint copies    ``checkpoint_utils.PathManager.copy``       a kill during fairseq's ``shutil`` copy
                                                                        left a torn ``checkpoint_last.pt``
restarts                    ``checkpoint_utils.load_checkpoint``        stale temporaries removed, an unreadable
                                                                        or older last checkpoint replaced, a
                                                                        finished run not trained again
interactive input           ``fairseq_cli.interactive.buffered_read``,  one bad line (not UTF-8, too long, empty)
                            ``make_batches``                            ended or spoiled a whole session
                            (:mod:`.interactive_input`)
prefetch thread stopped     ``data.iterators.BufferedIterator``'s       a run stopping mid-epoch (``--max-update``)
at exit                     daemon thread (:mod:`.prefetch_threads`)    could abort at exit (SIGABRT, status 134)
                                                                        after saving: the thread was still in a
                                                                        torch operator at finalisation
NaN report after a          ``nan_detector.NanDetector.add_hooks``      its backward hook on an encoder (a dict
diverged update             (:mod:`.nan_detector`)                      output) crashed the report: the log of a
                                                                        diverged training ended in a torch
                                                                        ``StopIteration``
root logger left alone      the import-time ``logging.basicConfig`` of  a program importing the plugin first (the
                            ``tasks/text_to_speech.py``,                Python API, the project's tools) had its
                            ``frm_text_to_speech.py`` and (at DEBUG)    root logger set to DEBUG: every library's
                            ``models/wav2vec/wav2vec2_classification``  debug messages on stderr
==========================  ==========================================  ==========================================

Each replacement's docstring names the function it wraps; tests: ``tests/test_drills_checkpoints.py``,
``tests/test_drills_interactive.py``, ``tests/test_drills_prefetch.py``, ``tests/test_drills_nan.py``.
"""

from __future__ import annotations

import argparse
import logging

import torch

from . import checkpoints, interactive_input, nan_detector, prefetch_threads

# The class is registered twice on purpose: scoped allow-lists such as timm's checkpoint loader
# (`with torch.serialization.safe_globals([argparse.Namespace])`) remove the plain entry when
# they exit, which would silently revoke ours in a process that also loads a timm checkpoint.
# The (class, "module.name") entry is a distinct element of torch's allow-list that such a
# context does not remove.
FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace, (argparse.Namespace, "argparse.Namespace")]


def import_fairseq_leaving_the_root_logger() -> None:
    """Import fairseq's model and task registries and put the root logger's level and handlers back
    as they were: fairseq 0.12 calls ``logging.basicConfig`` when they are imported (at DEBUG in
    ``wav2vec2_classification``), which configures the logging of whatever program imported it. A
    fairseq command line (``fairseq-train``) has imported them before the plugin, so nothing changes
    there."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    placeholder = logging.NullHandler()  # a configured root makes every basicConfig a no-op
    root.addHandler(placeholder)
    try:
        import fairseq.models  # noqa: F401
        import fairseq.tasks  # noqa: F401
    finally:
        root.setLevel(level)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)


def install() -> None:
    """Every patch of the table above (idempotent)."""
    import_fairseq_leaving_the_root_logger()
    torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)
    checkpoints.install()
    interactive_input.install()
    prefetch_threads.install()
    nan_detector.install()


__all__ = ["FAIRSEQ_CHECKPOINT_GLOBALS", "checkpoints", "install", "interactive_input", "nan_detector",
           "prefetch_threads"]
