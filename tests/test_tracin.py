"""TracIn, TracIn-WE and case deletion on a tiny float64 text classifier, against dense oracles."""

import pytest
import torch

from msif.experiments.text import PAD, text_model
from msif.influence.tracin import last_layer_slice, losses, per_example_grads, sgd, top_tokens, tracin_scores, word_gradients
from msif.task.data import Split
from msif.validation.case_deletion import deletion_sets, predicted_class_probs, summarize

DT = torch.float64
VOCAB, DIM, LEN = 9, 3, 6


def sentences(n: int, gen: torch.Generator) -> Split:
    ids = torch.randint(0, VOCAB, (n, LEN), generator=gen)
    lengths = torch.randint(2, LEN + 1, (n,), generator=gen)
    ids[torch.arange(LEN)[None, :] >= lengths[:, None]] = PAD
    return Split(ids.to(DT), torch.randint(0, 2, (n,), generator=gen), torch.arange(n))


@pytest.fixture(scope="module")
def trained():
    gen = torch.Generator().manual_seed(0)
    model = text_model(VOCAB, DIM, window=1, n_classes=2, head_hidden=2)  # last layer != whole head
    e, _, theta = model.init_params(0, DT, torch.device("cpu"))
    train, test = sentences(14, gen), sentences(4, gen)
    final, ckpts = sgd(model, torch.cat([e, theta]), train, epochs=3, batch_size=4, lr=0.3, lr_decay=0.7, l2=0.01, seed=0)
    return model, train, test, final, ckpts


def test_tracin_we_equals_dense_embedding_rows(trained):
    """TracIn-WE from word gradients == full-gradient TracIn restricted to E's rows (the dense oracle)."""
    model, train, test, final, ckpts = trained
    scores, _ = tracin_scores(model, ckpts, final, train, test.x, test.y, top_k=VOCAB, l2=0.01)
    p_e = model.w_spec.numel
    dense = sum(c.lr * per_example_grads(model, c.params, test.x, test.y)[:, :p_e]
                @ per_example_grads(model, c.params, train.x, train.y)[:, :p_e].T for c in ckpts)
    torch.testing.assert_close(scores["tracin_we"], dense, rtol=1e-10, atol=1e-14)
    assert scores["tracin_we"].abs().max() > 1e-5
    # all parameters = embedding rows + head, and the last layer is a strict part of the head
    full = sum(c.lr * per_example_grads(model, c.params, test.x, test.y) @ per_example_grads(model, c.params, train.x, train.y).T
               for c in ckpts)
    torch.testing.assert_close(scores["tracin"], full, rtol=1e-10, atol=1e-14)
    sl = last_layer_slice(model)
    assert p_e < sl.start and sl.stop == final.numel()
    # top-k with k >= vocabulary keeps every row
    torch.testing.assert_close(scores["tracin_we_topk"], scores["tracin_we"], rtol=1e-12, atol=1e-15)


def test_word_scores_sum_to_example_score_and_live_on_shared_words(trained):
    model, train, test, final, ckpts = trained
    scores, words = tracin_scores(model, ckpts, final, train, test.x, test.y, top_k=2, l2=0.01, word_tests=3)
    assert words.shape == (3, len(train.y), VOCAB)
    torch.testing.assert_close(words.sum(-1), scores["tracin_we"][:3], rtol=1e-10, atol=1e-14)
    for t in range(3):
        in_test = set(test.x[t].long().tolist()) - {PAD}
        for i in range(len(train.y)):
            shared = in_test & (set(train.x[i].long().tolist()) - {PAD})
            nonzero = set(torch.nonzero(words[t, i]).flatten().tolist())
            assert nonzero <= shared, (t, i, nonzero, shared)
            if shared:
                assert nonzero, (t, i)


def test_word_gradients_are_embedding_gradient_rows(trained):
    model, train, _, final, _ = trained
    dense = per_example_grads(model, final, train.x, train.y)[:, : model.w_spec.numel].view(len(train.y), VOCAB, DIM)
    torch.testing.assert_close(word_gradients(model, final, train.x, train.y), dense, rtol=1e-10, atol=1e-14)


def test_top_tokens_keeps_largest_rows():
    g = torch.tensor([[[3.0, 0.0], [0.0, 1.0], [0.0, 0.0], [2.0, 2.0]]], dtype=DT)
    kept = top_tokens(g, 2)
    torch.testing.assert_close(kept, torch.tensor([[[3.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 2.0]]], dtype=DT))


def test_sign_one_sgd_step_on_z_changes_test_loss_by_minus_tracin(trained):
    """Method.md's sign: one SGD step on z with rate η lowers the test loss by ≈ η ∇l(z)·∇l(x) = TracIn(z, x),
    so removing z (undoing the step) raises it by TracIn: positive = proponent."""
    model, train, test, final, _ = trained
    eta = 1e-5
    signs = set()
    for i in range(6):
        z = train.subset(torch.tensor([i]))
        after, ckpts = sgd(model, final, z, epochs=1, batch_size=1, lr=eta, lr_decay=1.0, l2=0.0, seed=0)
        scores, _ = tracin_scores(model, ckpts, after, z, test.x, test.y, top_k=VOCAB, damping=1e-3)
        removal_effect = losses(model, final, test.x, test.y) - losses(model, after, test.x, test.y)  # f(without step) − f(with)
        torch.testing.assert_close(scores["tracin"][:, 0], removal_effect, rtol=1e-3, atol=1e-12)
        signs |= set(torch.sign(removal_effect).tolist())
    assert signs == {-1.0, 1.0}  # both proponents and opponents occur, each with the right sign


def test_if_last_matches_leave_one_out_of_the_last_layer(trained):
    """IF-last = first-order removal effect of retraining the final layer (E and the hidden layer fixed)
    to its optimum without z, in test-loss units (1/m inside).

    Two checks on every one of the m = 14 training examples and 4 test examples:
    - the derivative: IF-last is exactly -d f/d c_i at c_i = 1 (c_i z_i's weight in the mean, c_i = 0 its removal),
      so a central difference with c_i = 1 ± 1e-3 agrees to 1e-5 relative on each score's own scale (measured ≤ 7e-8:
      the O(δ²) truncation; the Newton fits' noise, ~1e-13/λ_min/δ ≈ 1e-9, is far below the smallest |score|, 4e-3).
      A factor 2, a sign or a wrong L2 fails it.
    - the whole removal (c_i = 0): first order leaves an O(1/m²) remainder on an O(1/m) effect, at m = 14 up to 35%
      of the prediction here (measured max 0.354); bound 0.4, and the sign always agrees.
    """
    from oracles import newton_minimize

    model, train, test, final, _ = trained
    sl = last_layer_slice(model)
    l2 = 0.01

    def fit(weights, start=final[sl]):
        def obj(q):
            p = torch.cat([final[: sl.start], q, final[sl.stop :]])
            return (weights * losses(model, p, train.x, train.y)).sum() / len(train.y) + 0.5 * l2 * p[model.w_spec.numel :].pow(2).sum()
        return torch.cat([final[: sl.start], newton_minimize(obj, start), final[sl.stop :]])

    opt = fit(torch.ones(len(train.y), dtype=DT))
    scores, _ = tracin_scores(model, [type("C", (), {"params": opt, "lr": 1.0})()], opt, train, test.x, test.y, top_k=VOCAB, l2=l2)
    base = losses(model, opt, test.x, test.y)
    delta = 1e-3

    def test_losses_at(i, c):
        w = torch.ones(len(train.y), dtype=DT)
        w[i] = c
        return losses(model, fit(w, start=opt[sl]), test.x, test.y)  # warm start at the optimum

    for i in range(len(train.y)):
        predicted = scores["if_last"][:, i]
        derivative = (test_losses_at(i, 1 - delta) - test_losses_at(i, 1 + delta)) / (2 * delta)  # d f / d(removal)
        assert ((derivative - predicted).abs() <= 1e-5 * predicted.abs()).all(), (i, predicted, derivative)
        actual = test_losses_at(i, 0.0) - base
        assert (torch.sign(actual) == torch.sign(predicted)).all() and ((actual - predicted).abs() <= 0.4 * predicted.abs()).all(), (
            i, predicted, actual)


def test_vmapped_deletion_training_equals_one_model_at_a_time(trained):
    model, train, test, _, ckpts = trained
    w = torch.ones(3, len(train.y), dtype=DT)
    w[1, [0, 4]] = 0.0
    w[2, 5] = 0.0
    args = {"epochs": 2, "batch_size": 4, "lr": 0.3, "lr_decay": 0.7, "l2": 0.01}
    start = ckpts[0].params
    many, _ = sgd(model, start, train, seed=3, weights=w, **args)
    for r in range(3):
        one, _ = sgd(model, start, train, seed=3, weights=w[r : r + 1], **args)
        torch.testing.assert_close(many[r], one[0], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(many[0], many[1])
    plain, _ = sgd(model, start, train, seed=3, **args)
    torch.testing.assert_close(many[0], plain, rtol=1e-12, atol=1e-14)
    p = predicted_class_probs(model, many, test.x, test.y)
    assert p.shape == (3, len(test.y)) and ((p > 0) & (p < 1)).all()


def test_deletion_sets_rank_proponents_first_and_summary():
    import pandas as pd

    scores = {"a": torch.tensor([[0.1, 0.5, -0.2, 0.3], [1.0, -1.0, 0.0, 2.0]], dtype=DT)}
    sets = {s["set_id"]: s for s in deletion_sets(scores, [2], seed=0)}
    assert sets["t0-a-top-k2"]["members"] == [1, 3]
    assert sets["t0-a-bottom-k2"]["members"] == [2, 0]
    assert sets["t1-a-top-k2"]["members"] == [3, 0]
    assert len(sets["t1-random-random-k2"]["members"]) == 2
    table = pd.DataFrame({"method": ["a"] * 4, "selection": ["top"] * 4, "k": [2] * 4, "test_index": [0, 0, 1, 1],
                          "seed": [0, 1, 0, 1], "delta_prob": [-0.1, -0.3, 0.0, -0.2], "delta_loss": [0.2, 0.4, 0.0, 0.2]})
    row = summarize(table).iloc[0]
    assert row.delta_prob == pytest.approx(-0.15) and row.delta_loss == pytest.approx(0.2) and row.n_tests == 2
