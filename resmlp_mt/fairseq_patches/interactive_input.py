"""Per-line input handling for ``fairseq-interactive --user-dir resmlp_mt``.

fairseq 0.12's ``fairseq_cli/interactive.py`` reads its input (stdin or ``--input``) as text
and sends whole buffers through the model, so one bad line spoils a session:

* a line that is not valid UTF-8 kills the process and loses every line after it: a
  ``UnicodeDecodeError``, or under a C/C.UTF-8 locale (where stdin decodes with
  ``surrogateescape``) SentencePiece's ``Unable to cast Python instance of type <class 'str'>
  to C++ type`` error;
* an empty (or blank) line is encoded as a lone end-of-sentence and "translated" into
  hallucinated text such as ``m m m ... .``;
* a line longer than the model's maximum source length ends the whole session with
  ``Size of sample #0 is invalid ...`` (or, with ``--skip-invalid-size-inputs-valid-test``,
  disappears without a word).

``main()`` imports the user module (this package) before it reads any input, and it looks up
the module-level functions ``buffered_read`` and ``make_batches`` when it calls them. So
:func:`install` (called by :func:`resmlp_mt.fairseq_patches.install`) swaps in hardened versions of those two
functions, and only when ``fairseq_cli.interactive`` is the running script:

* ``buffered_read`` reads bytes and decodes every line strictly as UTF-8 on its own; a line that
  does not decode is kept as a marker, so ids stay equal to ``input line number - 1``;
* ``make_batches`` reports each bad line on stderr (``input line N (id N-1): ...``) and leaves it
  out: undecodable lines, lines that fail to encode, lines longer than the limit (naming
  ``--max-source-positions``) or than ``--max-tokens``. The session goes on with the next line.
  Empty lines are answered with an empty translation (``S-``/``H-``/``D-``/``P-`` lines with
  empty text, score 0) without running the model, so a script that reads the output by id
  stays aligned with its input.

Good lines go through fairseq's own ``make_batches``, so their output is unchanged.
"""

from __future__ import annotations

import logging
import sys

import torch

logger = logging.getLogger(__name__)

_TARGET_MODULE = "fairseq_cli.interactive"
_MARK = "_resmlp_input_hardened"


class _InputBuffer(list):
    """A buffer of input lines that knows the (1-based) number of its first line."""

    def __init__(self, lines, first_line):
        super().__init__(lines)
        self.first_line = first_line


class _BadLine(str):
    """Stands in for an input line that could not be read; ``reason`` says why."""

    def __new__(cls, reason):
        obj = super().__new__(cls, "")
        obj.reason = reason
        return obj


def _decode(raw) -> str:
    """One input line (bytes or str) as stripped text, or a ``_BadLine`` saying what is wrong."""
    if isinstance(raw, str):
        try:  # a text stream decoded with surrogateescape lets bad bytes through as surrogates
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raw = raw.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        return _BadLine(f"not valid UTF-8 ({e.reason}: byte 0x{e.object[e.start]:02x} at byte offset {e.start})")


def buffered_read(input, buffer_size):
    """fairseq's ``buffered_read``, reading bytes and decoding each line on its own."""
    stream = None
    if input == "-":
        source = getattr(sys.stdin, "buffer", sys.stdin)
    else:
        source = stream = open(input, "rb")
    try:
        buffer, first_line = [], 1
        for number, raw in enumerate(source, start=1):
            buffer.append(_decode(raw))
            if len(buffer) >= buffer_size:
                yield _InputBuffer(buffer, first_line)
                buffer, first_line = [], number + 1
        if buffer:
            yield _InputBuffer(buffer, first_line)
    finally:
        if stream is not None:
            stream.close()


def _source_limit(max_positions):
    if isinstance(max_positions, (tuple, list)) and max_positions:
        max_positions = max_positions[0]
    return max_positions if isinstance(max_positions, int) else None


def _empty_hypothesis():
    return {
        "tokens": torch.zeros(0, dtype=torch.long),
        "score": 0.0,
        "attention": None,
        "alignment": torch.zeros(0, dtype=torch.long),
        "positional_scores": torch.zeros(0),
    }


def _answer_empty_lines(task):
    """Make ``task.inference_step`` answer a batch of empty lines (all source lengths 0, which
    no encoded line has: it always ends with </s>) with empty hypotheses, without the model."""
    if getattr(task, _MARK, False):
        return
    original = task.inference_step

    def inference_step(generator, models, sample, *args, **kwargs):
        lengths = sample.get("net_input", {}).get("src_lengths") if isinstance(sample, dict) else None
        if torch.is_tensor(lengths) and lengths.numel() > 0 and not lengths.any():
            return [[_empty_hypothesis()] for _ in range(lengths.numel())]
        return original(generator, models, sample, *args, **kwargs)

    task.inference_step = inference_step
    setattr(task, _MARK, True)


def _hardened_make_batches(module, original):
    def make_batches(lines, cfg, task, max_positions, encode_fn):
        first_line = getattr(lines, "first_line", None)
        src_limit = _source_limit(max_positions)
        max_tokens = cfg.dataset.max_tokens
        constraints = cfg.generation.constraints

        def report(i, problem):
            where = f"input line {first_line + i} (id {first_line + i - 1})" if first_line else f"buffer line {i + 1}"
            logger.error("%s: %s; skipped, no translation", where, problem)

        kept, empty = [], []
        for i, line in enumerate(lines):
            if isinstance(line, _BadLine):
                report(i, line.reason)
                continue
            source = line.split("\t", 1)[0] if constraints else line
            if not source.strip():
                empty.append(i)
                continue
            try:
                _, (length,) = task.get_interactive_tokens_and_lengths([source], encode_fn)
            except Exception as e:  # noqa: BLE001 (one line's problem must not end the session)
                report(i, f"could not be encoded ({type(e).__name__}: {e})")
                continue
            if src_limit is not None and length > src_limit:
                report(i, f"too long: {length} tokens (with </s>) but the model takes at most {src_limit} "
                          "source positions (--max-source-positions)")
            elif max_tokens and length > max_tokens:
                report(i, f"too long: {length} tokens (with </s>) but --max-tokens is {max_tokens}")
            else:
                kept.append(i)

        if kept:
            index = torch.tensor(kept, dtype=torch.long)
            for batch in original([lines[i] for i in kept], cfg, task, max_positions, encode_fn):
                yield batch._replace(ids=index[batch.ids])
        if empty:
            _answer_empty_lines(task)
            n = len(empty)
            packed = None
            if constraints:
                from fairseq.token_generation_constraints import pack_constraints

                packed = pack_constraints([[] for _ in range(n)])
            yield module.Batch(
                ids=torch.tensor(empty, dtype=torch.long),
                src_tokens=torch.zeros((n, 0), dtype=torch.long),
                src_lengths=torch.zeros(n, dtype=torch.long),
                constraints=packed,
            )

    return make_batches


def _interactive_modules():
    mods = []
    mod = sys.modules.get(_TARGET_MODULE)
    if mod is not None:
        mods.append(mod)
    main = sys.modules.get("__main__")  # python -m fairseq_cli.interactive
    spec = getattr(main, "__spec__", None)
    if main is not None and main is not mod and getattr(spec, "name", None) == _TARGET_MODULE:
        mods.append(main)
    return mods


def install():
    """Harden ``fairseq_cli.interactive``'s input reading, if that is loaded. Idempotent."""
    for module in _interactive_modules():
        if getattr(module, _MARK, False) or not hasattr(module, "make_batches"):
            continue
        module.make_batches = _hardened_make_batches(module, module.make_batches)
        module.buffered_read = buffered_read
        setattr(module, _MARK, True)
        if not logger.handlers:  # per-line errors go to stderr; stdout carries the translations
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(
                "%(asctime)s | %(levelname)s | %(name)s | %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
            logger.addHandler(handler)
            logger.propagate = False
