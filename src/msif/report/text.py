"""The text experiment's part of the HTML report: sentences instead of images, word-level highlights,
and the case-deletion table and plot of the TracIn family (see msif.influence.tracin, msif.validation.case_deletion)."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from msif import io
from msif.experiments.text import PAD
from msif.report.html import png, table

METHOD_ORDER = ("tracin_we", "tracin_we_topk", "tracin", "tracin_last", "if_last", "random")
LAST_LAYER = ("tracin_last", "if_last")


def words_of(x: torch.Tensor, vocab: list[str]) -> list[int]:
    return [int(i) for i in x.long().tolist() if i != PAD]


def highlight(ids: list[int], vocab: list[str], word_score: np.ndarray | None = None, scale: float = 1.0) -> str:
    """A sentence as HTML; with ``word_score`` (per vocabulary word) each word's background is blue for a
    positive score (a proponent word), red for a negative one, its opacity |score| / scale."""
    out = []
    for i in ids:
        w = html.escape(vocab[i])
        if word_score is None or word_score[i] == 0 or scale <= 0:
            out.append(w)
            continue
        s = float(word_score[i])
        a = min(1.0, abs(s) / scale)
        rgb = "33,102,172" if s > 0 else "178,24,43"
        out.append(f"<span title='{s:+.3e}' style='background:rgba({rgb},{a:.2f});border-radius:3px;padding:0 2px'>{w}</span>")
    return " ".join(out)


def pretraining_examples(data: dict, vocab: list[str], scores: torch.Tensor, test_ids: torch.Tensor, t: int, top: int) -> str:
    """A finetuning test text and the pretraining chunks with the highest (proponents) and lowest
    (opponents) multi-stage scores, as text."""
    order = torch.argsort(scores[t], descending=True)
    label = int(data["finetune_test.y"][t])
    rows = [f"<p><b>test text</b> (id {int(test_ids[t])}, label {label}): "
            f"<i>{highlight(words_of(data['finetune_test.x'][t], vocab), vocab)}</i></p><table>"
            "<tr><th>score</th><th>chunk id</th><th class='l'>pretraining chunk</th></tr>"]
    for kind, idx in (("proponent", order[:top].tolist()), ("opponent", order[-top:].flip(0).tolist())):
        for i in idx:
            rows.append(f"<tr><td>{float(scores[t, i]):+.2e}</td><td>{int(data['pretrain.ids'][i])}</td>"
                        f"<td class='l'>{kind}: {highlight(words_of(data['pretrain.x'][i], vocab), vocab)}</td></tr>")
    return "".join(rows) + "</table>"


def case_deletion_figure(summary: pd.DataFrame) -> str:
    """Mean Δ predicted-class probability against k: deleting top-k proponents (left), bottom-k opponents (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    for ax, sel, title in ((axes[0], "top", "delete top-k proponents (lower = better)"),
                           (axes[1], "bottom", "delete top-k opponents (higher = better)")):
        for j, method in enumerate(METHOD_ORDER):
            d = summary[(summary.method == method) & (summary.selection == ("random" if method == "random" else sel))].sort_values("k")
            if d.empty:
                continue
            ax.errorbar(d.k, d.delta_prob, yerr=d.delta_prob_se, marker="o", capsize=3, label=method,
                        ls="--" if method == "random" else "-", color="0.5" if method == "random" else f"C{j}")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set(xlabel="k deleted", ylabel="mean Δ p(predicted class)", title=title)
    axes[1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return png(fig)


def ratio_lines(summary: pd.DataFrame) -> str:
    """TracIn-WE's mean |Δp| against each last-layer method's, per k and selection."""
    rows = []
    for sel in ("top", "bottom"):
        for k in sorted(summary.k.unique()):
            s = summary[(summary.selection == sel) & (summary.k == k)].set_index("method").delta_prob.abs()
            if "tracin_we" in s:
                rows.append({"selection": sel, "k": int(k), **{f"TracIn-WE / {m}": float(s["tracin_we"] / s[m]) for m in LAST_LAYER if m in s}})
    return table(pd.DataFrame(rows), "{:.3g}")


def word_level_examples(scores_path: Path, data: dict, top: int) -> str:
    """For each stored test text: its words coloured by their summed TracIn-WE word score over the top
    proponents, then those proponent training sentences with each shared word coloured by its word score."""
    art = io.load_tensors(scores_path)
    meta = io.load_meta(scores_path)
    vocab, words = meta["vocab"], art["words"]
    we = art["scores.tracin_we"]
    parts = []
    for t in range(words.shape[0]):
        order = torch.argsort(we[t], descending=True)[:top].tolist()
        ws = words[t].numpy()
        scale = float(np.abs(ws[order]).max()) if order else 1.0
        pred = int(art["predicted"][t])
        test_words = words_of(data["finetune_test.x"][t], vocab)
        parts.append(f"<p><b>test text</b> (id {int(art['test_ids'][t])}, label {int(art['test_y'][t])}, predicted {pred}): "
                     f"<i>{highlight(test_words, vocab, ws[order].sum(0), scale * max(1, len(order) / 2))}</i></p><table>"
                     "<tr><th>TracIn-WE</th><th>id</th><th>label</th><th class='l'>top proponent (shared words coloured by word score)</th></tr>")
        for i in order:
            parts.append(f"<tr><td>{float(we[t, i]):+.2e}</td><td>{int(data['finetune.ids'][i])}</td><td>{int(data['finetune.y'][i])}</td>"
                         f"<td class='l'>{highlight(words_of(data['finetune.x'][i], vocab), vocab, ws[i], scale)}</td></tr>")
        parts.append("</table>")
    return "".join(parts)


def tracin_section(config: dict, tracin: dict[str, str], data: dict) -> str:
    """The report's TracIn part for a text run: ``tracin`` names its ``scores``, ``train`` and ``summary`` files."""
    train_meta = io.load_meta(tracin["train"])
    summary = pd.read_csv(tracin["summary"])
    tr = config["tracin"]
    view = summary.pivot_table(index=["method", "selection"], columns="k", values=["delta_prob", "delta_loss"]).reset_index()
    view.columns = [" ".join(str(c) for c in col if c != "").replace("delta_prob", "Δp").replace("delta_loss", "Δloss") for col in view.columns]
    view = view.sort_values(["selection", "method"]).reset_index(drop=True)
    return "".join([
        "<h2>TracIn family on the classifier's own training texts</h2>",
        f"<p>The classifier (E and Θ) is finetuned by SGD from the pretrained E ({tr['epochs']} epochs, batch {tr['batch_size']}, "
        f"η = {tr['lr']} · {tr['lr_decay']}<sup>epoch</sup>); test accuracy {train_meta['test_accuracy']:.3f}. Scores are computed for "
        f"the first {tr['n_test']} test texts w.r.t. each one's predicted class. Positive = proponent (removing it raises the test "
        "loss), for every method. <i>TracIn</i>: all parameters; <i>tracin_last</i>: final layer; <i>tracin_we</i>: word-embedding "
        f"rows of shared words; <i>tracin_we_topk</i>: each example's {tr['top_tokens']} largest word-gradient rows; "
        "<i>if_last</i>: influence function on the final layer.</p>",
        "<h3>Case deletion</h3><p>Delete each method's top-k proponents (or opponents) of a test text, retrain the classifier "
        f"with seeds {tr['seeds']} (same start and batch order with and without the deletion), and average the change of the "
        "predicted class's probability Δp and loss Δloss = −Δlog p over seeds, then over test texts. Random deletions are the noise floor.</p>",
        case_deletion_figure(summary),
        table(view, "{:.3g}"),
        "<p>Ratio of mean |Δp| (TracIn-WE over each last-layer method; &gt; 1: TracIn-WE moves the prediction more):</p>",
        ratio_lines(summary),
        "<h3>Word-level influence (TracIn-WE)</h3><p>Blue: a word whose gradient agrees with the test text's (proponent word); "
        "red: disagrees. Hover a word for its score.</p>",
        word_level_examples(Path(tracin["scores"]), data, config["report"]["top"]),
    ])
