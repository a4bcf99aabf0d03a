"""``fit_batch_size``: FACE's mini-batch fit (``FACE(batch_size=)``) through the explainers.

The tiny seeded split (``tests/_tiny.py``): 8-px crops of 16-px images give 4 crops per image,
so 12 images are 48 rows, three mini-batches of 16.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import _tiny
from face_concepts import ConceptExplainer
from face_concepts.methods.registry import METHODS, factorize
from face_concepts.models import ModelSplit
from face_concepts.pipeline.bank import ConceptBank
from face_concepts.pipeline.config import DEFAULTS, SETTINGS, ExplainerConfig
from face_concepts.pipeline.shared import SharedConceptExplainer

TINY = "test:fit-batch"
FAST = {"n_concepts": 3, "patch_size": 8, "n_designs": 8, "progress": False}
# The mini-batch fit (running statistics, a few epochs) against the full-batch MM-HALS fit on
# the same rows: not the same optimum, but the same order (on this data 1.00x).
OBJECTIVE_FACTOR = 1.5


@pytest.fixture(scope="module")
def split():
    return _tiny.tiny_split(TINY, seed=0)


def images(seed: int = 0, n: int = 12) -> torch.Tensor:
    return torch.rand((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))


def quiet_fit(explainer, x, class_id=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short budget may stop before tol
        return explainer.fit(x, class_id)


def test_the_setting_is_declared_like_max_iter():
    s = SETTINGS["fit_batch_size"]
    assert (s.default, s.kind, s.minimum, s.flag, s.saved) == (None, int, 1, "fit_batch_size", True)
    assert DEFAULTS.fit_batch_size is None and "methods face and nmf only" in s.help
    with pytest.raises(ValueError, match="fit_batch_size must be >= 1, got 0"):
        ExplainerConfig(fit_batch_size=0)
    with pytest.raises(TypeError, match="fit_batch_size must be an integer"):
        ExplainerConfig(fit_batch_size=2.5)


def test_mini_batch_fit_is_used_and_close_to_the_full_batch_fit(split):
    x = images()
    full = quiet_fit(ConceptExplainer(split, **FAST), x)
    mini = quiet_fit(ConceptExplainer(split, **FAST, fit_batch_size=16), x)
    assert mini.fit_batch_size == 16 and mini.config.fit_batch_size == 16
    rows = mini._rows_cache.shape[0]
    assert rows == 48 > 16  # three mini-batches, not one
    info = mini.fit_info_
    assert info["solver"] == "minibatch" and full.fit_info_["solver"] != "minibatch"
    assert isinstance(info["n_iter"], int) and 1 <= info["n_iter"] <= 50  # epochs (default 50)
    assert isinstance(info["converged"], bool)
    assert mini.row_codes_.shape == (rows, 3) and bool((mini.row_codes_ >= 0).all())
    assert bool((mini.concept_bank_ >= 0).all()) and bool(torch.isfinite(mini.importance()).all())
    assert mini.image_codes_.shape == (12, 3) and bool((mini.image_codes_ >= 0).all())
    mini_obj, full_obj = info["objective"], full.fit_info_["objective"]
    assert 0 < mini_obj <= OBJECTIVE_FACTOR * full_obj, (mini_obj, full_obj)


def test_factorize_passes_batch_size_to_face(split, monkeypatch):
    import face_concepts.methods.registry as registry

    seen = []
    real = registry.FACE

    def spy(*args, **kwargs):
        seen.append(kwargs.get("batch_size"))
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "FACE", spy)
    A = torch.rand(40, 6, generator=torch.Generator().manual_seed(1))
    for method in ("face", "nmf"):
        U, _, info = factorize(
            METHODS[method], A, split.head, n_concepts=2, kl_weight=METHODS[method].kl_weight or 1.0,
            random_state=0, batch_size=16,
        )  # fmt: skip
        assert info["solver"] == "minibatch" and U.shape == (40, 2) and bool((U >= 0).all())
    assert seen == [16, 16]


@pytest.mark.parametrize("method", ["craft", "ice", "face-paper"])
def test_methods_without_a_mini_batch_fit_are_refused_naming_the_method(split, method):
    with pytest.raises(ValueError, match=rf"fit_batch_size .*method '{method}'") as err:
        ConceptExplainer(split, method, **FAST, fit_batch_size=16)
    assert len(str(err.value).splitlines()) == 1
    # the engine-level call says the same (for callers of factorize itself)
    A = torch.rand(20, 6)
    with pytest.raises(ValueError, match=rf"fit_batch_size .*method '{method}'"):
        factorize(METHODS[method], A, split.head, n_concepts=2, kl_weight=0.0, random_state=0, batch_size=16)  # fmt: skip
    # a config that holds a batch size refuses a change of method to one of these
    ex = ConceptExplainer(split, **FAST, fit_batch_size=16)
    with pytest.raises(ValueError, match=rf"method '{method}'"):
        ex.method = method


def test_auto_kl_weight_is_refused(split):
    with pytest.raises(ValueError, match="fit_batch_size cannot be used with kl_weight='auto'"):
        ConceptExplainer(split, **FAST, kl_weight="auto", fit_batch_size=16)


def test_a_non_affine_head_is_refused_before_any_image_is_read(split):
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    other = ModelSplit(split.features, mlp, preprocess=split.preprocess, name="test:mlp")
    ex = ConceptExplainer(other, **FAST, fit_batch_size=16)
    with pytest.raises(ValueError, match="fit_batch_size needs an affine head"):
        ex.fit("no/such/folder", 0)  # refused before the path is even looked at


def test_config_round_trip_and_a_saved_run_records_it(split, tmp_path):
    cfg = ExplainerConfig(method="nmf", fit_batch_size=16, max_iter=5)
    assert cfg.to_dict(saved_only=True)["fit_batch_size"] == 16
    assert ExplainerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ExplainerConfig.from_dict(DEFAULTS.to_dict()).fit_batch_size is None
    # an older run's record, without the key, reads back as the full-batch fit
    old = {k: v for k, v in cfg.to_dict(saved_only=True).items() if k != "fit_batch_size"}
    assert ExplainerConfig.from_dict(old).fit_batch_size is None

    ex = quiet_fit(ConceptExplainer(split, **FAST, fit_batch_size=16), images(2))
    ex.save(tmp_path / "run")
    record = ConceptBank.load(tmp_path / "run").metadata["config"]
    assert record["fit_batch_size"] == 16
    again = ConceptExplainer.load(tmp_path / "run", split=split)
    assert again.fit_batch_size == 16 and again.config.fit_batch_size == 16


def test_shared_bank_fits_by_mini_batches(split):
    shared = SharedConceptExplainer(split, **FAST, fit_batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shared.fit({0: images(3, n=6), 1: images(4, n=6)})
    assert shared.fit_info_["solver"] == "minibatch"
    assert shared.importance().shape == (2, 3) and bool((shared.row_codes_ >= 0).all())
    assert shared.explainer(1).fit_batch_size == 16
