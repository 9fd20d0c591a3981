"""The human side of a comparison report: Markdown and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jobs.metrics import better


def markdown(r: dict[str, Any]) -> str:
    champ, chall = r["champion"], r["challenger"]
    lines = [
        f"# A/B comparison: {r['job']} on {r['date']}",
        "",
        f"**Verdict: {r['verdict']}**",
        "",
        *[f"- {reason}" for reason in r["reasons"]],
        "",
        f"Champion `{champ['alias']}` = v{champ['version']}, challenger `{chall['alias']}` = v{chall['version']}, "
        f"{r['rows']:,} labeled rows of `{r['labeled_table']}`, {r['bootstrap']['resamples']} paired bootstrap "
        f"resamples by {r['bootstrap']['unit']}, {r['confidence']:.0%} intervals.",
        *_excluded(r.get("excluded")),
        "",
        "| metric | champion | challenger | difference | interval | gain |",
        "|---|---:|---:|---:|---|---|",
    ]
    for m, d in r["differences"].items():
        gain = better(m, d["diff"])
        word = "better" if gain > 0 else "worse" if gain < 0 else "same"
        lines.append(
            f"| {m} | {r['metrics']['champion'][m]:.4f} | {r['metrics']['challenger'][m]:.4f} | "
            f"{d['diff']:+.4f} | [{d['low']:+.4f}, {d['high']:+.4f}] | {word} |"
        )
    if r.get("mcnemar"):
        mc = r["mcnemar"]
        lines += [
            "",
            f"McNemar's exact test on accuracy: champion alone right on {mc['champion_only_right']} rows, "
            f"challenger alone on {mc['challenger_only_right']}, p = {mc['p_value']:.4g}.",
        ]
    if r.get("segments"):
        primary = r["policy"]["primary_metric"]
        lines += [
            "",
            f"## By {r['segments']['column']} ({primary})",
            "",
            "| segment | rows | champion | challenger |",
            "|---|---:|---:|---:|",
        ]
        for value, s in sorted(r["segments"]["values"].items()):
            lines.append(f"| {value} | {s['rows']:,} | {s['champion'][primary]:.4f} | {s['challenger'][primary]:.4f} |")
    if r.get("shadow"):
        sh = r["shadow"]
        shift = "PSI of the shares of rows predicted in each class" if r["task"] == "multiclass" else "PSI"
        lines += ["", f"Shadow scoring on {sh['rows']:,} unlabeled rows: {_apart(sh)}, {shift} {sh['psi']:.4f}."]
    if r.get("shadow_left_out"):
        lines += ["", f"Shadow scoring left out: {r['shadow_left_out']}."]
    return "\n".join(lines) + "\n"


def _apart(shadow: dict[str, Any]) -> str:
    """How far the shadow's scores are from the predictions': the share of rows both classify
    alike, or for a regression the mean absolute difference of the predicted values."""
    if "agreement" in shadow:
        return f"agreement {shadow['agreement']:.2%}"
    return f"mean absolute difference {shadow['mean_abs_difference']:.4g}"


def _excluded(excluded: dict[str, Any] | None) -> list[str]:
    if not excluded or not excluded["rows"]:
        return []
    reasons = ", ".join(f"{reason} ({count:,})" for reason, count in sorted(excluded["reasons"].items()))
    return [
        "",
        f"Left out: {excluded['rows']:,} rows that the nightly job would not score or that have no label: {reasons}.",
    ]


def plots(r: dict[str, Any], y: np.ndarray, a: np.ndarray, b: np.ndarray, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = (f"champion v{r['champion']['version']}", f"challenger v{r['challenger']['version']}")
    if r["task"] == "classification":
        from sklearn.metrics import roc_curve

        fig, ax = plt.subplots(figsize=(5, 5))
        for scores, label in zip((a, b), labels, strict=True):
            fpr, tpr, _ = roc_curve(y, scores)
            ax.plot(fpr, tpr, label=label)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
        ax.legend()
        fig.savefig(folder / "roc.png", dpi=90)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(5, 5))
        for scores, label in zip((a, b), labels, strict=True):
            idx = np.minimum((scores * 10).astype(int), 9)
            counts = np.bincount(idx, minlength=10)
            seen = counts > 0
            mean_p = np.bincount(idx, weights=scores, minlength=10)[seen] / counts[seen]
            mean_y = np.bincount(idx, weights=y, minlength=10)[seen] / counts[seen]
            ax.plot(mean_p, mean_y, "o-", label=label)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlabel="mean predicted probability", ylabel="observed frequency", title="Calibration")
        ax.legend()
        fig.savefig(folder / "calibration.png", dpi=90)
        plt.close(fig)

    names = list(r["differences"])
    gains = [better(m, r["differences"][m]["diff"]) for m in names]
    bounds = [sorted(better(m, r["differences"][m][k]) for k in ("low", "high")) for m in names]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.5))
    ax.errorbar(
        gains,
        range(len(names)),
        xerr=[
            [g - lo for g, (lo, _) in zip(gains, bounds, strict=True)],
            [hi - g for g, (_, hi) in zip(gains, bounds, strict=True)],
        ],
        fmt="o",
        capsize=3,
    )
    ax.axvline(0, color="grey", linestyle=":")
    ax.set_yticks(range(len(names)), names)
    ax.set(
        xlabel="challenger gain over champion (positive is better)",
        title=f"Differences, {r['confidence']:.0%} intervals",
    )
    fig.tight_layout()
    fig.savefig(folder / "differences.png", dpi=90)
    plt.close(fig)
