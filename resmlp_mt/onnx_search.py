"""The whole beam search of a ResMLP translation model in ONNX Runtime: one call per batch.

:mod:`resmlp_mt.onnx_decoder` runs the decoder step in ONNX Runtime and keeps the search in
Python (:func:`resmlp_mt.fast_generate.generate`); at batch 1 the search and its Python loop are
about a third of a sentence's time. Here the search is ONNX Runtime's own C++ ``BeamSearch``
operator (``com.microsoft``, ``model_type=1``, the encoder-decoder form of its T5 models), which
calls two graphs of ours:

* the encoder graph (:class:`SearchEncoderGraph`): ``encoder_input_ids`` ``(B, S)`` int32 and
  ``encoder_attention_mask`` ``(B, S)`` int32 -> per decoder layer ``i`` the cross-attention
  ``present_key_cross_i`` and ``present_value_cross_i`` ``(B, H, S, d)``;
* the decoder graph (:class:`SearchDecoderGraph`), one step for ``N`` hypotheses:
  ``input_ids`` ``(N, 1)`` int32, ``encoder_attention_mask``, per layer ``past_key_self_i``
  ``(N, H, t, d)`` (what the layer's token mixer kept of positions ``0 .. t - 1``: the
  history of :class:`~resmlp_mt.fast_generate.History`, its ``C = H * d`` channels laid out as
  the cross-attention's heads, whose shape the operator gives the first step's empty pasts),
  ``past_value_self_i`` of the same shape (zeros: the operator wants a pair per layer), then
  the cross keys and values ->
  ``logits`` ``(N, 1, V)`` and the pasts with position ``t`` appended. The position ``t`` is the
  past's length, so the weights of the step's row of the token-mixing matrix are gathered in
  the graph (:func:`position_inputs`).

The step is :meth:`FoldedDecoder.step <resmlp_mt.fast_generate.FoldedDecoder.step>` itself, as
in the ONNX step graph. The operator's search follows Hugging Face's rules, which match fairseq's
on the points that decide hypotheses here (candidates: the best ``2k`` tokens of each hypothesis;
an end-of-sentence counts only among the first ``k`` candidates; a hypothesis is scored by its
log-probability over its length including the end-of-sentence, to the power ``lenpen``; a sentence
is done when it has ``k`` finished hypotheses); they differ at the maximum length (fairseq forces
an end-of-sentence there, the operator returns the hypothesis as it is) and in having one maximum
length per batch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resmlp_core.io import write_atomic

from .fast_generate import (FoldedCrossTokenLinear, FoldedDecoder, FoldedDynamicTokenMixer, FoldedModel,
                            FoldedTokenMixer, fold_for_inference)
from .modules import key_values
from .onnx_decoder import OPSET, _require_onnxruntime
from .padding import left_align


def position_inputs(mixer: nn.Module, history: Tensor, t: Tensor) -> tuple:
    """A folded token mixer's ``step_inputs`` at position ``t`` (an int64 scalar tensor: traced,
    so that one graph serves every position) from its ``history`` ``(1 + t, N, C)`` (the zero
    row, then positions ``0 .. t - 1``): what ``mixer.step_inputs(history, t)`` returns for an int."""
    kernel = getattr(mixer, "kernel", 0)
    first = torch.clamp(torch.minimum(t, t - kernel + 2), min=0) if kernel else torch.zeros_like(t)
    rows = torch.arange(t + 1 - first) + first  # the history rows the step reads
    past = history.index_select(0, rows)
    const = mixer.const.index_select(0, t.view(1)).squeeze(0)
    if isinstance(mixer, FoldedCrossTokenLinear):
        row = mixer.rows.index_select(0, t.view(1)).squeeze(0)  # (1 + T,)
        return past, row.index_select(0, rows), row.index_select(0, (t + 1).view(1)), const
    if isinstance(mixer, FoldedTokenMixer):
        row = mixer.rows.index_select(1, t.view(1)).squeeze(1)  # (H, 1 + T)
        return past, row.index_select(1, rows), row.index_select(1, (t + 1).view(1)), const
    if isinstance(mixer, FoldedDynamicTokenMixer):
        offsets = mixer.offsets.index_select(0, t.view(1)).squeeze(0)
        reach = mixer.reach.index_select(0, t.view(1)).squeeze(0)
        return past, offsets.index_select(0, rows), reach.index_select(0, rows), const
    raise ValueError(f"the ONNX search has no step for the token mixer {type(mixer).__name__}")


class SearchEncoderGraph(nn.Module):
    """The operator's encoder graph (see the module docstring): the encoder and every decoder
    layer's cross-attention keys and values, keys laid out ``(B, H, S, d)`` as the operator's."""

    def __init__(self, encoder: nn.Module, decoder: FoldedDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.pad = decoder.dictionary.pad()

    def forward(self, encoder_input_ids: Tensor, encoder_attention_mask: Tensor):
        src = encoder_input_ids.long().masked_fill(encoder_attention_mask.eq(0), self.pad)
        encoder_out = self.encoder(src)["encoder_out"][0]
        outputs = []
        for layer in self.decoder.layers:
            keys, values = key_values(layer, encoder_out)
            outputs += [keys.transpose(2, 3), values]
        return tuple(outputs)


class SearchDecoderGraph(nn.Module):
    """The operator's decoder graph (see the module docstring): one
    :meth:`FoldedDecoder.step <resmlp_mt.fast_generate.FoldedDecoder.step>` for ``N``
    hypotheses, at the position given by the length of the pasts."""

    def __init__(self, decoder: FoldedDecoder, max_len_a: float, max_len_b: int):
        super().__init__()
        if decoder.embed_positions is not None:
            raise ValueError("the ONNX search supports models without positional embeddings (the default, "
                             "--positional-embeddings none)")
        self.decoder, self.max_len_a, self.max_len_b = decoder, float(max_len_a), int(max_len_b)
        d = decoder.dictionary
        self.eos, self.pad = d.eos(), d.pad()
        self.heads, self.channels = decoder.layers[0].num_heads, decoder.embed_weight.size(1)

    def forward(self, input_ids: Tensor, encoder_attention_mask: Tensor, *states: Tensor):
        L = len(self.decoder.layers)
        pasts, cross = states[: 2 * L], states[2 * L :]
        t = torch.ones_like(pasts[0][0, 0, :, 0], dtype=torch.long).sum()  # the position: the pasts' length
        x = F.embedding(input_ids.long(), self.decoder.embed_weight)  # (N, 1, C): n = N sentences, k = 1
        bias = torch.zeros_like(encoder_attention_mask, dtype=torch.float).masked_fill(
            encoder_attention_mask.eq(0), float("-inf")).unsqueeze(1).unsqueeze(1)  # (N, 1, 1, S)
        layer_inputs = []
        for i, layer in enumerate(self.decoder.layers):
            kept = pasts[2 * i].permute(2, 0, 1, 3)  # (N, H, t, d) -> (t, N, H, d)
            kept = kept.reshape(kept.shape[0], kept.shape[1], self.channels)  # (t, N, C), also for t = 0
            history = torch.cat([torch.zeros_like(x).transpose(0, 1), kept])  # (1 + t, N, C)
            layer_inputs.append((position_inputs(layer.token_mixer, history, t), cross[2 * i].transpose(2, 3),
                                 cross[2 * i + 1]))
        logits, entries = self.decoder.step(x, layer_inputs, bias)
        lprobs = F.log_softmax(logits.float(), dim=-1)  # (N, 1, V); the operator's own log_softmax keeps them
        # fairseq's last position, max_len = min(a * S + b, positions - 1): only end-of-sentence, with its own
        # log-probability; padding takes the rest of the mass, so that the operator's log_softmax keeps
        # it, and the operator's vocab_mask then masks padding, as at every step
        S = torch.ones_like(encoder_attention_mask[0], dtype=torch.float).sum()
        max_len = torch.clamp(torch.floor(self.max_len_a * S + self.max_len_b), max=self.decoder.max_positions() - 1)
        vocab = torch.arange(lprobs.size(-1))
        eos = lprobs[:, :, self.eos : self.eos + 1]
        last = torch.where(vocab == self.eos, eos, torch.where(vocab == self.pad, torch.log1p(-torch.exp(eos)),
                                                               torch.full_like(lprobs, float("-inf"))))
        lprobs = torch.where(t.float() >= max_len, last, lprobs)
        presents = []
        for i, entry in enumerate(entries):
            entry = entry.unflatten(-1, (self.heads, self.channels // self.heads)).transpose(1, 2)  # (N, H, 1, d)
            presents.append(torch.cat([pasts[2 * i], entry], dim=2))
            presents.append(torch.cat([pasts[2 * i + 1], entry * 0.0], dim=2))  # (zeros_like traces a fixed N)
        return (lprobs, *presents)


def export_search(model: FoldedModel, folder: Path, max_len_a: float, max_len_b: int, int8: bool = False) -> Path:
    """Write ``search.onnx`` (``search.int8.onnx`` with ``int8``: both graphs quantized with
    ``onnxruntime.quantization.quantize_dynamic`` before they go into the operator) to ``folder``,
    for fairseq's maximum length ``max_len_a * S + max_len_b`` (sources of ``S`` tokens); returns it."""
    import onnx
    from onnx import TensorProto, helper

    decoder = model.decoder
    L = len(decoder.layers)
    H, d = decoder.layers[0].num_heads, decoder.layers[0].head_dim
    d_ = decoder.dictionary
    pad, eos = d_.pad(), d_.eos()
    folder = Path(folder)
    S, N, t = 5, 4, min(3, decoder.max_positions() - 1)
    src = torch.tensor([[eos + 1, eos + 2, eos + 3, eos + 4, eos], [eos + 1, eos + 2, eos, pad, pad]],
                       dtype=torch.int32)
    mask = src.ne(pad).int()
    cross_names = [f"{kind}_cross_{i}" for i in range(L) for kind in ("key", "value")]
    self_names = [f"{kind}_self_{i}" for i in range(L) for kind in ("key", "value")]

    def export(graph: nn.Module, example: tuple, names: List[str], outputs: List[str], dynamic: Dict, name: str):
        path = folder / name
        with torch.no_grad():
            write_atomic(path, lambda tmp: torch.onnx.export(
                graph.eval(), example, str(tmp), input_names=names, output_names=outputs, dynamic_axes=dynamic,
                opset_version=OPSET, dynamo=False))
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = path.with_name(path.stem + ".int8.onnx")
            write_atomic(quantized, lambda tmp: quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8))
            path = quantized
        return onnx.load(str(path))

    sentence_axes = {0: "B", 1: "S"}
    encoder = export(SearchEncoderGraph(model.encoder, decoder), (src, mask),
                     ["encoder_input_ids", "encoder_attention_mask"], [f"present_{n}" for n in cross_names],
                     {"encoder_input_ids": sentence_axes, "encoder_attention_mask": sentence_axes,
                      **{f"present_{n}": {0: "B", 2: "S"} for n in cross_names}}, "search_encoder.onnx")
    example = [torch.full((N, 1), eos, dtype=torch.int32), torch.ones(N, S, dtype=torch.int32)]
    for _ in range(L):
        example += [torch.zeros(N, H, t, d), torch.zeros(N, H, t, d)]
    for _ in range(L):
        example += [torch.zeros(N, H, S, d), torch.zeros(N, H, S, d)]
    names = ["input_ids", "encoder_attention_mask", *[f"past_{n}" for n in self_names],
             *[f"past_{n}" for n in cross_names]]
    dynamic = {"input_ids": {0: "N"}, "encoder_attention_mask": {0: "N", 1: "S"}, "logits": {0: "N"},
               **{f"past_{n}": {0: "N", 2: "t"} for n in self_names},
               **{f"present_{n}": {0: "N", 2: "t + 1"} for n in self_names},
               **{f"past_{n}": {0: "N", 2: "S"} for n in cross_names}}
    step = export(SearchDecoderGraph(decoder, max_len_a, max_len_b), tuple(example), names,
                  ["logits", *[f"present_{n}" for n in self_names]], dynamic, "search_decoder.onnx")

    node = helper.make_node(
        "BeamSearch", ["input_ids", "max_length", "min_length", "num_beams", "num_return_sequences",
                       "length_penalty", "repetition_penalty", "vocab_mask", "", "attention_mask"],
        ["sequences", "sequences_scores"], domain="com.microsoft", name="beam_search")
    node.attribute.extend([
        helper.make_attribute("eos_token_id", eos), helper.make_attribute("pad_token_id", pad),
        helper.make_attribute("decoder_start_token_id", eos), helper.make_attribute("no_repeat_ngram_size", 0),
        helper.make_attribute("early_stopping", 1), helper.make_attribute("model_type", 1),
        helper.make_attribute("vocab_size", len(d_)),
        helper.make_attribute("encoder", encoder.graph), helper.make_attribute("decoder", step.graph)])
    scalar = {"max_length": TensorProto.INT32, "min_length": TensorProto.INT32, "num_beams": TensorProto.INT32,
              "num_return_sequences": TensorProto.INT32, "length_penalty": TensorProto.FLOAT,
              "repetition_penalty": TensorProto.FLOAT}
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["B", "S"]),
              *[helper.make_tensor_value_info(n, dtype, [1]) for n, dtype in scalar.items()],
              helper.make_tensor_value_info("vocab_mask", TensorProto.INT32, [len(d_)]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["B", "S"])]
    outputs = [helper.make_tensor_value_info("sequences", TensorProto.INT32, ["B", "R", "T"]),
               helper.make_tensor_value_info("sequences_scores", TensorProto.FLOAT, ["B", "R"])]
    search = helper.make_model(helper.make_graph([node], "resmlp beam search", inputs, outputs),
                               opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    path = folder / ("search.int8.onnx" if int8 else "search.onnx")
    write_atomic(path, lambda tmp: onnx.save(search, str(tmp)))
    return path


class OnnxSearchModel:
    """A ResMLP translation model whose whole beam search runs in ONNX Runtime (see the module
    docstring). ``model``: a fairseq ResMLP model (folded here) or a :class:`FoldedModel`;
    ``int8``: quantized graphs; ``cache_dir``: where the files go (default: a temporary
    directory); ``threads``: ONNX Runtime's intra-op threads (default ``torch.get_num_threads()``)."""

    def __init__(self, model, int8: bool = False, cache_dir: Optional[Path] = None, threads: Optional[int] = None):
        ort = _require_onnxruntime()
        folded = model if isinstance(model, FoldedModel) else fold_for_inference(model)
        self.decoder = folded.decoder
        d = self.decoder.dictionary
        self.pad, self.eos, self.unk = d.pad(), d.eos(), d.unk()
        self.max_source_positions = folded.encoder.max_positions()
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="resmlp_onnx_search_")
            cache_dir = Path(self._tmp.name)
        self.folded, self.int8, self.cache_dir, self._ort = folded, int8, Path(cache_dir), ort
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = threads or torch.get_num_threads()
        self.options.inter_op_num_threads = 1
        self.sessions: Dict[tuple, object] = {}
        self.vocab_mask = np.ones(len(d), dtype=np.int32)
        self.vocab_mask[self.pad] = 0  # fairseq's: padding is never a candidate

    def session(self, max_len_a: float, max_len_b: int):
        """The search for fairseq's maximum length ``max_len_a * S + max_len_b`` (part of the
        decoder graph: exported once per setting, into ``<cache_dir>/max_len_<a>_<b>/``)."""
        key = (float(max_len_a), int(max_len_b))
        if key not in self.sessions:
            folder = self.cache_dir / f"max_len_{key[0]:g}_{key[1]}"
            folder.mkdir(parents=True, exist_ok=True)
            path = export_search(self.folded, folder, *key, int8=self.int8)
            self.sessions[key] = self._ort.InferenceSession(str(path), self.options, providers=["CPUExecutionProvider"])
        return self.sessions[key]

    def generate(self, src_tokens: Tensor, beam: int = 4, max_len_a: float = 0.0, max_len_b: int = 200,
                 min_len: int = 1, lenpen: float = 1.0, unk_penalty: float = 0.0) -> List[List[Dict[str, Tensor]]]:
        """As :func:`resmlp_mt.fast_generate.generate` (``src_tokens`` ``(B, S)``, either padding
        side, each ending in end-of-sentence): per sentence its ``beam`` hypotheses, best first,
        each ``tokens`` (ending in end-of-sentence) and ``score``. The best is fairseq's (up to
        float rounding); the others can differ, since the operator keeps the best ``beam``
        hypotheses finished by the time the search stops where fairseq keeps the first ``beam``.
        ``unk_penalty`` (fairseq's) is not supported: the operator normalises what the graph returns."""
        if unk_penalty:
            raise ValueError("the ONNX search has no unk_penalty: decode with engine='onnx' or 'fast'")
        bsz, src_len = src_tokens.shape
        order = left_align(src_tokens.eq(self.pad))
        if order is not None:  # left padding: every sentence to the front (the operator's mask is any, the
            src_tokens = src_tokens.gather(1, order)  # encoder graph's was traced on right padding)
        if src_len > self.max_source_positions:
            raise ValueError(f"source sentence of {src_len} tokens is longer than the model's "
                             f"--max-source-positions {self.max_source_positions}")
        max_len = min(int(max_len_a * src_len + max_len_b), self.decoder.max_positions() - 1)
        feeds = {"input_ids": src_tokens.numpy().astype(np.int32),
                 # the operator's length counts the start token; fairseq's max_len tokens plus end-of-sentence
                 "max_length": np.array([max_len + 2], np.int32), "min_length": np.array([min_len + 1], np.int32),
                 "num_beams": np.array([beam], np.int32), "num_return_sequences": np.array([beam], np.int32),
                 "length_penalty": np.array([lenpen], np.float32),
                 "repetition_penalty": np.array([1.0], np.float32), "vocab_mask": self.vocab_mask,
                 # the padding of the sources, for the encoder graph and every decoder step (without it the
                 # operator gives the decoder steps a mask of ones)
                 "attention_mask": src_tokens.ne(self.pad).numpy().astype(np.int32)}
        sequences, scores = self.session(max_len_a, max_len_b).run(None, feeds)
        out = []
        for sentence, sentence_scores in zip(sequences, scores):
            hypotheses = []
            for seq, score in zip(sentence, sentence_scores):
                tokens = seq[1:].tolist()  # after the start token; padded after the end
                end = tokens.index(self.eos) + 1 if self.eos in tokens else len(tokens)
                while end and tokens[end - 1] == self.pad:
                    end -= 1
                # the operator's sequences stop before the end-of-sentence (every hypothesis has one:
                # the decoder graph allows nothing else at the maximum length)
                hypotheses.append({"tokens": torch.tensor([*tokens[:end], self.eos]),
                                   "score": torch.tensor(float(score))})
            out.append(hypotheses)
        return out
