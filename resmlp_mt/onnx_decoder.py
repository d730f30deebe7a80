"""A ResMLP translation model in ONNX Runtime, for fast CPU decoding: the encoder (with the
cross-attention keys and values) and the decoder step as two graphs.

Why: at small batches a decoder step in eager PyTorch is mostly per-operator overhead (about
a hundred small operators per step, a few microseconds each), not arithmetic. ONNX Runtime runs
the whole folded step (:class:`~resmlp_mt.fast_generate.FoldedDecoder`: token mixing,
cross-attention, channel MLP for every layer, the output projection, the log-normaliser and a
top-k shortlist of the vocabulary) as one call with C++ kernels, and its dynamic int8
quantization (``MatMulInteger``) packs the weights once. The beam search stays in Python
(:func:`resmlp_mt.fast_generate.generate`); the encoder and every layer's cross-attention keys
and values run once per batch in a second graph (:class:`SourceGraph`).

One step takes, for ``N = n * k`` hypotheses (``n`` sentences, beam ``k``), ``C`` channels,
``H`` heads of ``d`` channels, source length ``S``, vocabulary ``V``:

* ``tokens`` ``(N,)`` int64, the previous output token of each hypothesis;
* ``bias`` ``(n, 1, 1, S)``, the additive padding mask of the sources;
* ``vocab_bias`` ``(V,)``: added to the log-probabilities (``-inf`` for padding, for
  end-of-sentence before ``min_len``; ``-unk_penalty`` for unknown);
* per layer ``i`` (separate inputs, so that the graph slices nothing): ``past_i``
  ``(t + 1, N, C)``, the layer's inputs at the earlier positions after a zero row (so that the
  first step has the same shapes); ``row_i`` ``(t + 1,)``, the token-mixing row of position
  ``t`` for them (0 for the zero row), ``diag_i`` ``(1,)`` its diagonal entry, ``const_i``
  ``(C,)`` the folded constant; ``keys_i`` ``(n, H, d, S)`` and ``values_i`` ``(n, H, S, d)``,
  computed once per batch;

and returns ``top_lprobs`` / ``top_tokens`` ``(N, SHORTLIST)``, ``eos_lprobs`` ``(N,)`` and
``input_i`` ``(N, C)`` (this position's layer inputs, for the history). The beam search needs
the best ``2k`` tokens of each hypothesis: ``SHORTLIST`` bounds the beam at 8.

``OnnxModel(model)`` exports the graphs when built (files per model and precision, in
``cache_dir`` or a temporary directory) and is passed to
:func:`~resmlp_mt.fast_generate.generate` like a model. Float32 gives the hypotheses of the
folded PyTorch model (equal up to float rounding); int8 quantizes every weight matrix
(``onnxruntime.quantization.quantize_dynamic``, per-tensor, signed).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resmlp_core.io import write_atomic

from .fast_generate import (FoldedDecoder, FoldedModel, History, cross_attend, fold_for_inference, key_values,
                            padding_bias, shortlist, vocabulary_bias)
from .padding import left_align

SHORTLIST = 16  # candidates per hypothesis: beams up to SHORTLIST // 2
OPSET = 17


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - installed by make install
        raise ImportError("engine='onnx' needs onnxruntime and onnx: pip install onnxruntime onnx") from err
    return onnxruntime


class DecoderStepGraph(nn.Module):
    """The folded decoder step as a traceable module (the graph that is exported; see the
    module docstring for inputs and outputs)."""

    def __init__(self, decoder: FoldedDecoder):
        super().__init__()
        if decoder.embed_positions is not None:
            raise ValueError("the ONNX decoder supports models without positional embeddings (the default, "
                             "--positional-embeddings none)")
        self.decoder = decoder
        self.eos = decoder.dictionary.eos()

    def forward(self, tokens: Tensor, bias: Tensor, vocab_bias: Tensor, *per_layer: Tensor):
        """``per_layer``: for each layer ``past_i, row_i, diag_i, const_i, keys_i, values_i`` (one
        input each, so that the graph slices nothing)."""
        x = F.embedding(tokens, self.decoder.embed_weight)  # (N, C)
        N = x.size(0)
        inputs: List[Tensor] = []
        for i, layer in enumerate(self.decoder.layers):
            width = len(LAYER_INPUTS)
            history, row, diag, const, keys, values = per_layer[width * i : width * (i + 1)]
            n = keys.size(0)
            inputs.append(x)
            mixed = torch.matmul(row, history.reshape(history.size(0), -1)).view(N, -1) + diag * x
            x = x + const + layer.mix_scale * mixed
            x = x + cross_attend(layer, x.view(n, N // n, -1), keys, values, bias).view(N, -1)
            x = x + layer.channel_mlp(x)
        top_lprobs, top_tokens, eos_lprobs = shortlist(self.decoder.output_projection(x).float(), vocab_bias, SHORTLIST, self.eos)
        return (top_lprobs, top_tokens, eos_lprobs, *inputs)


LAYER_INPUTS = ("past", "row", "diag", "const", "keys", "values")  # the per-layer inputs of a step, in order


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


def export_graphs(model: FoldedModel, folder: Path, int8: bool = False) -> tuple[Path, Path]:
    """Write the two ONNX graphs of ``model`` to ``folder``: ``source.onnx`` (:class:`SourceGraph`)
    and ``decoder_step.onnx`` (:class:`DecoderStepGraph`), plus their int8 versions when
    ``int8``; returns the two files to load."""
    decoder = model.decoder
    L, C = len(decoder.layers), decoder.embed_weight.size(1)
    H, d = decoder.layers[0].num_heads, decoder.layers[0].head_dim
    n, k, S, t = 2, 4, 5, 3
    N = n * k
    pad, eos = decoder.dictionary.pad(), decoder.dictionary.eos()
    # right padding in the example, so that the encoder's padding mask is part of the graph
    src = torch.tensor([[eos + 1, eos + 2, eos + 3, eos + 4, eos], [eos + 1, eos + 2, eos, pad, pad]])
    kv_names = [f"{name}_{i}" for i in range(L) for name in ("keys", "values")]
    source = _export(SourceGraph(model.encoder, decoder), (src,), ["src_tokens"], ["bias", *kv_names],
                     {"src_tokens": {0: "n", 1: "S"}, "bias": {0: "n", 3: "S"},
                      **{name: {0: "n", (3 if name.startswith("keys") else 2): "S"} for name in kv_names}},
                     Path(folder) / "source.onnx", int8)

    example = [torch.full((N,), eos), torch.zeros(n, 1, 1, S), torch.zeros(len(decoder.dictionary))]
    names = ["tokens", "bias", "vocab_bias"]
    dynamic = {"tokens": {0: "N"}, "bias": {0: "n", 3: "S"}}
    for i in range(L):
        example += [torch.zeros(t, N, C), torch.zeros(t), torch.zeros(1), torch.zeros(C), torch.zeros(n, H, d, S),
                    torch.zeros(n, H, S, d)]
        names += [f"{name}_{i}" for name in LAYER_INPUTS]
        dynamic.update({f"past_{i}": {0: "t", 1: "N"}, f"row_{i}": {0: "t"}, f"keys_{i}": {0: "n", 3: "S"},
                        f"values_{i}": {0: "n", 2: "S"}})
    step = _export(DecoderStepGraph(decoder), tuple(example), names,
                   ["top_lprobs", "top_tokens", "eos_lprobs", *[f"input_{i}" for i in range(L)]], dynamic,
                   Path(folder) / "decoder_step.onnx", int8)
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
    """

    def __init__(self, model, int8: bool = False, cache_dir: Optional[Path] = None, threads: Optional[int] = None):
        ort = _require_onnxruntime()
        folded = model if isinstance(model, FoldedModel) else fold_for_inference(model)
        self.decoder, self.int8 = folded.decoder, int8
        self.max_source_positions = folded.encoder.max_positions()
        self.padding_idx = folded.encoder.padding_idx
        decoder = self.decoder
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="resmlp_onnx_")
            cache_dir = Path(self._tmp.name)
        self.paths = export_graphs(folded, Path(cache_dir), int8=int8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.source_session, self.session = (ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                                             for p in self.paths)
        with torch.no_grad():
            A = torch.stack([layer.mix_weight for layer in decoder.layers])  # (L, T, T)
            T = A.size(1)
            self.rows = torch.cat([A.new_zeros(len(decoder.layers), T, 1), A], dim=2)  # [0, A[t, :t], ...]
            self.diag = torch.diagonal(A, dim1=1, dim2=2).contiguous()  # (L, T)
            self.const = torch.stack([layer.mix_const for layer in decoder.layers])  # (L, T, C)

    def encode(self, src_tokens: Tensor):
        """``src_tokens`` ``(B, S)``, either padding side -> ``bias`` ``(B, 1, 1, S)``, ``keys``
        ``(L, B, H, d, S)``, ``values`` ``(L, B, H, S, d)``."""
        if src_tokens.size(1) > self.max_source_positions:
            raise ValueError(f"source sentence of {src_tokens.size(1)} tokens is longer than the model's "
                             f"--max-source-positions {self.max_source_positions}")
        order = left_align(src_tokens.eq(self.padding_idx))
        if order is not None:  # left padding: move every sentence to the front
            src_tokens = src_tokens.gather(1, order)
        bias, *kv = self.source_session.run(None, {"src_tokens": src_tokens.contiguous().numpy()})
        return (torch.from_numpy(bias), torch.stack([torch.from_numpy(a) for a in kv[0::2]]),
                torch.stack([torch.from_numpy(a) for a in kv[1::2]]))

    def decoder_steps(self, src_tokens: Tensor, k: int, max_len: int, unk_penalty: float = 0.0) -> "_OnnxSteps":
        return _OnnxSteps(self, src_tokens, k, max_len, unk_penalty)


class _OnnxSteps:
    """Decoder steps of one batch in ONNX Runtime; :meth:`step` returns a shortlist."""

    full_vocabulary = False

    def __init__(self, model: OnnxModel, src_tokens: Tensor, k: int, max_len: int, unk_penalty: float):
        if 2 * k > SHORTLIST:
            raise ValueError(f"engine='onnx' supports beams up to {SHORTLIST // 2}, got {k}")
        self.model, self.k = model, k
        decoder = model.decoder
        self.bias, self.keys, self.values = model.encode(src_tokens)
        B, C = src_tokens.size(0), decoder.embed_weight.size(1)
        # row 0 stays zero, position j is row j + 1
        self.history = History(len(decoder.layers), max_len + 3, B * k, C)
        self.vocab_bias = {allow: bias.numpy() for allow, bias in vocabulary_bias(decoder.dictionary, unk_penalty).items()}

    def step(self, tokens: Tensor, step: int, allow_eos: bool):
        n, k = tokens.shape[:2]
        m = self.model
        feed = {"tokens": tokens[:, :, step].reshape(-1).contiguous().numpy(), "bias": self.bias.numpy(),
                "vocab_bias": self.vocab_bias[allow_eos]}
        for i, h in enumerate(self.history.buffers):  # contiguous views: nothing is copied
            feed[f"past_{i}"] = h[: step + 1].numpy()
            feed[f"row_{i}"] = m.rows[i, step, : step + 1].numpy()
            feed[f"diag_{i}"] = m.diag[i, step : step + 1].numpy()
            feed[f"const_{i}"] = m.const[i, step].numpy()
            feed[f"keys_{i}"] = self.keys[i].numpy()
            feed[f"values_{i}"] = self.values[i].numpy()
        top_lprobs, top_tokens, eos_lprobs, *inputs = m.session.run(None, feed)
        for h, x in zip(self.history.buffers, inputs):
            h[step + 1] = torch.from_numpy(x)
        width = 2 * k
        return (torch.from_numpy(top_lprobs[:, :width]).view(n, k, width),
                torch.from_numpy(top_tokens[:, :width]).view(n, k, width),
                torch.from_numpy(eos_lprobs).view(n, k))

    def select(self, index: Tensor, used: int) -> None:
        """Keep the sentences ``index``."""
        self.history.select(index, self.k, used + 1)
        self.keys, self.values = self.keys.index_select(1, index), self.values.index_select(1, index)
        self.bias = self.bias.index_select(0, index)

    def reorder(self, flat: Tensor, used: int) -> None:
        """Hypothesis ``i`` continues hypothesis ``flat[i]``."""
        self.history.reorder(flat, used + 1)
