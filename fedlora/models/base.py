"""Loading the base pipeline: the embedded default, any local diffusers folder, or a hub id.

The real ``from_pretrained`` path is used for all three, so what is tested on the embedded
model is what runs on Stable Diffusion 1.x folders.
"""

from __future__ import annotations

import importlib.metadata
import json
import urllib.parse
from pathlib import Path
from typing import Any

from ..config import EMBEDDED_BASE

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "assets" / "base"
BASE_INFO_FILE = "fedlora_base.json"

_CACHE: dict[str, object] = {}


class BaseModelError(ValueError):
    """The base model cannot be found or loaded; the message says what to do."""


def embedded_dir() -> Path:
    """The shipped base model's folder.

    Under ``flwr run`` the app code runs from a copy (the FAB) that carries no weight
    files, so fall back to the installed ``fedlora`` distribution's copy.
    """
    candidates = [EMBEDDED_DIR]
    try:
        dist = importlib.metadata.distribution("fedlora")
        direct = dist.read_text("direct_url.json")
        if direct and json.loads(direct).get("url", "").startswith("file://"):
            root = Path(urllib.parse.unquote(urllib.parse.urlparse(json.loads(direct)["url"]).path))
            candidates.append(root / "fedlora" / "assets" / "base")
        candidates.append(Path(str(dist.locate_file("fedlora/assets/base"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if (path / "unet" / "diffusion_pytorch_model.safetensors").is_file():
            return path
    return EMBEDDED_DIR


def resolve_base_model(name: str) -> str:
    """A folder path or hub id that ``from_pretrained`` accepts."""
    if name == EMBEDDED_BASE:
        path = embedded_dir()
        if not (path / "model_index.json").is_file():
            raise BaseModelError(
                f"the embedded base model is missing at {path}; create it with `fedlora pretrain configs/pretrain.toml`"
            )
        return str(path)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise BaseModelError(
                f"model.base_model = {name!r} is a folder without model_index.json (not a diffusers pipeline)"
            )
        return str(path.resolve())
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a hub id; only works where the hub is reachable
    raise BaseModelError(
        f"model.base_model = {name!r} is neither 'embedded', an existing diffusers folder, nor a hub id (owner/name)"
    )


def load_pipeline(name: str, *, cached: bool = True) -> Any:
    """A float32 CPU/GPU-agnostic ``StableDiffusionPipeline``; one copy per process when cached."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    location = resolve_base_model(name)
    if cached and location in _CACHE:
        return _CACHE[location]
    diffusers_logging.disable_progress_bar()  # one bar per component and Ray worker is noise
    transformers_logging.disable_progress_bar()
    local = Path(location).exists()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            location,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=local,
        )
    except (OSError, ValueError) as err:
        raise BaseModelError(f"could not load base model {name!r} from {location}: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    use_sdpa(pipe.unet)
    for part in (pipe.vae, pipe.text_encoder, pipe.unet):
        part.requires_grad_(False)
        part.eval()
    if cached:
        _CACHE[location] = pipe
    return pipe


def use_sdpa(unet: Any) -> None:
    """Every attention layer on PyTorch's fused ``scaled_dot_product_attention`` (flash / memory-
    efficient kernels on a GPU). diffusers picks it by default; a folder saved with another
    processor would otherwise keep the quadratic-memory one at 512 px."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if any(not isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values()):
        unet.set_attn_processor(AttnProcessor2_0())


def base_info(name: str) -> dict:
    """What the base was pretrained on (public split), if it was made by ``fedlora pretrain``."""
    location = resolve_base_model(name)
    info = Path(location) / BASE_INFO_FILE
    return json.loads(info.read_text()) if info.is_file() else {}
