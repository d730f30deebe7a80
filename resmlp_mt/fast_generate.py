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

The model it searches with: a fairseq ResMLP model as trained (the same arithmetic as fairseq:
the tests check that it returns fairseq's hypotheses token for token); the same model folded
for inference (:func:`fold_for_inference`: every Affine pre-normalisation and LayerScale
multiplied into the neighbouring weights, equal up to float rounding); or the folded decoder
step in ONNX Runtime (:class:`resmlp_mt.onnx_decoder.OnnxModel`, which returns a shortlist of
the vocabulary per hypothesis instead of the full log-probabilities). Each works in float32 and
with int8 weights (:func:`quantize_int8`: dynamic int8 with fbgemm for the PyTorch ones, since
every linear layer is called as a module; ONNX Runtime's own quantization for the ONNX one).

Shapes: ``B`` sentences, ``S`` source length, ``k`` beam, ``C`` channels, ``V`` vocabulary.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resmlp_core import fold_affine_into_linear


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8 (int8 weights,
    activations quantized on the fly per batch; fbgemm on x86), for CPU inference. The
    token-mixing matrices, embeddings and norms stay float32."""
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "qnnpack"
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def key_values(attn, encoder_out: Tensor):
    """The cross-attention keys ``(B, H, d, S)`` and values ``(B, H, S, d)`` of ``encoder_out``
    ``(S, B, C)``, for ``attn`` with ``k_proj``, ``v_proj``, ``num_heads``, ``head_dim``."""
    S, B, _ = encoder_out.shape
    H, d = attn.num_heads, attn.head_dim
    keys = attn.k_proj(encoder_out).view(S, B, H, d).permute(1, 2, 3, 0)
    values = attn.v_proj(encoder_out).view(S, B, H, d).permute(1, 2, 0, 3)
    return keys, values


def padding_bias(padding_mask: Tensor) -> Tensor:
    """``(B, S)`` bool -> ``(B, 1, 1, S)`` additive attention mask: ``-inf`` at padding, else 0."""
    B, S = padding_mask.shape
    return torch.zeros(B, 1, 1, S).masked_fill(padding_mask.view(B, 1, 1, S), -math.inf)


def cross_attend(attn, x: Tensor, keys: Tensor, values: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Encoder-decoder attention of ``x`` ``(B, k, C)`` (the ``k`` hypotheses of each sentence
    read the sentence's keys and values by broadcasting) -> ``(B, k, C)``. ``attn``: fairseq's
    ``MultiheadAttention`` or a :class:`FoldedDecoderLayer` (``scaling`` 1, folded into ``q_proj``)."""
    B, k, C = x.shape
    q = attn.q_proj(x)
    if attn.scaling != 1.0:
        q = q * attn.scaling
    weights = torch.matmul(q.view(B, k, attn.num_heads, attn.head_dim).transpose(1, 2), keys)  # (B, H, k, S)
    if bias is not None:
        weights = weights + bias
    out = torch.matmul(torch.softmax(weights, dim=-1), values)  # (B, H, k, d)
    return attn.out_proj(out.transpose(1, 2).reshape(B, k, C))


class _CrossAttention:
    """Encoder-decoder attention of one decoder layer with its keys/values computed once
    (:func:`key_values`); ``bias``: ``(B, 1, 1, S)`` additive mask or None."""

    def __init__(self, attn, encoder_out: Tensor, padding_mask: Optional[Tensor]):
        self.attn = attn
        self.keys, self.values = key_values(attn, encoder_out)
        self.bias = padding_bias(padding_mask) if padding_mask is not None and padding_mask.any() else None

    def select(self, index: Tensor) -> None:
        self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)
        if self.bias is not None:
            self.bias = self.bias.index_select(0, index)

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` ``(B, k, C)`` -> ``(B, k, C)``."""
        return cross_attend(self.attn, x, self.keys, self.values, self.bias)


def _affine(norm: nn.Module):
    """``(alpha, beta)`` ``(C,)`` of an Affine pre-normalisation; None for a norm with statistics."""
    if not (hasattr(norm, "alpha") and hasattr(norm, "beta")):
        return None
    return norm.alpha.detach().reshape(-1), norm.beta.detach().reshape(-1)


def _linear(weight: Tensor, bias: Optional[Tensor]) -> nn.Linear:
    layer = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer.requires_grad_(False)


class FoldedDecoderLayer(nn.Module):
    """One decoder layer for incremental decoding with every per-channel multiplier folded away.

    The Affine pre-normalisations and LayerScale vectors are linear, so they move into the
    neighbouring weights (as the vision model's ``fold``): for the token mixer with ``Aff(x) =
    a * x + b`` and LayerScale ``g``, ``g * (sum_j A[t, j] Aff(x_j) + c_t) = (g * a) * (sum_j A[t, j]
    x_j) + g * (b * sum_j A[t, j] + c_t)``, so the history holds the raw inputs ``x_j`` and the
    second term is a per-position constant ``(T, C)``; the cross-attention's Affine and its
    ``1/sqrt(d)`` go into ``q_proj``, its LayerScale into ``out_proj``; the channel MLP's Affine
    into ``fc1``, its LayerScale into ``fc2``. What is left per step: 4 matrix products, the
    attention and 3 residual adds. Equal to the unfolded layer up to float rounding.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        token, cross, channel = _affine(layer.token_norm), _affine(layer.cross_attn_norm), _affine(layer.channel_norm)
        if token is None or cross is None or channel is None:
            raise ValueError("only models with Affine pre-normalisations (--norm affine) fold")
        with torch.no_grad():
            mixer = layer.token_mixer
            A = mixer.weight.detach().tril()
            g1 = layer.token_scale.detach()
            self.register_buffer("mix_weight", A.clone())  # (T, T), lower triangle
            self.register_buffer("mix_scale", g1 * token[0])  # (C,)
            # (T, C): g1 * (beta * sum_{j<=t} A[t, j] + bias[t])
            self.register_buffer("mix_const", g1 * (A.sum(1, keepdim=True) * token[1] + mixer.bias.detach()[:, None]))
            attn = layer.cross_attn
            self.num_heads, self.head_dim, self.scaling = attn.num_heads, attn.head_dim, 1.0  # see cross_attend
            qw, qb = fold_affine_into_linear(attn.q_proj.weight.detach(), attn.q_proj.bias.detach(), *cross)
            self.q_proj = _linear(attn.scaling * qw, attn.scaling * qb)
            self.k_proj, self.v_proj = attn.k_proj, attn.v_proj  # applied once per sentence
            g2 = layer.cross_attn_scale.detach()
            self.out_proj = _linear(g2[:, None] * attn.out_proj.weight.detach(), g2 * attn.out_proj.bias.detach())
            mlp = layer.channel_mlp
            self.fc1 = _linear(*fold_affine_into_linear(mlp.fc1.weight.detach(), mlp.fc1.bias.detach(), *channel))
            self.activation_fn = mlp.activation_fn
            g3 = layer.channel_scale.detach()
            self.fc2 = _linear(g3[:, None] * mlp.fc2.weight.detach(), g3 * mlp.fc2.bias.detach())

    def channel_mlp(self, x: Tensor) -> Tensor:
        """The folded channel MLP branch (Affine before, LayerScale after included)."""
        return self.fc2(self.activation_fn(self.fc1(x)))


class FoldedDecoder(nn.Module):
    """The decoder of a ResMLP translation model, folded for incremental decoding (see
    :class:`FoldedDecoderLayer`); the final Affine and the output scale go into the output
    projection (a copy: the tied embedding stays as it is), the embedding scale into a copy of
    the embedding table. Built by :func:`fold_for_inference`; int8 quantization
    (:func:`quantize_int8`) applies to its linear layers like to the model's."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        final = _affine(decoder.final_norm)
        if final is None:
            raise ValueError("only models with Affine pre-normalisations (--norm affine) fold")
        self.dictionary = decoder.dictionary
        self.max_target_positions = decoder.max_positions()
        self.layers = nn.ModuleList([FoldedDecoderLayer(layer) for layer in decoder.layers])
        self.embed_positions = decoder.embed_positions
        with torch.no_grad():
            self.register_buffer("embed_weight", decoder.embed_tokens.weight.detach() * decoder.embed_scale)
            out = decoder.output_projection.weight.detach() * decoder.output_scale
            self.output_projection = _linear(*fold_affine_into_linear(out, None, *final))

    def max_positions(self) -> int:
        return self.max_target_positions


class FoldedModel(nn.Module):
    """A ResMLP translation model for :func:`generate`: the model's encoder as it is and a
    :class:`FoldedDecoder`. ``fold_for_inference(model)`` builds it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.encoder
        self.decoder = FoldedDecoder(model.decoder)
        self.eval()


def fold_for_inference(model: nn.Module) -> FoldedModel:
    """The model with its decoder folded for :func:`generate` (faster; equal to the unfolded
    model up to float rounding, so hypotheses can differ from fairseq's where two candidates
    tie within rounding). Fold before :func:`quantize_int8`, not after."""
    return FoldedModel(model)


class History:
    """The token-mixing history of a beam search: per decoder layer, the inputs of every
    hypothesis at the positions decoded so far, in a preallocated ``(T, N, C)`` buffer (time,
    ``N = n * k`` hypotheses, channels). Beam reordering copies the rows written so far into a
    spare buffer in one ``index_select`` and swaps the two; when sentences finish only the
    written rows of the others move."""

    def __init__(self, layers: int, length: int, hypotheses: int, channels: int):
        self.buffers = [torch.zeros(length, hypotheses, channels) for _ in range(layers)]
        self.spare = [torch.empty_like(b) for b in self.buffers]

    def select(self, sentences: Tensor, k: int, used: int) -> None:
        """Keep the ``k`` hypotheses of each sentence of ``sentences`` (the others finished)."""
        rows = (sentences.unsqueeze(1) * k + torch.arange(k)).view(-1)
        for i, b in enumerate(self.buffers):
            out = b.new_empty(b.size(0), rows.numel(), b.size(2))
            out[:used] = b[:used].index_select(1, rows)
            self.buffers[i] = out

    def reorder(self, flat: Tensor, used: int) -> None:
        """Hypothesis ``i`` continues hypothesis ``flat[i]``; rows ``:used`` are written."""
        for i, b in enumerate(self.buffers):
            if self.spare[i].shape != b.shape:
                self.spare[i] = torch.empty_like(b)
            torch.index_select(b[:used], 1, flat, out=self.spare[i][:used])
            self.buffers[i], self.spare[i] = self.spare[i], b


def vocabulary_bias(dictionary, unk_penalty: float) -> Dict[bool, Tensor]:
    """``{allow_eos: (V,)}`` additive logit masks of fairseq's rules: ``-inf`` for padding (and
    end-of-sentence when not allowed), ``-unk_penalty`` for unknown. Applied after the
    log-normaliser, as fairseq applies them to log-probabilities."""
    allow = torch.zeros(len(dictionary))
    allow[dictionary.pad()] = -math.inf
    allow[dictionary.unk()] -= unk_penalty
    forbid = allow.clone()
    forbid[dictionary.eos()] = -math.inf
    return {True: allow, False: forbid}


def shortlist(logits: Tensor, bias: Tensor, width: int, eos: int):
    """Log-probabilities of the ``width`` best tokens of each row of ``logits`` ``(..., V)``
    after adding ``bias`` ``(V,)`` (fairseq's masks), their tokens, and the end-of-sentence
    log-probability ``(...)``, from ``log_softmax`` as fairseq's. (In ONNX Runtime 1.32 a
    ``logsumexp`` here, ``ReduceLogSumExp``, took longer than the step's matrix products.)"""
    lprobs = F.log_softmax(logits, dim=-1)
    values, tokens = torch.topk(lprobs + bias, width, dim=-1)
    return values, tokens, lprobs[..., eos]


class _TorchSteps:
    """Decoder steps in PyTorch, on a fairseq model (exactly fairseq's arithmetic) or on a
    :class:`FoldedModel`. :meth:`step` returns the full log-probabilities ``(n, k, V)``. (A
    shortlist as the ONNX steps return, :func:`shortlist`, measured 5-8% slower here: torch's
    ``logsumexp`` plus ``topk`` cost more than the fused ``log_softmax`` plus the score pass.)"""

    full_vocabulary = True

    def __init__(self, model, encoder_out: Tensor, padding_mask: Optional[Tensor], k: int, max_len: int):
        decoder = model.decoder
        self.decoder, self.folded = decoder, isinstance(decoder, FoldedDecoder)
        self.cross = [_CrossAttention(layer if self.folded else layer.cross_attn, encoder_out, padding_mask)
                      for layer in decoder.layers]
        S, B, C = encoder_out.shape
        self.channels, self.k = C, k
        self.history = History(len(decoder.layers), max_len + 2, B * k, C)  # rows <= step are written

    def step(self, tokens: Tensor, step: int) -> Tensor:
        """``tokens`` ``(n, k, step + 1)``, the prefixes; returns log-probabilities ``(n, k, V)``."""
        decoder, (n, k) = self.decoder, tokens.shape[:2]
        C = self.channels
        prev = tokens[:, :, step]
        if self.folded:
            x = F.embedding(prev, decoder.embed_weight)
        else:
            x = decoder.embed_scale * decoder.embed_tokens(prev)
        if decoder.embed_positions is not None:
            prefix = tokens[:, :, : step + 1].reshape(n * k, step + 1)
            x = x + decoder.embed_positions(prefix, incremental_state={}).view(n, k, C)
        if self.folded:
            for layer, buffer, attend in zip(decoder.layers, self.history.buffers, self.cross):
                buffer[step] = x.view(n * k, C)
                mixed = torch.matmul(layer.mix_weight[step, : step + 1], buffer[: step + 1].view(step + 1, -1))
                x = torch.addcmul(x + layer.mix_const[step], mixed.view(n, k, C), layer.mix_scale)
                x = x + attend(x)
                x = x + layer.channel_mlp(x)
            logits = decoder.output_projection(x)
        else:
            for layer, buffer, attend in zip(decoder.layers, self.history.buffers, self.cross):
                buffer[step] = layer.token_norm(x).view(n * k, C)
                mixer = layer.token_mixer
                row = mixer.weight[step, : step + 1]
                mixed = torch.matmul(row, buffer[: step + 1].view(step + 1, -1)).view(n, k, C) + mixer.bias[step]
                x = torch.addcmul(x, mixed, layer.token_scale)
                x = torch.addcmul(x, attend(layer.cross_attn_norm(x)), layer.cross_attn_scale)
                x = torch.addcmul(x, layer.channel_mlp(layer.channel_norm(x)), layer.channel_scale)
            logits = decoder.output_layer(decoder.final_norm(x))
        return F.log_softmax(logits.float(), dim=-1)

    def select(self, index: Tensor, used: int) -> None:
        """Keep the sentences ``index`` (the others finished)."""
        self.history.select(index, self.k, used)
        for attend in self.cross:
            attend.select(index)

    def reorder(self, flat: Tensor, used: int) -> None:
        """Hypothesis ``i`` continues hypothesis ``flat[i]`` (of ``n * k``)."""
        self.history.reorder(flat, used)


def _mask_lprobs(lprobs: Tensor, step: int, max_len: int, min_len: int, eos: int, pad: int, unk: int,
                 unk_penalty: float) -> None:
    """fairseq's rules, in place on ``(n, k, V)`` log-probabilities."""
    # (fairseq also maps NaN to -inf here, a full pass over (n, k, V); a model in eval mode
    # with finite weights produces none, and a NaN would surface as a NaN score)
    lprobs[:, :, pad] = -math.inf
    lprobs[:, :, unk] -= unk_penalty
    if step >= max_len:
        lprobs[:, :, :eos] = -math.inf
        lprobs[:, :, eos + 1 :] = -math.inf
    if step < min_len:
        lprobs[:, :, eos] = -math.inf


def _candidates(steps, tokens: Tensor, scores: Tensor, step: int, k: int, max_len: int, min_len: int,
                eos: int, pad: int, unk: int, unk_penalty: float):
    """The ``2k`` best continuations of each sentence: ``(scores, beams, tokens)``, each ``(n, 2k)``,
    best first, as fairseq's ``BeamSearch.step``."""
    n = tokens.size(0)
    if steps.full_vocabulary:
        lprobs = steps.step(tokens, step)
        _mask_lprobs(lprobs, step, max_len, min_len, eos, pad, unk, unk_penalty)
        V = lprobs.size(-1)
        if step == 0:
            flat = lprobs[:, 0, :]  # every hypothesis of a sentence is the same at the start
        else:
            flat = (lprobs + scores.unsqueeze(-1)).view(n, k * V)
        cand_scores, cand_indices = torch.topk(flat, k=min(2 * k, flat.size(1) - 1), dim=1)
        return cand_scores, torch.div(cand_indices, V, rounding_mode="floor"), cand_indices.fmod(V)
    # a shortlist per hypothesis: its best 2k tokens (the sentence's best 2k continuations are among
    # them) and the end-of-sentence log-probability, masks applied by the step
    values, indices, eos_lprobs = steps.step(tokens, step, allow_eos=step >= min_len)
    if step >= max_len:  # only end-of-sentence: one candidate per hypothesis
        cand_scores, cand_beams = torch.sort(scores + eos_lprobs, dim=1, descending=True)
        pad_inf = cand_scores.new_full((n, k), -math.inf)
        return (torch.cat([cand_scores, pad_inf], 1), torch.cat([cand_beams, cand_beams], 1),
                cand_beams.new_full((n, 2 * k), eos))
    width = values.size(-1)
    if step == 0:
        flat, flat_tokens = values[:, 0, :], indices[:, 0, :]
    else:
        flat, flat_tokens = (values + scores.unsqueeze(-1)).view(n, k * width), indices.reshape(n, k * width)
    cand_scores, cand_indices = torch.topk(flat, k=min(2 * k, flat.size(1)), dim=1)
    cand_beams = torch.div(cand_indices, width, rounding_mode="floor") if step > 0 else torch.zeros_like(cand_indices)
    return cand_scores, cand_beams, flat_tokens.gather(1, cand_indices)


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

    ``model``: a fairseq ResMLP model (fairseq's arithmetic: the same hypotheses as
    ``SequenceGenerator``), a :class:`FoldedModel` or an ONNX decoder
    (:class:`resmlp_mt.onnx_decoder.OnnxModel`), float or int8.

    ``src_tokens`` ``(B, S)`` (either padding side, ending in end-of-sentence). Returns, per
    sentence, its ``beam`` finished hypotheses sorted best first, each a dict with ``tokens``
    (ending in end-of-sentence, as fairseq) and ``score``.
    """
    decoder = model.decoder
    dictionary = decoder.dictionary
    eos, pad, unk = dictionary.eos(), dictionary.pad(), dictionary.unk()
    bsz, src_len = src_tokens.shape
    max_len = min(int(max_len_a * src_len + max_len_b), decoder.max_positions() - 1)
    k = beam

    if hasattr(model, "decoder_steps"):  # an ONNX model runs its own encoder
        steps = model.decoder_steps(src_tokens, k, max_len, unk_penalty=unk_penalty)
    else:
        enc = model.encoder(src_tokens)
        steps = _TorchSteps(model, enc["encoder_out"][0], enc["encoder_padding_mask"][0], k, max_len)

    tokens = src_tokens.new_full((bsz, k, max_len + 2), pad)
    tokens[:, :, 0] = eos
    scores = torch.zeros(bsz, k)  # cumulative log-probabilities
    ignore = torch.zeros(bsz, k, dtype=torch.bool)
    finalized: List[List[Dict[str, Tensor]]] = [[] for _ in range(bsz)]
    alive = torch.arange(bsz)  # original index of each row still searched
    cand_offsets = torch.arange(2 * k)

    for step in range(max_len + 1):
        n = alive.numel()
        cand_scores, cand_beams, cand_tokens = _candidates(steps, tokens, scores, step, k, max_len, min_len,
                                                           eos, pad, unk, unk_penalty)

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
            steps.select(index, step + 1)
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
        steps.reorder(flat, step + 1)
    for hyps in finalized:
        hyps.sort(key=lambda h: float(h["score"]), reverse=True)
    return finalized
