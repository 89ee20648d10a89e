"""Finding, downloading and loading SAM3 weights, and choosing the device.

A model is named by a Hub id (``facebook/sam3``), a local ``save_pretrained`` directory, or an
official ``sam3.pt`` file. Every failure becomes a one-line :class:`ModelError` that says what to do.

Loading is strict for every layout: a ``Sam3Model`` directory (``model_type`` ``sam3``, images only), a
``Sam3VideoModel`` directory (``sam3_video``: ``detector_model.*`` + ``tracker_model.*``, as ``facebook/sam3``)
and Meta's ``sam3.pt`` (``detector.*`` + ``tracker.*``) all serve images; videos need the tracker (the latter
two). A weight the model needs but the files do not hold (which
transformers only logs, leaving it randomly initialised), a tensor the model has no place for, or a shape
mismatch is a :class:`ModelError` naming the keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar

import torch

from s3seg.errors import DeviceError, ModelError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, Sam3Model, Sam3VideoModel
    from typing_extensions import Unpack

# Only what Sam3Model needs: the Hub repo also holds the official .pt file and video weights.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


_M = TypeVar("_M", "Sam3Model", "Sam3VideoModel")


@dataclass(frozen=True)
class Loaded(Generic[_M]):
    """A model on its device with what running it needs: tokenizer and preprocessing constants."""

    model: _M
    tokenizer: CLIPTokenizer
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    source: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype


class Where(TypedDict, total=False):
    """Where a model comes from and runs: the keyword arguments of the engines' ``load``."""

    device: str
    dtype: str
    revision: str | None
    token: str | None
    offline: bool


def pick_device(requested: str) -> torch.device:
    """``auto`` → cuda, then mps, then cpu; an explicit device must exist."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA was requested but no CUDA GPU is available",
                hint='use device="cpu" or "auto"',
                cli_hint="use --device cpu or auto",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{requested} was requested but only {torch.cuda.device_count()} CUDA device(s) exist",
                hint='use device="cuda:0" or "auto"',
                cli_hint="use --device cuda:0 or auto",
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(
            "MPS was requested but is not available on this machine",
            hint='use device="cpu" or "auto"',
            cli_hint="use --device cpu or auto",
        )
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA (when supported), float32 elsewhere."""
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


def resolve(model: str, *, revision: str | None, token: str | None, offline: bool) -> Path:
    """A local directory or .pt file for ``model``, downloading Hub snapshots when needed."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.fullmatch(model) or model.endswith((".pt", ".pth")):
        raise ModelError(
            f"model path not found: {model}", hint="pass an existing directory or sam3.pt file, or a Hub id"
        )
    return _download(model, revision=revision, token=token, offline=offline)


def _download(repo_id: str, *, revision: str | None, token: str | None, offline: bool) -> Path:
    from huggingface_hub import errors as hf
    from huggingface_hub import snapshot_download

    name = repo_id.split("/")[-1]

    def error(message: str, hint: str) -> ModelError:
        """``hint``'s ``{local}`` phrased for Python (``model=``) and for the command line (``--model``)."""
        return ModelError(
            message,
            hint=hint.format(local=f'or pass a local directory: model="/path/to/{name}"'),
            cli_hint=hint.format(local=f"or pass a local directory: --model /path/to/{name}"),
        )

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                token=token,
                local_files_only=offline,
                allow_patterns=_HUB_PATTERNS,
            )
        )
    except hf.GatedRepoError as e:
        raise error(
            f"{repo_id} is a gated model and this account has no access to it",
            f"accept the licence at https://huggingface.co/{repo_id}, then set HF_TOKEN "
            "(https://huggingface.co/settings/tokens), {local}",
        ) from e
    except hf.RevisionNotFoundError as e:
        raise ModelError(
            f"revision {revision!r} not found in {repo_id}", hint="check revision=", cli_hint="check --revision"
        ) from e
    except hf.RepositoryNotFoundError as e:
        raise error(
            f"model {repo_id!r} not found on the Hub (or it is private and HF_TOKEN is not set)",
            "check the id, set HF_TOKEN, {local}",
        ) from e
    except hf.LocalEntryNotFoundError as e:
        why = "offline mode is on" if offline else "the Hub could not be reached"
        raise error(
            f"{repo_id} is not in the local cache and {why}",
            "connect once to download it (with HF_TOKEN for gated models), {local}",
        ) from e
    except hf.HfHubHTTPError as e:
        raise error(f"downloading {repo_id} failed: {_first_line(e)}", "retry, {local}") from e
    except OSError as e:
        raise error(f"downloading {repo_id} failed: {_first_line(e)}", "{local}") from e


def load(cls: type[_M], model: str, **where: Unpack[Where]) -> Loaded[_M]:
    """``cls`` (``Sam3Model`` for images, ``Sam3VideoModel`` for video) from a Hub id, a ``save_pretrained``
    directory or an official ``sam3.pt``, on the device and in the dtype asked for (``auto``: see
    :func:`pick_device`, :func:`pick_dtype`), with its tokenizer and preprocessing constants."""
    device = pick_device(where.get("device", "auto"))
    dtype = pick_dtype(where.get("dtype", "auto"), device)
    revision = where.get("revision")
    path = resolve(model, revision=revision, token=where.get("token"), offline=where.get("offline", False))
    if path.is_file():
        loaded, tokenizer, preprocess = _load_official(path, cls)
    else:
        loaded, tokenizer, preprocess = _load_pretrained_dir(path, cls)
    loaded.to(device=device, dtype=dtype).eval()  # type: ignore[call-arg]  # transformers' typing of .to()
    size, mean, std = _preprocessing(preprocess, int(loaded.config.image_size))
    return Loaded(loaded, tokenizer, size, mean, std, source=model, revision=revision, device=device, dtype=dtype)


def _preprocessing(
    preprocess: dict[str, Any], default_size: int
) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
    size = int(preprocess.get("size", {}).get("height", default_size))
    mean, std = preprocess.get("image_mean", (0.5, 0.5, 0.5)), preprocess.get("image_std", (0.5, 0.5, 0.5))
    return size, (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


def _load_pretrained_dir(path: Path, cls: type[_M]) -> tuple[_M, CLIPTokenizer, dict[str, Any]]:
    import json

    from transformers import AutoTokenizer

    if not (path / "config.json").is_file():
        raise ModelError(
            f"{path} is not a SAM3 model directory (no config.json)",
            hint="pass a directory written by save_pretrained, a Hub id, or an official sam3.pt file",
        )
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelError(f"cannot read {path / 'config.json'}: {_first_line(e)}") from e
    if model_type not in ("sam3", "sam3_video"):
        raise ModelError(
            f"{path} holds a {model_type!r} model, not SAM3",
            hint="pass a SAM3 directory (model_type sam3 or sam3_video), a Hub id, or an official sam3.pt file",
        )
    if cls.__name__ == "Sam3VideoModel" and model_type != "sam3_video":
        raise ModelError(
            f"{path} is an image-only SAM3 checkpoint (Sam3Model): it has no tracker weights for video",
            hint="use facebook/sam3, an official sam3.pt, or a directory written by Sam3VideoModel.save_pretrained",
        )
    try:
        with quiet_transformers():
            loaded, info = cls.from_pretrained(  # type: ignore[misc]  # a pair with output_loading_info
                path, attn_implementation="sdpa", output_loading_info=True
            )
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise ModelError(f"cannot load SAM3 weights from {path}: {_first_line(e)}") from e
    _check_loading_info(path, dict(info))  # type: ignore[has-type]
    try:
        tokenizer: CLIPTokenizer = AutoTokenizer.from_pretrained(path)  # type: ignore[assignment]
    except Exception:
        # Some SAM3 directories carry no tokenizer files; SAM3's tokenizer is plain CLIP BPE.
        from s3seg.engine._tokenizer import build_clip_tokenizer

        tokenizer = build_clip_tokenizer()
    preprocess: dict[str, Any] = {}
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (path / name).is_file():
            data = json.loads((path / name).read_text())
            preprocess = data.get("image_processor", data)
            break
    return loaded, tokenizer, preprocess  # type: ignore[has-type]


def _check_loading_info(path: Path, info: dict[str, Any]) -> None:
    """transformers only logs what it could not load; here every gap is an error."""
    missing = sorted(str(k) for k in info.get("missing_keys", ()))
    if missing:
        raise ModelError(
            f"{path} lacks {len(missing)} weight(s) the model needs, which would be left random: {_few(missing)}",
            hint="the files are incomplete or use another key layout; re-save the model with save_pretrained",
        )
    unexpected = sorted(str(k) for k in info.get("unexpected_keys", ()))
    if unexpected:
        raise ModelError(
            f"{path} has {len(unexpected)} weight(s) this SAM3 model has no place for: {_few(unexpected)}",
            hint="the checkpoint belongs to another architecture or key layout",
        )
    mismatched = [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", ())]
    if mismatched:
        raise ModelError(
            f"{path} has {len(mismatched)} weight(s) of the wrong shape for its config: {_few(sorted(mismatched))}",
            hint="config.json must describe the same model size as the weights",
        )


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def _load_official(path: Path, cls: type[_M]) -> tuple[_M, CLIPTokenizer, dict[str, Any]]:
    from s3seg.engine._convert import load_official, load_official_video
    from s3seg.engine._tokenizer import build_clip_tokenizer

    video = cls.__name__ == "Sam3VideoModel"
    model = load_official_video(path) if video else load_official(path)
    return model, build_clip_tokenizer(), {}  # type: ignore[return-value]  # the class asked for


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No per-tensor progress bar or info chatter while loading; our own output stays clean."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
