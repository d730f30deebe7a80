"""A ResMLP translation model in ONNX Runtime, for fast CPU decoding: the encoder (with the
cross-attention keys and values) and the decoder step as two graphs.

Why: at small batches a decoder step in eager PyTorch is mostly per-operator overhead (about
a hundred small operators per step, a few microseconds each), not arithmetic. ONNX Runtime runs
the whole folded step (:class:`~resmlp_mt.fast_generate.FoldedDecoder`: token mixing,
cross-attention, channel MLP for every layer, the output projection, the log-normaliser and a
top-k shortlist of the vocabulary, then the beam search's candidates of the step) as one call
with C++ kernels, and its dynamic int8 quantization (``MatMulInteger``) packs the weights once.
The rest of the beam search stays in Python (:func:`resmlp_mt.fast_generate.generate`); the
encoder and every layer's cross-attention keys and values run once per batch in a second graph
(:class:`SourceGraph`).

The step graph is a trace of the PyTorch engine's step, :meth:`FoldedDecoder.step_features
<resmlp_mt.fast_generate.FoldedDecoder.step_features>` (the same code, with the decoding state
passed as tensors), then the output projection (padded with ``-inf`` logits for :func:`shortlist`),
a shortlist of the vocabulary and the search's candidates. It takes, for ``N = n * k`` hypotheses (``n``
sentences, beam ``k``), ``C`` channels, ``H`` heads of ``d`` channels, source length ``S``,
vocabulary ``V``:

* ``tokens`` ``(n, k)`` int64, the previous output token of each hypothesis;
* ``bias`` ``(n, 1, 1, S)``, the additive padding mask of the sources;
* ``bias_columns`` ``(m,)`` int64 and ``bias_values`` ``(m,)``: the step's masks, added to the
  log-probabilities at those tokens (the columns of
  :meth:`~resmlp_mt.fast_generate.SearchRules.vocabulary_bias` where it is not 0: ``-inf`` for
  padding, for end-of-sentence before ``min_len``, for all but end-of-sentence at ``max_len``;
  ``-unk_penalty`` for unknown), without a pass over the vocabulary;
* ``scores`` ``(n, k)``, the hypotheses' sums of log-probabilities (at the first step 0 for the
  first hypothesis of each sentence, ``-inf`` for the others);
* per layer ``i`` (separate inputs, so that the graph slices nothing): its token mixer's
  ``step_inputs`` (:class:`~resmlp_mt.fast_generate.FoldedCrossTokenLinear`: ``past_i``
  ``(t + 1, N, C)``, the layer's inputs at the earlier positions after a zero row, so that the
  first step has the same shapes; ``row_i`` ``(t + 1,)``, the token-mixing row of position ``t``
  for them, 0 for the zero row; ``diag_i`` ``(1,)`` its diagonal entry; ``const_i`` ``(C,)`` the
  folded constant); ``keys_i`` ``(n, H, d, S)`` and ``values_i`` ``(n, H, S, d)``, computed once
  per batch;

and returns ``top_lprobs`` / ``top_tokens`` ``(N, 2k)``, the best ``2k`` tokens of each
hypothesis (``2k`` is read from the shape of ``tokens``); ``cand_scores``, ``cand_beams``,
``cand_tokens`` ``(n, 2k)``, the best ``2k`` continuations of each sentence (:func:`beam_candidates`:
all the beam search needs); and ``entry_i`` ``(n, k, C)`` (what layer ``i``'s token mixer keeps of
this position, for the history). The best ``2k`` of the vocabulary are found in two rounds over
groups of its tokens (:func:`shortlist`): ONNX Runtime's ``TopK`` over the whole vocabulary took
longer than the output projection.

:class:`OnnxSteps` runs it through ONNX Runtime's I/O binding, binding per step only what moves
(at batch 1 a step's Python costs about as much as its graph's small operators, and every array
passed to ``session.run`` costs a few microseconds).

``OnnxModel(model)`` exports the graphs when built (files per model and precision, in
``cache_dir`` or a temporary directory) and is passed to
:func:`~resmlp_mt.fast_generate.generate` like a model. Float32 gives the hypotheses of the
folded PyTorch model (equal up to float rounding); int8 quantizes every weight matrix
(``onnxruntime.quantization.quantize_dynamic``, per-tensor, signed).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resmlp_core.io import write_atomic

from .fast_generate import (Continuations, DecoderSteps, FoldedDecoder, FoldedModel, History, SearchRules,
                            VocabularyBias, fold_for_inference)
from .modules import key_values, padding_bias
from .padding import left_align
from .vocabulary_map import VocabularyMap

OPSET = 17
#: the step graph's outputs before the history entries (``entry_i``, float32), in order, with their
#: element types: the shortlist (``top_*``, per hypothesis), then the search's candidates (per sentence)
STEP_OUTPUTS = {"top_lprobs": np.float32, "top_tokens": np.int64, "cand_scores": np.float32, "cand_beams": np.int64,
                "cand_tokens": np.int64}
#: the outputs the beam search reads (:func:`beam_candidates`)
CANDIDATES = tuple(name for name in STEP_OUTPUTS if name.startswith("cand_"))


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - installed by make install
        raise ImportError("engine='onnx' needs onnxruntime and onnx: pip install onnxruntime onnx") from err
    return onnxruntime


def shortlist_groups(vocabulary_size: int, width: int = 8) -> int:
    """The groups of consecutive tokens that :func:`shortlist` lays the vocabulary out in: a
    multiple of 64 near ``sqrt(V * width)`` (``width``: the ``2k`` of beam 4), which makes its two
    ``TopK`` rounds about equally long (``G`` group maxima, then ``width * R`` candidates, ``R =
    ceil(V / G)`` tokens per group)."""
    return max(64, 64 * round(math.sqrt(vocabulary_size * width) / 64))


def add_vocabulary_bias(lprobs: Tensor, columns: Tensor, values: Tensor) -> Tensor:
    """``lprobs`` ``(..., V)`` plus the step's masks given at their tokens only: ``values`` ``(m,)``
    at ``columns`` ``(m,)`` int64 (the dense bias of
    :meth:`~resmlp_mt.fast_generate.SearchRules.vocabulary_bias` is 0 elsewhere). A scatter of
    ``m`` entries per hypothesis instead of an add over the vocabulary (at batch 128, beam 4, one
    thread: 5.0 -> 4.0 ms for the log-softmax with the masks)."""
    zeros = torch.zeros_like(lprobs[..., :1])  # (..., 1): the leading sizes, dynamic in a trace
    return lprobs.scatter_add(-1, zeros.long() + columns, zeros + values)


def shortlist(lprobs: Tensor, width, groups: Optional[Tuple[int, int]] = None):
    """The ``width`` best tokens of each row of ``lprobs`` ``(N, V)`` (log-probabilities with the
    step's masks): their values, best first, and the tokens, each ``(N, width)``. ``width`` an int
    or, in a trace, a size read from an input (the graph's ``2k``).

    With ``groups`` ``(G, R)`` (``V = G * R``: padded with ``-inf``), in two rounds over the
    vocabulary laid out as ``G`` groups of ``R`` consecutive tokens: the ``width`` groups with the
    best maxima, then the best ``width`` of their ``width * R`` tokens. It returns what one top-k
    over the vocabulary returns (a token among the best ``width`` is the maximum of its group or
    below at most ``width - 1`` better tokens, so its group's maximum is among the best
    ``width``); ties may come in another order. ONNX Runtime's ``TopK`` costs about 3 ns per token
    it reads, more than the output projection at 8k tokens; here it reads ``G + width * R`` per
    hypothesis (about 500 instead of 7,800 at 8k tokens, beam 4) and a max over each group reads
    the rest (the best 8 of 7,796 tokens in ONNX Runtime, one thread: 94 -> 28 us for 4
    hypotheses, 10.6 -> 3.7 ms for 512). Groups of consecutive tokens, not columns of a grid: each
    maximum and each gathered candidate reads contiguous memory (the log-softmax, masks and both
    rounds for 512 hypotheses: 10.5-11.3 -> 8.5-9.7 ms); and every shape is a constant (``G``,
    ``R``) or ``-1``, so the shortlist computes no shapes in the graph."""
    if groups is None:
        return torch.topk(lprobs, width, dim=-1)
    G, R = groups
    maxima = lprobs.reshape(-1, R).amax(-1).reshape(-1, G)  # (N, G)
    _, top_groups = torch.topk(maxima, width, dim=-1)  # (N, width)
    candidates = ((top_groups * R).unsqueeze(-1) + torch.arange(R)).flatten(1)  # (N, width * R): their tokens
    top_lprobs, top = torch.topk(torch.gather(lprobs, 1, candidates), width, dim=-1)
    return top_lprobs, torch.gather(candidates, 1, top)


def beam_candidates(top_lprobs: Tensor, top_tokens: Tensor, scores: Tensor, width):
    """The beam search's candidates of one step, from each hypothesis's shortlist ``top_lprobs``,
    ``top_tokens`` ``(N, W)`` (:func:`shortlist`, ``W = 2k``, ``N = n * k``) and the hypotheses'
    sums of log-probabilities ``scores`` ``(n, k)`` (``width``: ``W``, an int or, in a trace, the
    size :meth:`DecoderStepGraph.forward` read): the best ``W`` continuations of each sentence
    among its ``k * W``, as ``(scores, beams, tokens)``, each ``(n, W)``, best first (equal scores
    in the order of ``(beam, rank)``, as the stable sort of
    :meth:`~resmlp_mt.fast_generate.DecoderSteps.candidates`). At the first step the search gives
    ``scores`` 0 for the first hypothesis and ``-inf`` for the others (all are the same then), so
    that only the first one's tokens are candidates, as fairseq's."""
    sentences = scores.size(0)
    flat = (top_lprobs + scores.reshape(-1, 1)).reshape(sentences, -1)  # (n, k * W): hypothesis b's rank r at b * W + r
    cand_scores, index = torch.topk(flat, width, dim=-1)
    return (cand_scores, torch.div(index, width, rounding_mode="trunc"),
            torch.gather(top_tokens.reshape(sentences, -1), 1, index))


def step_input_names(decoder: FoldedDecoder, layer: int) -> List[str]:
    """The inputs of layer ``layer`` in the step graph, in order: its token mixer's
    ``STEP_INPUTS``, then ``keys``, ``values`` (each suffixed ``_<layer>``)."""
    return [f"{name}_{layer}" for name in (*decoder.layers[layer].token_mixer.STEP_INPUTS, "keys", "values")]


class DecoderStepGraph(nn.Module):
    """:meth:`FoldedDecoder.step <resmlp_mt.fast_generate.FoldedDecoder.step>` as a traceable
    module, with a shortlist of the vocabulary (the graph that is exported; see the module
    docstring for inputs and outputs).

    ``restricted``: the graph for a vocabulary map (:mod:`resmlp_mt.vocabulary_map`). It takes
    three more inputs after ``bias_values``: ``vocabulary`` ``(M,)`` int64, the batch's
    candidate tokens, and the output projection's rows for them, ``output_weight`` ``(C, M)``
    (``C``: the projection's input size, ``R`` with ``--embedding-rank R``) and ``output_bias``
    ``(M,)`` (gathered once per batch); the log-probabilities are normalised over
    the ``M`` candidates and ``top_tokens`` are still token ids (one ``TopK`` over them).

    Without it, the output projection is padded to ``G * R`` tokens (:func:`shortlist_groups`; the
    padding's logits ``-inf``) for the two rounds of :func:`shortlist`."""

    def __init__(self, decoder: FoldedDecoder, restricted: bool = False):
        super().__init__()
        if decoder.embed_positions is not None:
            raise ValueError("the ONNX decoder supports models without positional embeddings (the default, "
                             "--positional-embeddings none)")
        self.decoder, self.restricted = decoder, restricted
        self.layer_sizes = [len(step_input_names(decoder, i)) for i in range(len(decoder.layers))]
        if not restricted:
            projection = decoder.output_projection
            V = projection.out_features
            groups = shortlist_groups(V)
            padding = -V % groups
            self.groups = (groups, (V + padding) // groups)  # (G, R)
            bias = projection.bias if projection.bias is not None else torch.zeros(V)
            self.output_projection = nn.Linear(projection.in_features, V + padding)
            with torch.no_grad():
                self.output_projection.weight.copy_(F.pad(projection.weight.detach(), (0, 0, 0, padding)))
                self.output_projection.bias.copy_(F.pad(bias.detach(), (0, padding), value=-math.inf))

    def forward(self, tokens: Tensor, bias: Tensor, bias_columns: Tensor, bias_values: Tensor, scores: Tensor,
                *inputs: Tensor):
        """``inputs``: with ``restricted``, ``vocabulary``, ``output_weight``, ``output_bias``;
        then for each layer its token mixer's step inputs, ``keys_i``, ``values_i`` (one input each,
        so that the graph slices nothing)."""
        if self.restricted:
            vocabulary, output_weight, output_bias, *per_layer = inputs
        else:
            per_layer = inputs
        x = self.decoder.embed(tokens.unsqueeze(-1))  # (n, k, C): no reshape, so no shape arithmetic in the graph
        layer_inputs, start = [], 0
        for size in self.layer_sizes:
            *mixer_inputs, keys, values = per_layer[start : start + size]
            layer_inputs.append((mixer_inputs, keys, values))
            start += size
        width = 2 * tokens.size(1)  # the beam search's 2k candidates per hypothesis
        features, entries = self.decoder.step_features(x, layer_inputs, bias)
        if not self.restricted:
            logits = self.output_projection(features.flatten(0, 1))  # (N, G * R)
            lprobs = add_vocabulary_bias(F.log_softmax(logits.float(), dim=-1), bias_columns, bias_values)
            top_lprobs, top_tokens = shortlist(lprobs, width, self.groups)
        else:
            logits = torch.matmul(features.flatten(0, 1), output_weight) + output_bias  # (N, M)
            dense = torch.zeros(len(self.decoder.dictionary)).scatter_add(0, bias_columns, bias_values)
            top_lprobs, top_columns = shortlist(F.log_softmax(logits.float(), dim=-1) + dense[vocabulary], width)
            top_tokens = vocabulary[top_columns]
        return (top_lprobs, top_tokens, *beam_candidates(top_lprobs, top_tokens, scores, width), *entries)


class SourceGraph(nn.Module):
    """What runs once per batch, as a traceable module: the encoder and every layer's
    cross-attention keys and values. Input ``src_tokens`` ``(B, S)`` int64, right-padded (or not
    padded); outputs ``bias`` ``(B, 1, 1, S)`` (the additive padding mask) and, per layer,
    ``keys_i`` ``(B, H, d, S)`` and ``values_i`` ``(B, H, S, d)``."""

    def __init__(self, encoder: nn.Module, decoder: FoldedDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, src_tokens: Tensor):
        out = self.encoder(src_tokens)
        encoder_out, padding_mask = out["encoder_out"][0], out["encoder_padding_mask"][0]
        outputs = [padding_bias(padding_mask)]
        for layer in self.decoder.layers:
            outputs.extend(key_values(layer, encoder_out))
        return tuple(outputs)


def _export(graph: nn.Module, example: tuple, names: List[str], outputs: List[str], dynamic: dict, path: Path,
            int8: bool) -> Path:
    """Export ``graph`` to ``path`` (float32), and its int8 quantization beside it when ``int8``
    (``onnxruntime.quantization.quantize_dynamic``: every weight matrix, per-tensor, signed);
    returns the file to load. Each file is written atomically (:func:`resmlp_core.io.write_atomic`)."""
    path = Path(path)

    def write_graph(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(graph.eval(), example, str(tmp), input_names=names, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)

    write_atomic(path, write_graph)
    if not int8:
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write_quantized(tmp: Path) -> None:
        root = logging.getLogger()
        level = root.level
        # the quantizer logs an INFO line per tensor and a hint on the root logger
        root.setLevel(max(level, logging.ERROR))
        try:
            quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)

    quantized = path.with_name(path.stem + ".int8.onnx")
    write_atomic(quantized, write_quantized)
    return quantized


def quantize_rows(weight: Tensor) -> tuple[Tensor, float]:
    """``weight`` float -> ``(int8 weight, scale)``, per-tensor and symmetric like
    ``quantize_dynamic``'s signed weights (``weight ~ scale * int8``)."""
    scale = float(weight.abs().max()) / 127 or 1.0
    return torch.clamp(torch.round(weight / scale), -127, 127).to(torch.int8), scale


def _int8_output_rows(path: Path, scale: float) -> None:
    """In the int8 step graph for a vocabulary map at ``path``: the output projection, a float
    ``MatMul`` on the input ``output_weight`` (``quantize_dynamic`` quantizes stored weights only),
    becomes ONNX Runtime's ``DynamicQuantizeMatMul`` on an int8 ``output_weight`` of scale
    ``scale`` (the rows of :func:`quantize_rows` of the whole projection, gathered per batch)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    matmuls = [i for i, n in enumerate(graph.node) if n.op_type == "MatMul" and n.input[1] == "output_weight"]
    if len(matmuls) != 1:
        raise RuntimeError(f"{path}: expected one MatMul on output_weight, found {len(matmuls)}")
    old = graph.node[matmuls[0]]
    graph.node.remove(old)
    graph.node.insert(matmuls[0], helper.make_node(
        "DynamicQuantizeMatMul", [old.input[0], "output_weight", "output_weight_scale", "output_weight_zero_point"],
        list(old.output), name=old.name + "_int8", domain="com.microsoft"))
    graph.initializer.extend([helper.make_tensor("output_weight_scale", TensorProto.FLOAT, [], [scale]),
                              helper.make_tensor("output_weight_zero_point", TensorProto.INT8, [], [0])])
    next(i for i in graph.input if i.name == "output_weight").type.tensor_type.elem_type = TensorProto.INT8
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    write_atomic(path, lambda tmp: onnx.save(model, str(tmp)))


def export_graphs(model: FoldedModel, folder: Path, int8: bool = False, restricted: bool = False) -> tuple[Path, Path]:
    """Write the two ONNX graphs of ``model`` to ``folder``: ``source.onnx`` (:class:`SourceGraph`)
    and ``decoder_step.onnx`` (:class:`DecoderStepGraph`; ``decoder_step_vmap.onnx``, the graph for
    a vocabulary map, when ``restricted``), plus their int8 versions when ``int8``; returns the two
    files to load. (In the int8 graph for a vocabulary map, the output projection's rows are an
    int8 input, :func:`_int8_output_rows`.)"""
    decoder = model.decoder
    L, C = len(decoder.layers), decoder.embed_weight.size(1)
    H, d = decoder.layers[0].num_heads, decoder.layers[0].head_dim
    n, k, S, t = 2, 4, 5, min(3, decoder.max_positions() - 1)
    N = n * k
    pad, eos = decoder.dictionary.pad(), decoder.dictionary.eos()
    # right padding in the example, so that the encoder's padding mask is part of the graph
    src = torch.tensor([[eos + 1, eos + 2, eos + 3, eos + 4, eos], [eos + 1, eos + 2, eos, pad, pad]])
    kv_names = [f"{name}_{i}" for i in range(L) for name in ("keys", "values")]
    source = _export(SourceGraph(model.encoder, decoder), (src,), ["src_tokens"], ["bias", *kv_names],
                     {"src_tokens": {0: "n", 1: "S"}, "bias": {0: "n", 3: "S"},
                      **{name: {0: "n", (3 if name.startswith("keys") else 2): "S"} for name in kv_names}},
                     Path(folder) / "source.onnx", int8)

    example = [torch.full((n, k), eos), torch.zeros(n, 1, 1, S),
               torch.tensor([pad, eos]), torch.tensor([-math.inf, -1.0]), torch.zeros(n, k)]  # masks at two tokens
    names = ["tokens", "bias", "bias_columns", "bias_values", "scores"]
    dynamic = {"tokens": {0: "n", 1: "k"}, "bias": {0: "n", 3: "S"}, "bias_columns": {0: "m"}, "bias_values": {0: "m"},
               "scores": {0: "n", 1: "k"}}
    if restricted:
        M = 2 * k + 3
        example += [torch.arange(M), torch.zeros(decoder.output_projection.in_features, M), torch.zeros(M)]
        names += ["vocabulary", "output_weight", "output_bias"]
        dynamic.update({"vocabulary": {0: "M"}, "output_weight": {1: "M"}, "output_bias": {0: "M"}})
    history = torch.zeros(t + 1, N, C)
    for i, layer in enumerate(decoder.layers):
        example += [*layer.token_mixer.step_inputs(history, t), torch.zeros(n, H, d, S), torch.zeros(n, H, S, d)]
        names += step_input_names(decoder, i)
        dynamic.update({f"{name}_{i}": axes for name, axes in layer.token_mixer.STEP_INPUTS.items()})
        dynamic.update({f"keys_{i}": {0: "n", 3: "S"}, f"values_{i}": {0: "n", 2: "S"}})
    step = _export(DecoderStepGraph(decoder, restricted), tuple(example), names,
                   [*STEP_OUTPUTS, *[f"entry_{i}" for i in range(L)]], dynamic,
                   Path(folder) / ("decoder_step_vmap.onnx" if restricted else "decoder_step.onnx"), int8)
    if restricted and int8:
        _int8_output_rows(step, quantize_rows(decoder.output_projection.weight.detach())[1])
    return source, step


class OnnxModel:
    """A ResMLP translation model that runs in ONNX Runtime, for
    :func:`~resmlp_mt.fast_generate.generate` (and ``Translator.translate(engine="onnx")``): one
    graph for the encoder and the cross-attention keys/values (once per batch), one for a
    decoder step; the beam search stays in Python.

    Args:
        model: a fairseq ResMLP model (float32; folded here) or a :class:`FoldedModel`.
        int8: run the int8-quantized graphs.
        cache_dir: where the ONNX files go (default: a temporary directory).
        threads: ONNX Runtime's intra-op threads (default: ``torch.get_num_threads()``).
        vocabulary_map: a :class:`~resmlp_mt.vocabulary_map.VocabularyMap` of the model's
            dictionaries: each batch scores its candidates only (see :class:`DecoderStepGraph`).
    """

    def __init__(self, model, int8: bool = False, cache_dir: Optional[Path] = None, threads: Optional[int] = None,
                 vocabulary_map: Optional[VocabularyMap] = None):
        ort = _require_onnxruntime()
        folded = model if isinstance(model, FoldedModel) else fold_for_inference(model)
        self.decoder, self.int8, self.vocabulary_map = folded.decoder, int8, vocabulary_map
        if vocabulary_map is not None and vocabulary_map.target_size != len(self.decoder.dictionary):
            raise ValueError(f"the vocabulary map is for a target dictionary of {vocabulary_map.target_size} "
                             f"tokens, the model's has {len(self.decoder.dictionary)}")
        self.max_source_positions = folded.encoder.max_positions()
        V = len(self.decoder.dictionary)
        self.max_beam = min(V - 1, shortlist_groups(V)) // 2  # the graph's top-k rounds need 2k tokens and groups
        self.padding_idx = folded.encoder.padding_idx
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="resmlp_onnx_")
            cache_dir = Path(self._tmp.name)
        self.paths = export_graphs(folded, Path(cache_dir), int8=int8, restricted=vocabulary_map is not None)
        if vocabulary_map is not None and int8:  # the rows the int8 step graph takes (_int8_output_rows)
            self.output_weight_int8 = quantize_rows(self.decoder.output_projection.weight.detach())[0]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.source_session, self.session = (ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                                             for p in self.paths)
        self._fixed_inputs = {}
        # each decoder layer's token mixer and the names of its inputs in the step graph (the mixer's, keys, values)
        self.layers = [(layer.token_mixer, step_input_names(self.decoder, i))
                       for i, layer in enumerate(self.decoder.layers)]

    def fixed_step_inputs(self, layer: int, t: int) -> tuple:
        """Layer ``layer``'s token mixer's ``fixed_step_inputs(t)`` as numpy arrays, made once per
        layer and position for every batch."""
        key = (layer, t)
        if key not in self._fixed_inputs:
            mixer = self.decoder.layers[layer].token_mixer
            inputs = mixer.fixed_step_inputs(t)
            self._fixed_inputs[key] = tuple(np.ascontiguousarray(v.detach().numpy()) for v in inputs)
        return self._fixed_inputs[key]

    def encode(self, src_tokens: Tensor):
        """``src_tokens`` ``(B, S)``, either padding side -> ``bias`` ``(B, 1, 1, S)`` and, per layer,
        ``keys`` ``(B, H, d, S)`` and ``values`` ``(B, H, S, d)``."""
        if src_tokens.size(1) > self.max_source_positions:
            raise ValueError(f"source sentence of {src_tokens.size(1)} tokens is longer than the model's "
                             f"--max-source-positions {self.max_source_positions}")
        order = left_align(src_tokens.eq(self.padding_idx))
        if order is not None:  # left padding: move every sentence to the front
            src_tokens = src_tokens.gather(1, order)
        bias, *kv = self.source_session.run(None, {"src_tokens": src_tokens.contiguous().numpy()})
        kv = [torch.from_numpy(a) for a in kv]
        return torch.from_numpy(bias), kv[0::2], kv[1::2]

    def decoder_steps(self, src_tokens: Tensor, beam: int, max_len: int) -> "OnnxSteps":
        """The incremental decoder of :func:`~resmlp_mt.fast_generate.generate` for the batch
        ``src_tokens``."""
        return OnnxSteps(self, src_tokens, beam, max_len)


class OnnxSteps(DecoderSteps):
    """Decoder steps of one batch in ONNX Runtime (the traced :meth:`FoldedDecoder.step
    <resmlp_mt.fast_generate.FoldedDecoder.step>`); :meth:`step` returns a shortlist of ``2k``
    tokens per hypothesis, :meth:`candidates` the search's candidates as the graph finds them."""

    def __init__(self, model: OnnxModel, src_tokens: Tensor, k: int, max_len: int):
        if k > model.max_beam:
            raise ValueError(f"engine='onnx' supports beams up to {model.max_beam} with a vocabulary of "
                             f"{len(model.decoder.dictionary)} tokens, got {k}")
        decoder = model.decoder
        bias, keys, values = model.encode(src_tokens)
        history = History(len(decoder.layers), max_len + 1, src_tokens.size(0) * k, decoder.embed_weight.size(1))
        super().__init__(keys, values, bias, history, k)
        self.model = model
        self.restriction = {}
        if model.vocabulary_map is not None:  # the batch's candidates and their output rows, once
            vocabulary = model.vocabulary_map.candidates(src_tokens)
            if vocabulary.numel() < 2 * k:  # the graph's top-k needs 2k columns
                vocabulary = torch.unique(torch.cat([vocabulary, torch.arange(2 * k)]))
            projection = decoder.output_projection
            weight = model.output_weight_int8 if model.int8 else projection.weight.detach()
            self.restriction = {
                "vocabulary": vocabulary.numpy(),
                "output_weight": weight.index_select(0, vocabulary).t().contiguous().numpy(),
                "output_bias": (projection.bias.detach().index_select(0, vocabulary) if projection.bias is not None
                                else torch.zeros(vocabulary.numel())).numpy()}
        self.layers = model.layers
        self._batch_feed()

    def _batch_feed(self) -> None:
        """Bind, once per batch and again when sentences leave it, what every step reads or writes
        at the same place (ONNX Runtime's I/O binding: each array bound per call costs about as
        much as a small operator): the sources' padding bias, every layer's cross-attention keys
        and values and the vocabulary map's restriction (numpy views); buffers for the step's
        ``tokens`` and ``scores`` (filled in place each step), for every output (copied out) and
        for every layer's history entry (written into the history)."""
        n, k = self.bias.size(0), self.k
        feed = {"bias": self.bias.numpy(), **self.restriction}
        for (_, names), keys, values in zip(self.layers, self.keys, self.values):
            feed[names[-2]], feed[names[-1]] = keys.numpy(), values.numpy()
        feed["tokens"], feed["scores"] = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
        self.feed = feed  # the bound arrays stay referenced here
        self.binding = binding = self.model.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        C = self.model.decoder.embed_weight.size(1)
        self.out = {name: np.empty((n, 2 * k) if name in CANDIDATES else (n * k, 2 * k), dtype)
                    for name, dtype in STEP_OUTPUTS.items()}
        self.out.update({f"entry_{i}": np.empty((n, k, C), np.float32) for i in range(len(self.layers))})
        for name, array in self.out.items():
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        self.bound_bias = None  # the step's masks (bias_columns, bias_values): bound when they change

    def select(self, index: np.ndarray, used: int) -> None:
        super().select(index, used)
        self._batch_feed()

    def _run(self, tokens: np.ndarray, step: int, vocabulary_bias: VocabularyBias, scores: np.ndarray,
             outputs: Sequence[str] = CANDIDATES) -> List[np.ndarray]:
        """Run the step graph at position ``step`` (through the binding of :meth:`_batch_feed`)
        and write every layer's history entry; returns copies of ``outputs`` (of ``top_lprobs``,
        ``top_tokens`` and :data:`CANDIDATES`), in that order. Per step, only the history rows and
        the token mixers' fixed inputs of the position are bound anew, and the masks when they
        change."""
        binding, feed = self.binding, self.feed
        feed["tokens"][...] = tokens[:, :, step]
        feed["scores"][...] = scores
        bind = binding.bind_cpu_input
        if self.bound_bias is not vocabulary_bias:  # one per kind of step (SearchRules.vocabulary_bias)
            bind("bias_columns", vocabulary_bias.columns.numpy())
            bind("bias_values", vocabulary_bias.column_values.numpy())
            self.bound_bias = vocabulary_bias  # (the rules keep it, and so its memory)
        for i, ((mixer, names), history) in enumerate(zip(self.layers, self.history.arrays)):
            bind(names[0], history[mixer.first_row(step) : step + 1])  # a view of the history
            for name, value in zip(names[1:-2], self.model.fixed_step_inputs(i, step)):
                bind(name, value)
        self.model.session.run_with_iobinding(binding)
        self.history.write(step, [self.out[f"entry_{i}"] for i in range(len(self.layers))])
        return [self.out[name].copy() for name in outputs]  # the buffers are written again next step

    def step(self, tokens: np.ndarray, step: int, vocabulary_bias: VocabularyBias) -> Continuations:
        top_lprobs, top_tokens = self._run(tokens, step, vocabulary_bias, np.zeros(tokens.shape[:2], np.float32),
                                           ("top_lprobs", "top_tokens"))
        shape = (*tokens.shape[:2], -1)
        return Continuations(top_lprobs.reshape(shape), top_tokens.reshape(shape))

    def candidates(self, tokens: np.ndarray, scores: np.ndarray, step: int, rules: SearchRules):
        """The candidates as the step graph finds them (:func:`beam_candidates`)."""
        if step == 0:  # only the first hypothesis of each sentence (all are the same)
            scores = np.zeros(tokens.shape[:2], np.float32)
            scores[:, 1:] = -np.inf
        return tuple(self._run(tokens, step, rules.vocabulary_bias(step), scores))
