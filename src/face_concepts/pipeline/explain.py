"""How much each concept of a run contributes to one image's prediction, and where it is.

The contribution of concept ``i`` to the logit of the run's class ``c`` is Gradient×Input on
the image's codes ``u`` (docs/method.md §8.2): for an affine head ``h(x) = x Vᵀ + b`` it is exactly
``u_i (W Vᵀ)[i, c]``, and the contributions add up to ``h(u W)_c − b_c``. The rest of the
model's logit is the bias and the reconstruction residual ``h(a)_c − h(u W)_c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from face_concepts._core.numbers import fixed
from face_concepts.models.head import affine_parameters


def _one_image(path: Any, preprocess: Any) -> torch.Tensor:
    from face_concepts.data import load_images, preprocess_images

    if isinstance(path, torch.Tensor):  # already preprocessed
        x = path.float()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(
                f"image must be one preprocessed image (3, H, W) or (1, 3, H, W), got {tuple(path.shape)}"
            )
        return x
    if not isinstance(path, (str, Path)):  # a PIL image
        if preprocess is None:
            raise ValueError("the run's model records no preprocessing; pass a tensor")
        return preprocess_images(load_images([path], strict=True), preprocess)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image {str(p)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"image must be one image file, got the folder {str(p)!r}")
    if preprocess is None:
        raise ValueError("the run's model records no preprocessing; cannot read an image file")
    return preprocess_images(load_images(p, strict=True), preprocess)


def explain_image(explainer: Any, image: Any) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Per-concept contributions of a fitted run to the prediction on one image.

    Parameters
    ----------
    explainer : ConceptExplainer
        Fitted or loaded (with its model).
    image : path, PIL image or Tensor
        One image file, a PIL image, or one preprocessed image (3, H, W) / (1, 3, H, W).

    Returns
    -------
    result : dict
        ``image, class_id, class_name, predicted_class, predicted_name, probability, logit,
        concept_logit, bias, residual, concepts`` where ``concepts`` is a list of
        ``{concept, code, contribution, share, importance}`` sorted by decreasing contribution
        (``share``: contribution / sum of contributions).
    x : Tensor (1, 3, H, W)
        The preprocessed image.
    maps : Tensor (1, r, H, W)
        Concept maps of the image (:meth:`ConceptExplainer.concept_maps`).

    Examples
    --------
    >>> result, x, maps = explain_image(explainer, "cat.jpg")  # doctest: +SKIP
    >>> result["concepts"][0]["share"]  # doctest: +SKIP
    0.62
    """
    from face_concepts.importance import gradient_input

    split, cid = explainer.split, int(explainer.class_id_)
    W, head = explainer.concept_bank_, split.head
    x = _one_image(image, getattr(split, "preprocess", None))
    with torch.no_grad():  # not inference_mode: gradient_input may need autograd on U
        A = split.pooled(x.to(split.device)).cpu()
        logits = head(A.to(split.device)).cpu()
        U = explainer.encode_activations(A)
        recon = head((U @ W).to(split.device)).cpu()
    gi = gradient_input(U, W, head, cid)[0].double()
    affine = affine_parameters(head)
    bias = float(affine[1][cid]) if affine is not None else None
    total = float(gi.sum())
    imp = explainer.importance_
    concepts = [
        {
            "concept": int(i),
            "code": float(U[0, i]),
            "contribution": float(gi[i]),
            "share": float(gi[i]) / total if total != 0 else None,
            "importance": float(imp[i]),
        }
        for i in torch.argsort(gi, descending=True, stable=True).tolist()
    ]
    probs = logits.softmax(dim=1)[0]
    pred = int(probs.argmax())
    cats = getattr(split, "categories", None)
    result = {
        "image": str(image) if isinstance(image, (str, Path)) else "image",
        "class_id": cid,
        "class_name": explainer.class_name(),
        "predicted_class": pred,
        "predicted_name": cats[pred] if cats else None,
        "probability": float(probs[cid]),
        "logit": float(logits[0, cid]),
        "concept_logit": float(recon[0, cid]),
        "bias": bias,
        "residual": float(logits[0, cid] - recon[0, cid]),
        "concepts": concepts,
    }
    return result, x, explainer.concept_maps(x)


def explain_figure(
    result: dict[str, Any], x: torch.Tensor, maps: torch.Tensor, explainer: Any, *, top: int = 6
) -> Any:
    """Heatmaps of the ``top`` most contributing concepts over the image, titled with contributions."""
    from face_concepts import viz

    contrib = torch.zeros(maps.shape[1])
    for c in result["concepts"]:
        contrib[c["concept"]] = c["contribution"]
    shown = [c["concept"] for c in result["concepts"][: max(1, top)]]
    fig = viz.heatmap_overlay(
        x[0], maps[0], shown, importance=contrib, preprocess=explainer.split.preprocess,
        labels=[f"concept {i}" for i in range(maps.shape[1])],
    )  # fmt: skip
    name = result["class_name"] or f"class {result['class_id']}"
    fig.suptitle(f"Concept contributions to the logit of “{name}” for {Path(result['image']).name}")
    return fig


def explain_table(result: dict[str, Any]) -> str:
    """Plain-text summary and table of :func:`explain_image`'s result.

    Examples
    --------
    >>> r = {"image": "a.jpg", "class_id": 1, "class_name": None, "predicted_class": 1,
    ...      "predicted_name": None, "probability": 0.9, "logit": 2.0, "concept_logit": 1.5,
    ...      "bias": 0.5, "residual": 0.5,
    ...      "concepts": [{"concept": 0, "code": 1.0, "contribution": 1.0, "share": 1.0,
    ...                    "importance": 0.3}]}
    >>> print(explain_table(r).splitlines()[-1])
          0      1.000          1.000    100.0 %       0.300
    """
    name = result["class_name"] or f"class {result['class_id']}"
    pred = result["predicted_name"] or f"class {result['predicted_class']}"
    bias = "n/a" if result["bias"] is None else fixed(result["bias"], 3)
    lines = [
        f"image {result['image']}: the model predicts {pred} ({result['predicted_class']}); "
        f"p({name}) = {fixed(result['probability'], 3)}",
        f"logit of {name} = {fixed(result['logit'], 3)}: concepts "
        f"{fixed(result['concept_logit'], 3)} (bias {bias} included) + reconstruction residual "
        f"{fixed(result['residual'], 3)}",
        f"{'concept':>7} {'code':>10} {'contribution':>14} {'share':>10} {'importance':>11}",
    ]
    for c in result["concepts"]:
        share = "n/a" if c["share"] is None else f"{fixed(100 * c['share'], 1)} %"
        lines.append(
            f"{c['concept']:>7} {fixed(c['code'], 3):>10} {fixed(c['contribution'], 3):>14} "
            f"{share:>10} {fixed(c['importance'], 3):>11}"
        )
    return "\n".join(lines)


@dataclass
class Explanation:
    """What :meth:`ConceptExplainer.explain` returns: the CLI ``explain`` result as an object.

    ``explanation["concepts"]`` (and every other key of :func:`explain_image`'s result) reads
    the result; :meth:`table` is the CLI's text, :meth:`figure` its heatmap figure.
    """

    result: dict[str, Any]
    image: torch.Tensor
    maps: torch.Tensor
    explainer: Any

    def __getitem__(self, key: str) -> Any:
        return self.result[key]

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-able dict (what ``face-concepts explain --json`` prints)."""
        return dict(self.result)

    def table(self) -> str:
        """The plain-text table the CLI prints."""
        return explain_table(self.result)

    def figure(self, top: int = 6) -> Any:
        """Heatmaps of the ``top`` most contributing concepts over the image."""
        return explain_figure(self.result, self.image, self.maps, self.explainer, top=top)

    def __str__(self) -> str:
        return self.table()
