"""Lean beam search for ResMLP translation models on the CPU.

The same search as fairseq's ``SequenceGenerator`` with ``BeamSearch`` (candidates: the top
``2 * beam`` of ``scores + log p``; end-of-sentence candidates among the first ``beam`` are
finished with score ``sum log p / length ** lenpen``; a sentence is done when it has ``beam``
finished hypotheses; the maximum length is ``min(max_len_a * S + max_len_b, max target
positions - 1)``), written for this model's incremental step instead of the generic one:

* **Cross-attention keys and values once per sentence, never reordered.** They are computed
  once for the batch and shaped ``(B, H, S, d)``; the ``beam`` hypotheses of a sentence read
  them by broadcasting (``(B, H, beam, d) @ (B, H, d, S)``). fairseq stores them per hypothesis
  and re-indexes them at every step.
* **Token-mixing history in preallocated buffers** ``(T, B, beam, C)`` per layer instead of a
  ``torch.cat`` per step; beam reordering copies the rows written so far into a spare buffer in
  one ``index_select`` and swaps the two; when sentences finish only the written rows move.
* **Finished sentences leave the batch** (as in fairseq), by one ``index_select`` per buffer.
* **No per-step Python bookkeeping per hypothesis** beyond the finished ones.

Works on float32 models and on models whose ``nn.Linear`` layers were quantized with
:func:`quantize_int8` (dynamic int8, fbgemm), since every linear layer is called as a module.
The tests check that it returns fairseq's hypotheses token for token.

Shapes: ``B`` sentences, ``S`` source length, ``k`` beam, ``C`` channels, ``V`` vocabulary.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8 (int8 weights,
    activations quantized on the fly per batch; fbgemm on x86), for CPU inference. The
    token-mixing matrices, embeddings and norms stay float32."""
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "qnnpack"
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


class _CrossAttention:
    """Encoder-decoder attention of one decoder layer with its keys/values precomputed.

    ``keys``/``values``: ``(B, H, S, d)``; ``bias``: ``(B, 1, 1, S)`` additive mask or None."""

    def __init__(self, attn, encoder_out: Tensor, padding_mask: Optional[Tensor]):
        self.attn = attn
        S, B, _ = encoder_out.shape
        H, d = attn.num_heads, attn.head_dim
        self.heads, self.head_dim = H, d
        self.keys = attn.k_proj(encoder_out).view(S, B, H, d).permute(1, 2, 3, 0)  # (B, H, d, S)
        self.values = attn.v_proj(encoder_out).view(S, B, H, d).permute(1, 2, 0, 3)  # (B, H, S, d)
        self.bias = None
        if padding_mask is not None and padding_mask.any():
            self.bias = padding_mask.view(B, 1, 1, S).to(encoder_out.dtype).masked_fill(padding_mask.view(B, 1, 1, S), -math.inf)

    def select(self, index: Tensor) -> None:
        self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)
        if self.bias is not None:
            self.bias = self.bias.index_select(0, index)

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` ``(B, k, C)`` -> ``(B, k, C)``."""
        B, k, C = x.shape
        q = (self.attn.q_proj(x) * self.attn.scaling).view(B, k, self.heads, self.head_dim).transpose(1, 2)
        weights = torch.matmul(q, self.keys)  # (B, H, k, S)
        if self.bias is not None:
            weights = weights + self.bias
        out = torch.matmul(torch.softmax(weights, dim=-1), self.values)  # (B, H, k, d)
        return self.attn.out_proj(out.transpose(1, 2).reshape(B, k, C))


def _select_rows(buffer: Tensor, used: int, index: Tensor) -> Tensor:
    """A new history buffer with the sentences ``index`` of ``buffer`` ``(T, B, k, C)``; only
    the ``used`` rows written so far are copied (the buffer holds the maximum length)."""
    out = buffer.new_empty(buffer.size(0), index.numel(), *buffer.shape[2:])
    out[:used] = buffer[:used].index_select(1, index)
    return out


@torch.inference_mode()
def generate(
    model,
    src_tokens: Tensor,
    beam: int = 4,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    min_len: int = 1,
    lenpen: float = 1.0,
    unk_penalty: float = 0.0,
) -> List[List[Dict[str, Tensor]]]:
    """Beam search with a ResMLP translation model (see the module docstring).

    ``src_tokens`` ``(B, S)`` (either padding side, ending in end-of-sentence). Returns, per
    sentence, its ``beam`` finished hypotheses sorted best first, each a dict with ``tokens``
    (ending in end-of-sentence, as fairseq) and ``score``.
    """
    encoder, decoder = model.encoder, model.decoder
    dictionary = decoder.dictionary
    eos, pad, unk = dictionary.eos(), dictionary.pad(), dictionary.unk()
    bsz, src_len = src_tokens.shape
    max_len = min(int(max_len_a * src_len + max_len_b), decoder.max_positions() - 1)
    k = beam

    enc = encoder(src_tokens)
    encoder_out = enc["encoder_out"][0]
    cross = [_CrossAttention(layer.cross_attn, encoder_out, enc["encoder_padding_mask"][0]) for layer in decoder.layers]
    C = encoder_out.size(-1)
    history = [encoder_out.new_empty(max_len + 2, bsz, k, C) for _ in decoder.layers]  # rows <= step are written
    spare = [torch.empty_like(h) for h in history]  # beam reordering writes here, then the two swap

    tokens = src_tokens.new_full((bsz, k, max_len + 2), pad)
    tokens[:, :, 0] = eos
    scores = encoder_out.new_zeros(bsz, k)  # cumulative log-probabilities
    ignore = torch.zeros(bsz, k, dtype=torch.bool)
    finalized: List[List[Dict[str, Tensor]]] = [[] for _ in range(bsz)]
    alive = torch.arange(bsz)  # original index of each row still searched
    cand_offsets = torch.arange(2 * k)

    for step in range(max_len + 1):
        n = alive.numel()
        # one decoder step for every hypothesis: (n, k, C)
        prev = tokens[:, :, step]
        x = decoder.embed_scale * decoder.embed_tokens(prev)
        if decoder.embed_positions is not None:
            prefix = tokens[:, :, : step + 1].reshape(n * k, step + 1)
            x = x + decoder.embed_positions(prefix, incremental_state={}).view(n, k, C)
        for layer, buffer, attend in zip(decoder.layers, history, cross):
            buffer[step] = layer.token_norm(x)
            mixer = layer.token_mixer
            row = mixer.weight[step, : step + 1]
            mixed = torch.matmul(row, buffer[: step + 1].view(step + 1, -1)).view(n, k, C) + mixer.bias[step]
            x = torch.addcmul(x, mixed, layer.token_scale)
            x = torch.addcmul(x, attend(layer.cross_attn_norm(x)), layer.cross_attn_scale)
            x = torch.addcmul(x, layer.channel_mlp(layer.channel_norm(x)), layer.channel_scale)
        features = decoder.final_norm(x)
        lprobs = F.log_softmax(decoder.output_layer(features).float(), dim=-1)  # (n, k, V)

        # (fairseq also maps NaN to -inf here, a full pass over (n, k, V); a model in eval mode
        # with finite weights produces none, and a NaN would surface as a NaN score)
        lprobs[:, :, pad] = -math.inf
        lprobs[:, :, unk] -= unk_penalty
        if step >= max_len:
            lprobs[:, :, :eos] = -math.inf
            lprobs[:, :, eos + 1 :] = -math.inf
        if step < min_len:
            lprobs[:, :, eos] = -math.inf

        V = lprobs.size(-1)
        if step == 0:
            flat = lprobs[:, 0, :]  # every hypothesis of a sentence is the same at the start
        else:
            flat = (lprobs + scores.unsqueeze(-1)).view(n, k * V)
        cand_scores, cand_indices = torch.topk(flat, k=min(2 * k, flat.size(1) - 1), dim=1)
        cand_beams = torch.div(cand_indices, V, rounding_mode="floor")
        cand_tokens = cand_indices.fmod(V)

        # finish the hypotheses that end here, among the top k candidates
        eos_mask = cand_tokens.eq(eos) & cand_scores.ne(-math.inf)
        eos_mask[:, :k][ignore] = False
        finished_rows: List[int] = []
        if eos_mask[:, :k].any():
            rows, cols = eos_mask[:, :k].nonzero(as_tuple=True)
            for r, c in zip(rows.tolist(), cols.tolist()):
                sent = int(alive[r])
                if len(finalized[sent]) < k:
                    hyp = tokens[r, cand_beams[r, c], 1 : step + 2].clone()
                    hyp[step] = eos
                    finalized[sent].append({"tokens": hyp, "score": cand_scores[r, c] / (step + 1) ** lenpen})
            finished_rows = [r for r in sorted(set(rows.tolist())) if len(finalized[int(alive[r])]) >= k]
        if step >= max_len:
            break
        if finished_rows:
            if len(finished_rows) == n:
                break
            keep = torch.ones(n, dtype=torch.bool)
            keep[finished_rows] = False
            index = keep.nonzero(as_tuple=True)[0]
            alive, eos_mask, ignore = alive[index], eos_mask[index], ignore[index]
            cand_beams, cand_scores, cand_tokens = cand_beams[index], cand_scores[index], cand_tokens[index]
            tokens = tokens.index_select(0, index)
            history = [_select_rows(h, step + 1, index) for h in history]
            for attend in cross:
                attend.select(index)
            n = index.numel()

        # the k best candidates that did not end: they continue
        eos_mask[:, :k] = ignore | eos_mask[:, :k]
        active = eos_mask.long() * (2 * k) + cand_offsets[: eos_mask.size(1)]
        order, active_hypos = torch.topk(active, k=k, dim=1, largest=False)
        ignore = order.ge(2 * k)[:, :k]
        beams = cand_beams.gather(1, active_hypos)  # (n, k) which hypothesis each continues
        scores = cand_scores.gather(1, active_hypos)
        next_tokens = cand_tokens.gather(1, active_hypos)
        flat = (beams + torch.arange(n).unsqueeze(1) * k).view(-1)  # rows of (n * k) hypotheses
        tokens = tokens.view(n * k, -1).index_select(0, flat).view(n, k, -1)
        tokens[:, :, step + 1] = next_tokens
        for i, h in enumerate(history):  # reorder the rows written so far into the spare buffer, swap
            if spare[i].shape != h.shape:
                spare[i] = torch.empty_like(h)
            torch.index_select(h[: step + 1].view(step + 1, n * k, C), 1, flat, out=spare[i][: step + 1].view(step + 1, n * k, C))
            history[i], spare[i] = spare[i], h
    for hyps in finalized:
        hyps.sort(key=lambda h: float(h["score"]), reverse=True)
    return finalized
