"""fairseq's NaN report after a diverged update, made to run instead of crashing.

When an update's gradients are not finite, fairseq 0.12's trainer saves ``crash.pt``, runs the
update again inside ``fairseq.nan_detector.NanDetector`` (hooks on every module that log the first
module whose output or gradient is NaN or Inf) and raises ``FloatingPointError: gradients are
Nan/Inf``. ``NanDetector`` puts a backward hook of the old kind (``register_backward_hook``) on
every module; for such a hook torch looks for a tensor in the module's output, and the output of
a fairseq encoder (this plugin's and fairseq's Transformer's alike) is a dict of lists, in which
it finds none: the rerun stops with ``StopIteration`` inside torch, the report is never written,
and the log of the diverged training ends with a torch traceback instead of the
``FloatingPointError``. (Seen in a distillation student at lr 4e-3 whose loss jumped to 1e8.)

:func:`install` makes ``NanDetector`` leave out the backward hook of modules whose outputs are
dicts, the encoders (``FairseqEncoder``); their forward hooks stay, and so do both hooks of every
module inside them, so the report still names the first module with a NaN or Inf.
"""

from __future__ import annotations

import functools

_MARK = "_resmlp_skips_dict_outputs"


def install() -> None:
    """Patch ``NanDetector.add_hooks`` (idempotent)."""
    from fairseq.models import FairseqEncoder
    from fairseq.nan_detector import NanDetector

    original = NanDetector.add_hooks
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)  # (``__wrapped__``: fairseq's own)
    def add_hooks(self, module):
        if not (self.backward and isinstance(module, FairseqEncoder)):
            return original(self, module)
        self.backward = False  # this module's forward hook only
        try:
            return original(self, module)
        finally:
            self.backward = True

    setattr(add_hooks, _MARK, True)
    NanDetector.add_hooks = add_hooks
