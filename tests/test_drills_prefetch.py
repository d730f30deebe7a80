"""Drill: a process that stops reading fairseq's prefetched batches before the epoch ends (as
``fairseq-train --max-update`` does) exits cleanly. Without the plugin, fairseq's daemon
prefetching thread is still inside a torch operator at finalisation, and the process aborts
(``terminate called without an active exception``, status 134) after it has finished.

The script below keeps the thread busy in a torch operator and exits after one batch; an
:mod:`atexit` hook registered before the plugin's (so it runs after it) prints whether the thread
is still alive at the point where finalisation begins.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from helpers import run

SCRIPT = textwrap.dedent("""
    import atexit, sys
    import torch
    from fairseq.data.iterators import BufferedIterator

    iterators = []
    atexit.register(lambda: print("prefetch thread alive at finalisation:",
                                  any(it._consumer.is_alive() for it in iterators), flush=True))
    if sys.argv[1] == "plugin":
        import resmlp_mt  # noqa: F401  (what --user-dir resmlp_mt does)
    torch.set_num_threads(1)

    class Batches:
        def __len__(self):
            return 10**9

        def __iter__(self):
            yield torch.zeros(1)
            a, b = torch.randn(150, 150), torch.empty(150, 150)
            while True:
                torch.mm(a, a, out=b)  # the thread spends its time in C++, without the GIL
                yield b

    iterators.append(BufferedIterator(10**6, Batches()))  # room enough: the thread never waits
    next(iterators[0])
    print("read one batch", flush=True)
""")


@pytest.mark.slow
def test_a_run_that_stops_mid_epoch_exits_cleanly_with_the_plugin(tmp_path):
    script = tmp_path / "stop_mid_epoch.py"
    script.write_text(SCRIPT)

    without = run([sys.executable, script, "fairseq"], check=False)
    assert "read one batch" in without.stdout, without.stderr[-2000:]
    assert "prefetch thread alive at finalisation: True" in without.stdout, without.stdout  # the hazard is real

    with_plugin = run([sys.executable, script, "plugin"], check=False)
    assert with_plugin.returncode == 0, with_plugin.stderr[-2000:]
    assert "prefetch thread alive at finalisation: False" in with_plugin.stdout, with_plugin.stdout
