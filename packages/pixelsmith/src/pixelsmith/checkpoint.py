"""Resumable runs: the latent state of a cascade saved atomically after every step.

A checkpoint folder holds ``run.json`` (the settings the run was started with, and its seed)
and per stage: ``stage<k>_inputs.safetensors`` (guidance latent and noise),
``stage<k>_progress.safetensors`` (latent after the last finished step, the step, the generator
state) and ``stage<k>_final.safetensors`` (the finished latent). Restarting with the same
settings continues from the last saved step and gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from common_kernels.runtime.errors import InvalidValue, literal
from common_kernels.runtime.files import atomic_write, write_json

RUN_FILE = "run.json"


def _save_tensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``tensors`` to ``path`` atomically (``common_kernels.runtime.files.atomic_write``)."""
    with atomic_write(path) as temp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temp, metadata)


def _normalise(value: object) -> object:
    """The JSON form of ``value`` (tuples become lists), to compare settings."""
    return json.loads(json.dumps(value, default=str))


class CheckpointStore:
    """Latent state of a cascade run in ``directory``.

    Args:
        directory: checkpoint folder (created if missing).
        settings: everything that determines the result except the seed (JSON-able).
        seed: the run's seed; ``None`` reuses the seed of an existing checkpoint, or draws one.
        device: where loaded tensors go.
    """

    def __init__(
        self,
        directory: str | Path,
        settings: dict,
        seed: int | None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.directory = Path(directory)
        self.device = device
        settings = _normalise(settings)
        run_file = self.directory / RUN_FILE
        if run_file.exists():
            saved = json.loads(run_file.read_text())
            if saved["settings"] != settings or (seed is not None and saved["seed"] != seed):
                changed = sorted(
                    k
                    for k in {*settings, *saved["settings"]}
                    if settings.get(k) != saved["settings"].get(k)
                ) + (["seed"] if seed is not None and saved["seed"] != seed else [])
                raise ValueError(
                    f"checkpoint {str(self.directory)!r} belongs to a run with other settings "
                    f"({', '.join(changed)} differ); discard it with --restart "
                    "(restart=True) or choose another checkpoint folder"
                )
            self.seed = int(saved["seed"])
            self.resumed = True
        else:
            self.seed = seed if seed is not None else secrets.randbits(62)
            write_json(
                run_file, {"settings": settings, "seed": self.seed}, indent=1, make_parents=True
            )
            self.resumed = False

    @staticmethod
    def discard(directory: str | Path) -> None:
        """Delete the checkpoint folder ``directory`` if it holds one (refuses other folders)."""
        directory = Path(directory)
        if not directory.exists():
            return
        if not (directory / RUN_FILE).is_file():
            raise ValueError(
                f"{str(directory)!r} is not a pixelsmith checkpoint folder (no {RUN_FILE}); "
                "refusing to delete it"
            )
        shutil.rmtree(directory)

    def _path(self, stage: int, kind: str) -> Path:
        return self.directory / f"stage{stage}_{kind}.safetensors"

    def _load(self, stage: int, kind: str) -> dict[str, Tensor] | None:
        path = self._path(stage, kind)
        if not path.exists():
            return None
        return load_file(path, device="cpu")

    def save_final(self, stage: int, latents: Tensor, generator_state: Tensor) -> None:
        _save_tensors(
            {"latents": latents, "generator": generator_state}, self._path(stage, "final"), {}
        )

    def load_final(self, stage: int) -> tuple[Tensor, Tensor] | None:
        """(latents, generator state) of a finished stage, or ``None``."""
        saved = self._load(stage, "final")
        if saved is None:
            return None
        return saved["latents"].to(self.device), saved["generator"]

    def save_inputs(self, stage: int, guidance: Tensor, noise: Tensor) -> None:
        _save_tensors({"guidance": guidance, "noise": noise}, self._path(stage, "inputs"), {})

    def load_inputs(self, stage: int) -> tuple[Tensor, Tensor] | None:
        """(guidance latent, guidance noise) of a started stage, or ``None``."""
        saved = self._load(stage, "inputs")
        if saved is None:
            return None
        return saved["guidance"].to(self.device), saved["noise"].to(self.device)

    def save_progress(
        self, stage: int, latents: Tensor, step: int, generator_state: Tensor
    ) -> None:
        _save_tensors(
            {"latents": latents, "generator": generator_state, "step": torch.tensor(step)},
            self._path(stage, "progress"),
            {"step": str(step)},
        )

    def load_progress(self, stage: int) -> tuple[Tensor, int, Tensor] | None:
        """(latents, next step, generator state) of a started stage, or ``None``."""
        saved = self._load(stage, "progress")
        if saved is None:
            return None
        return saved["latents"].to(self.device), int(saved["step"]), saved["generator"]

    def remove(self) -> None:
        """Delete the checkpoint folder."""
        shutil.rmtree(self.directory, ignore_errors=True)


def check_checkpoint_dir(folder: Path, *, chosen: bool = True) -> None:
    """A checkpoint folder that is absent, empty or a pixelsmith checkpoint, and can be made.

    A folder holding other files is refused: a finished run deletes its checkpoint folder.

    Args:
        folder: the checkpoint folder.
        chosen: the caller gave it (``checkpoint_dir``); else it is ``<output>.pixelsmith``.

    Raises:
        InvalidValue: naming ``checkpoint_dir``: a file, a folder below a file, no write
            permission, a foreign folder.
    """
    shown = literal(folder)
    label = f"{{checkpoint_dir}} {shown}"
    if not chosen:
        label = f"the checkpoint folder {shown} (set with {{checkpoint_dir}})"
    problem = None
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if folder.exists() and not folder.is_dir():
        problem = " is a file, not a folder"
    elif not existing.is_dir():
        problem = f": cannot create it, {literal(existing)} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f": cannot write to {literal(existing)} (permission denied)"
    elif folder.is_dir() and any(folder.iterdir()) and not (folder / RUN_FILE).is_file():
        problem = (
            f" holds files but no {RUN_FILE}: not a pixelsmith checkpoint folder, and a finished "
            "run deletes its checkpoint folder; choose another {checkpoint_dir}"
        )
    if problem is not None:
        raise InvalidValue("checkpoint_dir", label + problem)
