"""msif: multi-stage influence functions, traced from a finetuned prediction back to pretraining data.

The sign convention (method.md, one everywhere): a score is the *removal effect*
``score[t, i] = f_t(trained without z_i) - f_t(trained with all)``, predicted to first order,
with the 1/n in it, stored with shape ``(n_test, n_pretrain)``.
"""

__version__ = "0.1.0"

SCORE_CONVENTION = (
    "removal effect: score[t, i] ~= test_loss_t(without z_i) - test_loss_t(with all), "
    "first order, 1/n included, shape (n_test, n_pretrain); positive = proponent (helpful)"
)
