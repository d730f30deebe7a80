"""A lexical shortlist of the target vocabulary: which target tokens a batch's decoder steps score.

At every decoder step a translation model scores the whole target vocabulary ``V``, although a
sentence's translation uses a few hundred of its tokens. With a vocabulary map, each batch scores
only the union of the candidates of its source tokens plus a set of tokens that are always
candidates (the frequent ones), as the CPU students of the WMT efficiency task and Bergamot's
translators do (Marian's lexical shortlists) and as CTranslate2 does with ``use_vmap``. The
output projection, the log-normaliser and the top-k then run over ``M`` tokens instead of ``V``.
The log-probabilities are normalised over the ``M`` candidates, so a map changes the
translations: its quality cost is measured, not assumed (``benchmarks/bench_decode.py
--vocabulary-map``).

The file is CTranslate2's vocabulary map (``vmap``), so the same file restricts a Transformer in
CTranslate2 (``ct2-fairseq-converter --vocab_mapping``, ``translate_batch(use_vmap=True)``)::

    <TAB>tgt_1 tgt_2 ...              # empty source: always candidates
    src_piece<TAB>tgt_1 tgt_2 ...     # the candidates of one source piece

Pieces are SentencePiece pieces as in the dictionaries. CTranslate2 also reads rules for
source n-grams (``src_1 src_2<TAB>...``); :class:`VocabularyMap` takes unigram rules only and
refuses the others with the file and line. End-of-sentence and unknown are always candidates.

:func:`build_vocabulary_map` learns a map from a parallel corpus (token ids): each target token
is scored for a source token by ``p(t | s) = count(s, t) / count(s)``, the share of the pairs whose
source has ``s`` that have ``t`` in their target (each counted once per pair); the ``per_source``
best that are not already always candidates, seen together at least ``min_count`` times, are
``s``'s candidates; the ``frequent`` most frequent target tokens are always candidates.
``python -m mt_tools.vocabulary_map`` builds one from a prepared data folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from resmlp_core.io import write_text_atomic


class VocabularyMapError(ValueError):
    """A vocabulary map file that cannot be read (its path and line in the message)."""


class VocabularyMap:
    """The candidates of each source token, as target token ids of one model's dictionaries.

    ``always`` ``(A,)``: target ids that are always candidates (end-of-sentence and unknown
    included); ``rules``: source id -> its candidate target ids; ``target_size``: the size of the
    target dictionary the ids belong to; ``source``: the file it was read from, if any.
    :meth:`candidates` gives a batch's sorted union. Read from a file with :meth:`read`."""

    def __init__(self, always: Sequence[int], rules: Dict[int, Sequence[int]], target_size: int,
                 source: Path | None = None):
        self.always = np.unique(np.asarray(list(always), dtype=np.int64))
        self.rules = {s: np.asarray(list(t), dtype=np.int64) for s, t in rules.items() if len(t)}
        self.target_size, self.source = target_size, source

    def __repr__(self) -> str:
        return f"VocabularyMap({len(self.always)} always, {len(self.rules)} source tokens with candidates)"

    @classmethod
    def read(cls, path: str | Path, src_dict, tgt_dict) -> "VocabularyMap":
        """Read a vmap file (see the module docstring) for the fairseq dictionaries ``src_dict`` /
        ``tgt_dict``. Source pieces outside ``src_dict`` are never seen and are skipped; target pieces
        outside ``tgt_dict`` are left out (a model cannot write them)."""
        path = Path(path)
        if not path.is_file():
            raise VocabularyMapError(f"vocabulary map {path}: no such file")
        always = {tgt_dict.eos(), tgt_dict.unk()}
        rules: Dict[int, List[int]] = {}
        unk_src, unk_tgt = src_dict.unk(), tgt_dict.unk()
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if "\t" not in line:
                    raise VocabularyMapError(f"{path}:{number}: no tab between the source and its candidates "
                                             f"(the vmap format: 'source<TAB>target target ...')")
                key, _, values = line.partition("\t")
                if " " in key.strip():
                    raise VocabularyMapError(f"{path}:{number}: a rule for the n-gram {key.strip()!r}; the ResMLP "
                                             f"engines take rules for single source pieces only")
                targets = [i for i in (tgt_dict.index(p) for p in values.split()) if i != unk_tgt]
                if not key.strip():
                    always.update(targets)
                    continue
                source = src_dict.index(key.strip())
                if source != unk_src:
                    rules.setdefault(source, []).extend(targets)
        return cls(sorted(always), rules, len(tgt_dict), source=path.resolve())

    def candidates(self, src_tokens: Tensor) -> Tensor:
        """``src_tokens`` ``(B, S)`` -> the sorted target ids ``(M,)`` that the batch's steps score:
        the always candidates and those of every source token in the batch."""
        parts = [self.always]
        for s in np.unique(src_tokens.numpy()).tolist():
            rule = self.rules.get(s)
            if rule is not None:
                parts.append(rule)
        return torch.from_numpy(np.unique(np.concatenate(parts)))

    def write(self, path: str | Path, src_dict, tgt_dict) -> None:
        """Write the map as a vmap file (atomically), pieces from the dictionaries."""
        lines = ["\t" + " ".join(tgt_dict[i] for i in self.always)]
        for s in sorted(self.rules):
            lines.append(f"{src_dict[s]}\t" + " ".join(tgt_dict[i] for i in self.rules[s]))
        write_text_atomic(path, "".join(line + "\n" for line in lines))


def cooccurrence_counts(pairs: Iterable[Tuple[np.ndarray, np.ndarray]], target_size: int,
                        chunk: int = 20000) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Over sentence pairs of token ids ``(source, target)``: ``keys`` (``s * target_size + t``) and
    ``counts``, the number of pairs where source token ``s`` and target token ``t`` occur together,
    plus per-token counts of pairs ``source_counts`` (indexed by source id) and ``target_counts``
    (by target id); each token counted once per pair. Accumulated in chunks of ``chunk`` pairs."""
    keys = np.zeros(0, dtype=np.int64)
    counts = np.zeros(0, dtype=np.int64)
    src_count: Dict[int, int] = {}
    tgt_count: Dict[int, int] = {}
    batch: List[np.ndarray] = []

    def merge(keys, counts, batch):
        new_keys, new_counts = np.unique(np.concatenate(batch), return_counts=True)
        both = np.concatenate([keys, new_keys])
        summed = np.concatenate([counts, new_counts])
        merged, inverse = np.unique(both, return_inverse=True)
        return merged, np.bincount(inverse, weights=summed).astype(np.int64)

    for i, (source, target) in enumerate(pairs, 1):
        s, t = np.unique(np.asarray(source, dtype=np.int64)), np.unique(np.asarray(target, dtype=np.int64))
        for a in s.tolist():
            src_count[a] = src_count.get(a, 0) + 1
        for b in t.tolist():
            tgt_count[b] = tgt_count.get(b, 0) + 1
        batch.append((s[:, None] * target_size + t[None, :]).ravel())
        if i % chunk == 0:
            keys, counts = merge(keys, counts, batch)
            batch = []
    if batch:
        keys, counts = merge(keys, counts, batch)
    size = max([*src_count, -1]) + 1
    source_counts = np.zeros(size, dtype=np.int64)
    source_counts[list(src_count)] = list(src_count.values())
    target_counts = np.zeros(target_size, dtype=np.int64)
    target_counts[list(tgt_count)] = list(tgt_count.values())
    return keys, counts, source_counts, target_counts


def build_vocabulary_map(pairs: Iterable[Tuple[np.ndarray, np.ndarray]], src_dict, tgt_dict, per_source: int = 50,
                         frequent: int = 500, min_count: int = 2, chunk: int = 20000) -> VocabularyMap:
    """Learn a :class:`VocabularyMap` from sentence pairs of token ids (see the module docstring):
    the ``frequent`` target tokens in the most pairs are always candidates; each source token gets
    its ``per_source`` best other targets by ``p(t | s)`` among those seen with it at least
    ``min_count`` times. Special tokens (padding, begin and end of sentence, unknown) get no rule."""
    if per_source < 0 or frequent < 0 or min_count < 1:
        raise ValueError(f"per_source and frequent must be >= 0 and min_count >= 1, got {per_source}, {frequent}, "
                         f"{min_count}")
    V = len(tgt_dict)
    keys, counts, source_counts, target_counts = cooccurrence_counts(pairs, V, chunk)
    specials = {tgt_dict.pad(), tgt_dict.bos(), tgt_dict.eos(), tgt_dict.unk()}
    by_frequency = [t for t in np.argsort(-target_counts, kind="stable").tolist()
                    if target_counts[t] > 0 and t not in specials]
    always = by_frequency[:frequent]
    is_always = np.zeros(V, dtype=bool)
    is_always[always] = True
    source, target = keys // V, keys % V
    keep = (counts >= min_count) & ~is_always[target]
    source_specials = [src_dict.pad(), src_dict.bos(), src_dict.eos(), src_dict.unk()]
    keep &= ~np.isin(source, source_specials) & ~np.isin(target, list(specials))
    source, target, counts = source[keep], target[keep], counts[keep]
    score = counts / source_counts[source]
    order = np.lexsort((target, -score, source))  # per source, best p(t | s) first (ties: lower id)
    source, target = source[order], target[order]
    starts = np.flatnonzero(np.r_[True, source[1:] != source[:-1]]) if source.size else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], source.size]
    rules = {int(source[a]): target[a : min(b, a + per_source)].tolist() for a, b in zip(starts, ends)}
    return VocabularyMap([tgt_dict.eos(), tgt_dict.unk(), *always], rules, V)


def coverage(vmap: VocabularyMap, pairs: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, float]:
    """How well ``vmap`` covers sentence pairs of token ids (a held-out set): ``tokens``, the share
    of target tokens that are candidates of their own sentence; ``sentences``, the share of pairs
    whose whole target is; ``mean_candidates``, the mean number of candidates per sentence."""
    covered = total = whole = sentences = size = 0
    for source, target in pairs:
        candidates = vmap.candidates(torch.as_tensor(np.asarray(source)).view(1, -1)).numpy()
        inside = np.isin(np.asarray(target), candidates)
        covered, total = covered + int(inside.sum()), total + inside.size
        whole, sentences, size = whole + bool(inside.all()), sentences + 1, size + candidates.size
    if not sentences:
        raise ValueError("coverage of an empty set of pairs")
    return {"tokens": covered / max(total, 1), "sentences": whole / sentences, "mean_candidates": size / sentences}


def read_pairs(prefix_src: str, prefix_tgt: str) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The sentence pairs of a binarized split (fairseq's ``<split>.<src>-<tgt>.<lang>`` prefixes)."""
    from fairseq.data import data_utils, indexed_dataset

    sets = []
    for prefix in (prefix_src, prefix_tgt):
        impl = indexed_dataset.infer_dataset_impl(prefix)
        dataset = data_utils.load_indexed_dataset(prefix, None, dataset_impl=impl)
        if dataset is None:
            raise FileNotFoundError(f"no binarized data at {prefix}.bin/.idx")
        sets.append(dataset)
    if len(sets[0]) != len(sets[1]):
        raise ValueError(f"{prefix_src} has {len(sets[0])} sentences, {prefix_tgt} {len(sets[1])}")
    return [(sets[0][i].numpy(), sets[1][i].numpy()) for i in range(len(sets[0]))]

