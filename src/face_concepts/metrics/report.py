"""``MetricReport``: every docs/method.md §9 metric for one class on one image set, and its filler.

The key names are fixed (checks, the CLI and users read them): ``acc, agreement, certified, kl, mse,
rel_l2, c_deletion, c_deletion_paper, c_insertion, c_mu_fidelity, c_gini, density, hoyer,
stability`` plus the curves ``deletion_curve`` and ``insertion_curve``. Metadata (image and
concept counts, class, split name, encoder settings, metric settings) travels with them.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from face_concepts._core.validation import check_float
from face_concepts.metrics import curves as cu
from face_concepts.metrics import faithfulness as fa
from face_concepts.metrics import mu_fidelity as mf
from face_concepts.metrics.reconstruction import mse, relative_l2
from face_concepts.metrics.sparsity import density, gini, hoyer
from face_concepts.metrics.stability import stability as bank_stability

METRIC_KEYS: tuple[str, ...] = (
    "acc",
    "agreement",
    "certified",
    "kl",
    "mse",
    "rel_l2",
    "c_deletion",
    "c_deletion_paper",
    "c_insertion",
    "c_mu_fidelity",
    "c_gini",
    "density",
    "hoyer",
    "stability",
)
CURVE_KEYS: tuple[str, ...] = ("deletion_curve", "insertion_curve")


@dataclass
class MetricReport:
    """The §6 metrics of one class on one image set (``split``: e.g. ``"fit"``, ``"heldout"``).

    ``stability`` is ``None`` when it was not computed (it needs refits). ``certified`` is the
    share of images whose agreement the KL certifies (:func:`~face_concepts.metrics.faithfulness.
    certified_agreement`, a lower bound on ``agreement``). ``c_deletion`` is the
    AOPC over ``r + 1`` points; ``c_deletion_paper`` the authors' ``r + 2`` normalisation.

    Examples
    --------
    >>> rep = MetricReport.from_dict({k: 0.5 for k in METRIC_KEYS})
    >>> rep.to_dict()["c_deletion"]
    0.5
    """

    acc: float
    agreement: float
    kl: float
    mse: float
    rel_l2: float
    c_deletion: float
    c_deletion_paper: float
    c_insertion: float
    c_mu_fidelity: float
    c_gini: float
    density: float
    hoyer: float
    stability: float | None = None
    # None only in reports saved before it existed (it is always computed now).
    certified: float | None = None
    deletion_curve: list[float] = field(default_factory=list)
    insertion_curve: list[float] = field(default_factory=list)
    acc_original: float | None = None
    n_images: int = 0
    n_concepts: int = 0
    class_id: int | None = None
    split: str | None = None
    encoder: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (floats, ints, lists, dicts) with the fixed keys."""
        out = asdict(self)
        for key in (*METRIC_KEYS, "acc_original"):
            if out[key] is not None:
                out[key] = float(out[key])
        for key in CURVE_KEYS:
            out[key] = [float(v) for v in out[key]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricReport:
        """Inverse of :meth:`to_dict`. Unknown keys are ignored (reports from newer versions)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping, got {type(data).__name__}")
        optional = ("stability", "certified")  # certified: absent from older saved reports
        missing = [k for k in METRIC_KEYS if k not in optional and k not in data]
        if missing:
            raise ValueError(f"metric report is missing key(s) {missing}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: copy.deepcopy(v) for k, v in data.items() if k in known}
        for key in CURVE_KEYS:
            kwargs[key] = [float(v) for v in kwargs.get(key) or []]
        return cls(**kwargs)

    def to_markdown(self) -> str:
        """A one-row markdown table of the scalar metrics (curves left out).

        Examples
        --------
        >>> print(MetricReport.from_dict({k: 1.0 for k in METRIC_KEYS}).to_markdown())  # doctest: +ELLIPSIS
        | split | n_images | acc | ...
        """
        cols = ["split", "n_images", *METRIC_KEYS]
        cells = [str(self.split or "n/a"), str(self.n_images)]
        for key in METRIC_KEYS:
            value = getattr(self, key)
            cells.append("n/a" if value is None else f"{float(value):.3f}")
        header = "| " + " | ".join(cols) + " |"
        rule = "|" + "|".join("---" for _ in cols) + "|"
        return "\n".join([header, rule, "| " + " | ".join(cells) + " |"])


def _resolve_stability(value: float | Sequence[torch.Tensor] | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"stability must be a number or a list of concept banks, got {value!r}")
    if isinstance(value, (float, int, numbers.Real)):
        value = float(value)
        if math.isnan(value):
            return None
        return check_float(value, "stability", minimum=-1.0, maximum=1.0)
    return bank_stability(value)


def compute_metrics(
    A_bar: torch.Tensor,
    U_hat: torch.Tensor,
    W: torch.Tensor,
    head: fa.Head,
    class_id: int,
    importance: torch.Tensor,
    *,
    stability: float | Sequence[torch.Tensor] | None = None,
    encoder: Mapping[str, Any] | None = None,
    split: str | None = None,
    n_subsets: int = mf.DEFAULT_N_SUBSETS,
    subset_size: int | None = None,
    density_threshold: float = 0.0,
    random_state: int | None = 0,
    batch_size: int = fa.DEFAULT_BATCH_SIZE,
) -> MetricReport:
    """Fill a :class:`MetricReport` from whole-image activations and their encoded codes.

    ``A_bar`` (n, p) pooled image activations, ``U_hat`` (n, r) their codes from the single
    encoder, ``W`` (r, p), ``head`` (n, p) -> (n, C), ``importance`` (r,) global importance.
    ``stability`` is a precomputed C-Stab value, a list of refitted banks, or ``None``.
    ``encoder`` (its settings) is recorded as given; ``random_state`` seeds C-μFidelity.

    Examples
    --------
    >>> A = torch.rand(8, 5); W = torch.rand(3, 5); U = torch.rand(8, 3)
    >>> rep = compute_metrics(A, U, W, torch.nn.Linear(5, 4), 0, torch.tensor([0.5, 0.3, 0.2]))
    >>> len(rep.deletion_curve)
    4
    """
    A, U, Wt, logits_a, logits_r, cid = _checked_logits(A_bar, U_hat, W, head, class_id, batch_size)
    acc, agreement, acc_original = fa._accuracy_from_logits(logits_a, logits_r, cid)
    deletion = cu.deletion_curve(U, Wt, head, cid, importance, batch_size=batch_size)
    insertion = cu.insertion_curve(U, Wt, head, cid, importance, batch_size=batch_size)
    size = mf.default_subset_size(U.shape[1]) if subset_size is None else subset_size
    mu = mf.c_mu_fidelity(
        U, Wt, head, cid, importance, n_subsets=n_subsets, subset_size=size,
        random_state=random_state, batch_size=batch_size,
    )  # fmt: skip
    return MetricReport(
        acc=acc,
        agreement=agreement,
        certified=fa._certified_from_logits(logits_a, logits_r),
        kl=fa._kl_from_logits(logits_a, logits_r),
        mse=mse(A, U, Wt),
        rel_l2=relative_l2(A, U, Wt),
        c_deletion=cu.c_deletion(deletion),
        # Same curve, other normalisation: c_deletion already warned if d(0) = 0.
        c_deletion_paper=cu._aopc(deletion, 1, warn=False),
        c_insertion=cu.c_insertion(insertion),
        c_mu_fidelity=mu,
        c_gini=gini(importance),
        density=density(U, density_threshold),
        hoyer=hoyer(U),
        stability=_resolve_stability(stability),
        deletion_curve=deletion.tolist(),
        insertion_curve=insertion.tolist(),
        acc_original=acc_original,
        n_images=int(U.shape[0]),
        n_concepts=int(U.shape[1]),
        class_id=cid,
        split=split,
        encoder=dict(encoder) if encoder is not None else {},
        settings=_settings(n_subsets, size, random_state, density_threshold),
    )


def _checked_logits(
    A_bar: torch.Tensor,
    U_hat: torch.Tensor,
    W: torch.Tensor,
    head: fa.Head,
    class_id: int,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The inputs checked, and the logits of the images and of their reconstructions:
    ``(A, U, W, logits_a, logits_r, class_id)``."""
    U, Wt = fa._check_codes(U_hat, W)
    A = fa._check_activations(A_bar, U, Wt)
    logits_a = fa.head_logits(A, head, batch_size=batch_size)
    cid = fa._check_class(class_id, logits_a.shape[1])
    logits_r = fa.reconstruction_logits(U, Wt, head, batch_size=batch_size)
    return A, U, Wt, logits_a, logits_r, cid


def _settings(
    n_subsets: int, subset_size: int, random_state: int | None, density_threshold: float
) -> dict[str, Any]:
    """The metric settings a :class:`MetricReport` records."""
    return {
        "mu_fidelity_n_subsets": int(n_subsets),
        "mu_fidelity_subset_size": int(subset_size),
        "random_state": random_state,
        "density_threshold": float(density_threshold),
        "c_deletion_normalisation": "r + 1 (c_deletion); r + 2 (c_deletion_paper)",
    }
