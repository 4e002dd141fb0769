"""The report's figures, each returned as a base64 PNG to embed in ``report.html``:
epsilon per owner against its budget, and the evaluation's confusion matrix.

Guarantee: owners with identical figures stay visible on the epsilon plot (each its own
marker and dash style, hollow and of decreasing size), and the confusion matrix is the
one drawing ``fedshield evaluate`` makes (common/plots.py).
"""

from __future__ import annotations

import base64
import io

MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "p", "h", "<", ">")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def epsilon_plot_png(owners: list[dict]) -> str:
    """Epsilon per owner per charge: claimed (line, one marker and dash style per owner,
    hollow and of decreasing size so identical owners stay visible), recomputed (+), and
    the budget in force at each charge (thin dashes)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    charged = [o for o in owners if o["charges"]]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    colors = plt.get_cmap("tab10")
    top, longest = 0.0, 1
    handles = []
    for i, owner in enumerate(charged):
        charges = owner["charges"]
        x = list(range(1, len(charges) + 1))
        color = colors(i % 10)
        style = dict(
            color=color,
            marker=MARKERS[i % len(MARKERS)],
            linestyle=LINESTYLES[i % len(LINESTYLES)],
            markersize=11 - 2 * (i % 4),
            markerfacecolor="none",
            markeredgewidth=1.4,
            linewidth=1.4,
        )
        ax.plot(x, [c["epsilon_claimed"] for c in charges], **style)
        ax.plot(
            x, [c["epsilon_recomputed"] for c in charges], "+", color=color, markersize=7, mew=1
        )
        budgets = [c["budget_in_force"] for c in charges]
        for k, budget in zip(x, budgets, strict=True):
            ax.hlines(budget, k - 0.5, k + 0.5, colors=[color], linestyles=(0, (2, 2)), lw=1.1)
        name = owner["owner"]  # a long name must not squeeze the plot out of the figure
        label = name if len(name) <= 32 else name[:30] + "\u2026"
        per = "mixed units" if owner["per_unit"].startswith("over mixed") else owner["per_unit"]
        label += f" ({per})" if len(per) <= 24 else f" ({per[:22]}\u2026)"
        handles.append(Line2D([], [], label=label, **style))
        for refusal in owner["refusals"]:
            # a refusal sits between the charges it fell between, at the budget then in force
            x_refused = refusal["after_charges"] + 0.5
            spent = (
                charges[refusal["after_charges"] - 1]["epsilon_claimed"]
                if refusal["after_charges"]
                else 0.0
            )
            ax.plot(x_refused, spent, "x", color="#c00", markersize=9, mew=2)
            if refusal["budget_in_force"] is not None:
                ax.hlines(
                    refusal["budget_in_force"],
                    x_refused - 0.3,
                    x_refused + 0.3,
                    colors=["#c00"],
                    lw=1.5,
                )
                top = max(top, refusal["budget_in_force"])
        top = max(top, *budgets, *(c["epsilon_claimed"] for c in charges))
        longest = max(longest, len(charges), *(r["after_charges"] + 1 for r in owner["refusals"]))
    handles += [
        Line2D([], [], color="k", lw=1.4, label="epsilon claimed by the owner"),
        Line2D([], [], color="k", marker="+", lw=0, label="recomputed independently"),
        Line2D([], [], color="k", lw=1.1, ls=(0, (2, 2)), label="budget in force"),
    ]
    if any(o["refusals"] for o in charged):
        handles.append(
            Line2D([], [], color="#c00", marker="x", mew=2, lw=1.5, label="refused (budget then)")
        )
    ax.set_xlim(0.5, longest + 0.5)
    ax.set_ylim(0, max(top, 1.0) * 1.08)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("charges in time order (training rounds and evaluate answers, all runs)")
    ax.set_ylabel("epsilon spent (total so far, per privacy unit)")
    ax.set_title("Epsilon per owner against the budget in force at each charge")
    ax.grid(alpha=0.3)
    shown = handles if len(charged) <= 24 else handles[:24] + handles[-3:]
    ax.legend(
        handles=shown,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title=None if len(charged) <= 24 else f"first 24 of {len(charged)} owners",
    )
    return _png(fig)


def confusion_plot_png(evaluation: dict) -> str:
    """The confusion matrix as ``fedshield evaluate`` draws it (one drawing for both)."""
    from fedshield.common.plots import plot_confusion

    buffer = io.BytesIO()
    accuracy = evaluation.get("accuracy")
    plot_confusion(
        evaluation["classes"],
        evaluation["confusion"],
        buffer,
        title=f"Accuracy {accuracy:.3f}" if isinstance(accuracy, int | float) else "",
        fmt="png",
    )
    return base64.b64encode(buffer.getvalue()).decode()
