"""OpenAI-format checkpoint files for tests: fp16 TorchScript archives like OpenAI's releases, and state dicts.

OpenAI ships each CLIP as an fp16 TorchScript archive holding the whole model (``visual.*`` + the text
tower) plus the scalar buffers ``input_resolution``, ``context_length`` and ``vocab_size``. ``openai_clip``
builds such a model from ``reference.reference_clip`` (random weights, OpenAI's key names) and
``write_torchscript_archive`` scripts and saves it the way OpenAI's files were made.
"""

from __future__ import annotations

import copy
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from open_clip.model import CLIP
from reference import reference_clip

OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")


def add_openai_scalars(model: CLIP, input_resolution: int) -> CLIP:
    """Register OpenAI's scalar buffers on ``model`` (open_clip keeps two of them as plain ints)."""
    values = dict(input_resolution=input_resolution, context_length=model.context_length, vocab_size=model.vocab_size)
    for name, value in values.items():
        if hasattr(model, name):
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    return model


def openai_clip(geometry: dict, seed: int = 0) -> CLIP:
    """A whole CLIP as OpenAI ships it: every float tensor fp16, plus the scalar buffers."""
    return add_openai_scalars(reference_clip(**geometry, seed=seed).half(), geometry["input_resolution"])


def reference_image_embedding(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    """``encode_image`` in fp32 from the model's (fp16-rounded) weights: ``[b, output_dim]``."""
    with torch.no_grad():
        return copy.deepcopy(model).float().encode_image(images.float())


def write_torchscript_archive(model: torch.nn.Module, path: Path) -> Path:
    """Script ``model`` and save it: a zip of ``<stem>/data.pkl``, ``data/<n>``, ``code/``, ``constants.pkl``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI's files are still archives
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def write_state_dict(state_dict: dict, path: Path, wrap: Callable[[dict], object] = lambda sd: sd, **save_kwargs) -> Path:
    """``torch.save(wrap(state_dict), path)``; ``wrap`` builds the checkpoint around it (e.g. open_clip's)."""
    torch.save(wrap(state_dict), path, **save_kwargs)
    return path


def rewrite_archive(source: Path, target: Path, edit: Callable[[str, bytes], tuple[str, bytes] | None]) -> Path:
    """Copy a zip archive member by member through ``edit(name, data)``, which may rename, replace or drop
    (``None``) each member; members are stored uncompressed, as PyTorch writes them."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for name in archive.namelist():
            edited = edit(name, archive.read(name))
            if edited is not None:
                out.writestr(*edited)
    return target


class SystemCall:
    """Pickles into ``os.system(command)``: what a malicious checkpoint runs on ``pickle.load``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def malicious_pickle(marker: Path) -> bytes:
    """A pickle that would create ``marker`` if it were ever unpickled by an unrestricted unpickler."""
    return pickle.dumps({"conv1.weight": SystemCall(f"touch {marker}")}, protocol=2)
