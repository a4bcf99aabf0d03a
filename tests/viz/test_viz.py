"""Figures render headless (Agg) and show what they claim: panels, labels, images, legends."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch

from face_concepts.data.preprocess import Preprocess
from face_concepts.viz import curves, heatmap_overlay, importance_bar, loss_history, top_crops

matplotlib.use("Agg")


def _render(fig) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.tell() > 0


def _crops_and_codes(M: int = 12, r: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(M, 3, 8, 8, generator=g), torch.rand(M, r, generator=g)


# ----------------------------------------------------------------------------- top crops


def test_top_crops_rows_sorted_by_importance_with_labels():
    crops, codes = _crops_and_codes()
    importance = torch.tensor([0.1, 0.6, 0.05, 0.25])
    fig = top_crops(crops, codes, importance, k=3, class_name="tabby cat")
    _render(fig)
    axes = np.array(fig.axes).reshape(4, 3)
    assert [ax.get_ylabel().splitlines()[0] for ax in axes[:, 0]] == [
        "concept 1",
        "concept 3",
        "concept 0",
        "concept 2",
    ]
    assert axes[0, 0].get_ylabel().splitlines()[1] == "(importance 0.600)"
    assert all(len(ax.images) == 1 for ax in axes.ravel())
    assert "tabby cat" in fig.get_suptitle()
    # Row of concept 1: its crops in decreasing code order, the first one drawn as it is.
    best = torch.argsort(codes[:, 1], descending=True)[:3]
    np.testing.assert_allclose(
        axes[0, 0].images[0].get_array(), crops[best[0]].permute(1, 2, 0).numpy()
    )
    assert [ax.get_title() for ax in axes[0]] == [f"u = {float(codes[i, 1]):.3g}" for i in best]


def test_top_crops_n_concepts_labels_and_denormalisation():
    crops, codes = _crops_and_codes(M=5, r=3)
    pre = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    fig = top_crops(
        pre.normalize(crops),
        codes,
        torch.tensor([0.2, 0.3, 0.5]),
        k=10,
        n_concepts=2,
        preprocess=pre,
        labels=["sky", "fur", "eye"],
    )
    assert len(fig.axes) == 2 * 5  # k is capped at the number of crops
    assert [ax.get_ylabel().splitlines()[0] for ax in fig.axes[::5]] == ["eye", "fur"]
    best = int(torch.argmax(codes[:, 2]))
    np.testing.assert_allclose(
        fig.axes[0].images[0].get_array(), crops[best].permute(1, 2, 0).numpy(), atol=1e-6
    )


def test_top_crops_rejects_normalised_images_without_preprocess():
    crops, codes = _crops_and_codes()
    with pytest.raises(ValueError, match="preprocess"):
        top_crops(crops * 4 - 2, codes, torch.ones(4))
    with pytest.raises(ValueError, match="importance"):
        top_crops(crops, codes, torch.ones(3))


# ----------------------------------------------------------------------------- importance bars


def test_importance_bar_order_labels_and_title():
    fig = importance_bar(torch.tensor([0.1, 0.5, 0.2, 0.05]), class_name="espresso", n_concepts=3)
    _render(fig)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["concept 1", "concept 2", "concept 0"]
    widths = [p.get_width() for p in ax.patches]
    assert widths == pytest.approx([0.5, 0.2, 0.1])
    assert ax.get_title() == "Concept importance — espresso"
    assert ax.get_xlabel() == "Sobol total index"
    # The most important concept is drawn at the top.
    assert ax.get_ylim()[0] > ax.get_ylim()[1]


def test_importance_bar_custom_labels():
    fig = importance_bar(
        np.array([0.3, 0.7]), labels=["wheels", "windows"], xlabel="Gradient×Input"
    )
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["windows", "wheels"]
    assert fig.axes[0].get_xlabel() == "Gradient×Input"


# ----------------------------------------------------------------------------- heatmaps


def test_heatmap_overlay_panels_titles_and_layers():
    g = torch.Generator().manual_seed(1)
    image, maps = torch.rand(3, 16, 16, generator=g), torch.rand(4, 4, 4, generator=g)
    fig = heatmap_overlay(
        image, maps, importance=torch.tensor([0.2, 0.1, 0.6, 0.1]), class_name="church", n_cols=3
    )
    _render(fig)
    assert len(fig.axes) == 5  # the image + 4 concepts; the unused grid cell is removed
    assert [ax.get_title() for ax in fig.axes] == [
        "image",
        "concept 2 (0.600)",
        "concept 0 (0.200)",
        "concept 1 (0.100)",
        "concept 3 (0.100)",
    ]
    assert len(fig.axes[0].images) == 1
    assert all(len(ax.images) == 2 for ax in fig.axes[1:])
    heat = fig.axes[1].images[1].get_array()
    assert heat.shape == (16, 16)  # resized to the image
    assert "church" in fig.get_suptitle()


def test_heatmap_overlay_signed_maps_use_symmetric_diverging_colours():
    maps = torch.tensor([[[-1.0, 0.5], [0.25, 0.0]]])
    fig = heatmap_overlay(torch.rand(3, 2, 2), maps, [0])
    layer = fig.axes[1].images[1]
    assert layer.get_clim() == (-1.0, 1.0)
    assert layer.get_cmap().name == "RdBu_r"
    with pytest.raises(ValueError, match="concepts"):
        heatmap_overlay(torch.rand(3, 2, 2), maps, [1])


# ----------------------------------------------------------------------------- curves


def test_curves_two_panels_one_line_per_method_with_scores():
    results = {
        "face": (torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.0, 1.0, 1.0])),
        "craft": ([1.0, 0.9, 0.4, 0.0], [0.0, 0.2, 0.6, 1.0]),
    }
    fig = curves(results, class_name="umbrella")
    _render(fig)
    ax_del, ax_ins = fig.axes
    assert (ax_del.get_title(), ax_ins.get_title()) == ("Deletion", "Insertion")
    assert len(ax_del.lines) == len(ax_ins.lines) == 2
    del_texts = [t.get_text() for t in ax_del.get_legend().get_texts()]
    ins_texts = [t.get_text() for t in ax_ins.get_legend().get_texts()]
    # AOPC / (r + 1) and trapezoid area / r, computed here from their definitions.
    assert del_texts == ["face (C-Del 0.500)", "craft (C-Del 0.425)"]
    assert ins_texts == ["face (C-Ins 0.750)", "craft (C-Ins 0.433)"]
    np.testing.assert_array_equal(ax_del.lines[1].get_xdata(), [0, 1, 2, 3])
    assert "umbrella" in fig.get_suptitle()


def test_curves_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        curves({})
    with pytest.raises(ValueError, match="pair"):
        curves({"face": [1.0, 0.5, 0.0]})


# ----------------------------------------------------------------------------- loss history


def test_loss_history_log_scale_and_series():
    history = {
        "total": [3.0, 2.0, 1.5, 1.4],
        "recon": [2.0, 1.5, 1.2, 1.1],
        "kl": [0.0] * 4,
        "solver": "hals",
    }
    fig = loss_history(history, title="FACE fit")
    _render(fig)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert ax.get_title() == "FACE fit"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "total objective",
        "reconstruction (MSE)",
    ]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), history["total"])


def test_loss_history_needs_a_positive_series():
    with pytest.raises(ValueError, match="positive"):
        loss_history({"kl": [0.0, 0.0]})
    with pytest.raises(TypeError, match="history"):
        loss_history([1.0, 2.0])
