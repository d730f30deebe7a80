"""The decoder step of a ResMLP translation model in ONNX Runtime, for fast CPU decoding.

Why: at small batches a decoder step in eager PyTorch is mostly per-operator overhead (about
a hundred small operators per step, a few microseconds each), not arithmetic. ONNX Runtime runs
the whole folded step (:class:`~resmlp_mt.fast_generate.FoldedDecoder`: token mixing,
cross-attention, channel MLP for every layer, the output projection, the log-normaliser and a
top-k shortlist of the vocabulary) as one call with C++ kernels, and its dynamic int8
quantization (``MatMulInteger``) packs the weights once. The beam search stays in Python
(:func:`resmlp_mt.fast_generate.generate`), the encoder in PyTorch.

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

``OnnxModel(model)`` exports the graph on first use (a file per model and precision, cached
beside the model folder or in a temporary directory) and is passed to
:func:`~resmlp_mt.fast_generate.generate` like a model. Float32 gives the hypotheses of the
folded PyTorch model (equal up to float rounding); int8 quantizes every weight matrix
(``onnxruntime.quantization.quantize_dynamic``, per-tensor, signed).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fast_generate import (FoldedDecoder, FoldedModel, _select_rows, fold_for_inference, quantize_int8, shortlist,
                            vocabulary_bias)

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
            history, row, diag, const, keys, values = per_layer[PER_LAYER * i : PER_LAYER * (i + 1)]
            n = keys.size(0)
            k = N // n
            inputs.append(x)
            mixed = torch.matmul(row, history.reshape(history.size(0), -1)).view(N, -1) + diag * x
            x = x + const + layer.mix_scale * mixed
            q = layer.q_proj(x).view(n, k, layer.heads, layer.head_dim).transpose(1, 2)  # (n, H, k, d)
            weights = torch.softmax(torch.matmul(q, keys) + bias, dim=-1)  # (n, H, k, S)
            x = x + layer.out_proj(torch.matmul(weights, values).transpose(1, 2).reshape(N, -1))
            x = x + layer.fc2(layer.activation_fn(layer.fc1(x)))
        top_lprobs, top_tokens, eos_lprobs = shortlist(self.decoder.output_projection(x).float(), vocab_bias, SHORTLIST, self.eos)
        return (top_lprobs, top_tokens, eos_lprobs, *inputs)


PER_LAYER = 6  # past, row, diag, const, keys, values
LAYER_INPUTS = ("past", "row", "diag", "const", "keys", "values")


def export_decoder_step(model: FoldedModel, path: Path, int8: bool = False, heads_example: int = 2) -> Path:
    """Write the ONNX graph of ``model``'s decoder step to ``path`` (float32), and its int8
    quantization beside it when ``int8``; returns the file to load."""
    decoder = model.decoder
    graph = DecoderStepGraph(decoder).eval()
    L, C = len(decoder.layers), decoder.embed_weight.size(1)
    H, d = decoder.layers[0].heads, decoder.layers[0].head_dim
    n, k, S, t = 2, 4, 5, 3
    N = n * k
    example = [torch.full((N,), decoder.dictionary.eos()), torch.zeros(n, 1, 1, S), torch.zeros(len(decoder.dictionary))]
    names = ["tokens", "bias", "vocab_bias"]
    dynamic = {"tokens": {0: "N"}, "bias": {0: "n", 3: "S"}}
    for i in range(L):
        example += [torch.zeros(t, N, C), torch.zeros(t), torch.zeros(1), torch.zeros(C), torch.zeros(n, H, d, S),
                    torch.zeros(n, H, S, d)]
        names += [f"{name}_{i}" for name in LAYER_INPUTS]
        dynamic.update({f"past_{i}": {0: "t", 1: "N"}, f"row_{i}": {0: "t"}, f"keys_{i}": {0: "n", 3: "S"},
                        f"values_{i}": {0: "n", 2: "S"}})
    example = tuple(example)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with torch.no_grad():
        torch.onnx.export(graph, example, str(tmp), input_names=names,
                          output_names=["top_lprobs", "top_tokens", "eos_lprobs", *[f"input_{i}" for i in range(L)]],
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    os.replace(tmp, path)
    if not int8:
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_name(path.stem + ".int8.onnx")
    tmp = quantized.with_name(f".{quantized.name}.{os.getpid()}.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantizer logs an INFO line per tensor and a hint on the root logger
    try:
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    os.replace(tmp, quantized)
    return quantized


class OnnxModel:
    """A ResMLP translation model whose decoder steps run in ONNX Runtime, for
    :func:`~resmlp_mt.fast_generate.generate` (and ``Translator.translate(engine="onnx")``).

    Args:
        model: a fairseq ResMLP model (float32; folded here) or a :class:`FoldedModel`.
        int8: run the int8-quantized graph, and the encoder and the cross-attention key/value
            projections (once per batch, in PyTorch) with int8 linear layers too.
        cache_dir: where the ONNX files go (default: a temporary directory).
        threads: ONNX Runtime's intra-op threads (default: ``torch.get_num_threads()``).
    """

    def __init__(self, model, int8: bool = False, cache_dir: Optional[Path] = None, threads: Optional[int] = None):
        ort = _require_onnxruntime()
        folded = model if isinstance(model, FoldedModel) else fold_for_inference(model)
        self.encoder, self.decoder, self.int8 = folded.encoder, folded.decoder, int8
        decoder = self.decoder
        # the encoder and the cross-attention keys/values run once per batch, in PyTorch (int8: fbgemm)
        projections = nn.ModuleList([nn.ModuleList([layer.k_proj, layer.v_proj]) for layer in decoder.layers])
        if int8:
            self.encoder, projections = quantize_int8(self.encoder), quantize_int8(projections)
        self.key_value_projections = [(kv[0], kv[1]) for kv in projections]
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="resmlp_onnx_")
            cache_dir = Path(self._tmp.name)
        self.path = export_decoder_step(folded, Path(cache_dir) / "decoder_step.onnx", int8=int8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            A = torch.stack([layer.mix_weight for layer in decoder.layers])  # (L, T, T)
            T = A.size(1)
            self.rows = torch.cat([A.new_zeros(len(decoder.layers), T, 1), A], dim=2)  # [0, A[t, :t], ...]
            self.diag = torch.diagonal(A, dim1=1, dim2=2).contiguous()  # (L, T)
            self.const = torch.stack([layer.mix_const for layer in decoder.layers])  # (L, T, C)

    def decoder_steps(self, encoder_out: Tensor, padding_mask: Optional[Tensor], k: int, max_len: int,
                      unk_penalty: float = 0.0) -> "_OnnxSteps":
        return _OnnxSteps(self, encoder_out, padding_mask, k, max_len, unk_penalty)


class _OnnxSteps:
    """Decoder steps of one batch in ONNX Runtime; :meth:`step` returns a shortlist."""

    full_vocabulary = False

    def __init__(self, model: OnnxModel, encoder_out: Tensor, padding_mask: Optional[Tensor], k: int, max_len: int,
                 unk_penalty: float):
        if 2 * k > SHORTLIST:
            raise ValueError(f"engine='onnx' supports beams up to {SHORTLIST // 2}, got {k}")
        self.model, self.k = model, k
        decoder = model.decoder
        S, B, C = encoder_out.shape
        layers = decoder.layers
        H, d = layers[0].heads, layers[0].head_dim
        kv = model.key_value_projections
        self.keys = torch.stack([k_proj(encoder_out).view(S, B, H, d).permute(1, 2, 3, 0) for k_proj, _ in kv]).contiguous()
        self.values = torch.stack([v_proj(encoder_out).view(S, B, H, d).permute(1, 2, 0, 3) for _, v_proj in kv]).contiguous()
        self.bias = encoder_out.new_zeros(B, 1, 1, S)
        if padding_mask is not None:
            self.bias.masked_fill_(padding_mask.view(B, 1, 1, S), -math.inf)
        # history per layer: (max_len + 3, n * k, C); row 0 stays zero, position j is row j + 1
        self.history = [encoder_out.new_zeros(max_len + 3, B * k, C) for _ in layers]
        self.spare = [torch.empty_like(h) for h in self.history]
        self.vocab_bias = {allow: bias.numpy() for allow, bias in vocabulary_bias(decoder.dictionary, unk_penalty).items()}

    def step(self, tokens: Tensor, step: int, allow_eos: bool):
        n, k = tokens.shape[:2]
        m = self.model
        feed = {"tokens": tokens[:, :, step].reshape(-1).contiguous().numpy(), "bias": self.bias.numpy(),
                "vocab_bias": self.vocab_bias[allow_eos]}
        for i, h in enumerate(self.history):  # contiguous views: nothing is copied
            feed[f"past_{i}"] = h[: step + 1].numpy()
            feed[f"row_{i}"] = m.rows[i, step, : step + 1].numpy()
            feed[f"diag_{i}"] = m.diag[i, step : step + 1].numpy()
            feed[f"const_{i}"] = m.const[i, step].numpy()
            feed[f"keys_{i}"] = self.keys[i].numpy()
            feed[f"values_{i}"] = self.values[i].numpy()
        top_lprobs, top_tokens, eos_lprobs, *inputs = m.session.run(None, feed)
        for h, x in zip(self.history, inputs):
            h[step + 1] = torch.from_numpy(x)
        width = 2 * k
        return (torch.from_numpy(top_lprobs[:, :width]).view(n, k, width),
                torch.from_numpy(top_tokens[:, :width]).view(n, k, width),
                torch.from_numpy(eos_lprobs).view(n, k))

    def select(self, index: Tensor, used: int) -> None:
        """Keep the sentences ``index``."""
        k = self.k
        rows = (index.unsqueeze(1) * k + torch.arange(k)).view(-1)
        self.history = [_select_rows(h, used + 1, rows) for h in self.history]
        self.keys, self.values = self.keys.index_select(1, index), self.values.index_select(1, index)
        self.bias = self.bias.index_select(0, index)

    def reorder(self, flat: Tensor, used: int) -> None:
        """Hypothesis ``i`` continues hypothesis ``flat[i]``."""
        for i, h in enumerate(self.history):
            if self.spare[i].shape != h.shape:
                self.spare[i] = torch.empty_like(h)
            torch.index_select(h[: used + 1], 1, flat, out=self.spare[i][: used + 1])
            self.history[i], self.spare[i] = self.spare[i], h
