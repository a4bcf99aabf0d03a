"""``fit --fit-batch-size``: the flag, its help, a mini-batch fit on the tiny model, and the refusal
of methods without one (in-process, ``load_model`` patched as in ``test_cli.py``)."""

from __future__ import annotations

import json

import _tiny
from face_concepts.cli.main import main
from face_concepts.pipeline.bank import ConceptBank

TINY = "test:tiny"
FIT = ["--n-concepts", "2", "--patch-size", "8", "--n-designs", "8", "--class-id", "1"]


def test_fit_batch_size_flag(capsys, monkeypatch, tmp_path):
    assert main(["fit", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "--fit-batch-size FIT_BATCH_SIZE rows per mini-batch of the FACE factorisation" in help_text
    )

    _tiny.patch_load_model(monkeypatch, _tiny.tiny_split(TINY, seed=0))
    photos = _tiny.write_png_folder(tmp_path / "imgs", n=6)
    out = tmp_path / "run"
    argv = ["fit", "--model", TINY, "--images", str(photos), *FIT, "--no-cache"]
    code = main([*argv, "--fit-batch-size", "16", "--out", str(out), "--json", "-q"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["n_images"] == 6 and summary["n_iter"] >= 1
    bank = ConceptBank.load(out)
    assert bank.metadata["config"]["fit_batch_size"] == 16
    assert bank.metadata["fit"]["solver"] == "minibatch"

    # craft has no mini-batch fit: one usage line, before anything is loaded or written
    code = main(
        [*argv, "--method", "craft", "--fit-batch-size", "16", "--out", str(tmp_path / "c")]
    )
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--fit-batch-size is for --method face and nmf only: --method craft" in err
    assert not (tmp_path / "c").exists()
