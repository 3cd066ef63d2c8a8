"""What slicing a student from its teacher reads of the teacher: its config and named weights.

`ModuleWeights` reads them from a loaded model. `SafetensorsWeights` reads each weight from the
teacher's safetensors files when a slice of it is asked for, and nothing else: a worker that
builds a 4-layer student from a 24-layer teacher whose outputs are cached never holds the whole
teacher (nor the layers it does not take). Both answer by the names of the model's own
parameters, tied weights (an output layer that is the input embedding) included, in fp32.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


class ModuleWeights:
    """The weights of a loaded model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.config = model.config
        self._params = dict(model.named_parameters(remove_duplicate=False))
        self._buffers = dict(model.named_buffers())

    def param(self, name: str) -> torch.Tensor:
        return self._params[name]

    def buffer(self, name: str) -> torch.Tensor | None:
        return self._buffers.get(name)


class SafetensorsWeights:
    """The weights of a model saved as safetensors (one file, or shards with their
    `model.safetensors.index.json`), read one tensor at a time when asked for. The model of
    `config` that `transformers.<auto_class>` builds gives the names: it is built on the meta
    device (no memory) to learn which names share a tensor and the prefix of its base model,
    under which older checkpoints may or may not store them."""

    def __init__(self, files: Iterable[Path], config: Any, auto_class: str) -> None:
        import transformers
        from safetensors import safe_open

        self.config = config
        self._where: dict[str, Path] = {}
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                self._where.update(dict.fromkeys(f.keys(), Path(path)))
        with torch.device("meta"):
            model = getattr(transformers, auto_class).from_config(config)
        self._prefix = getattr(model, "base_model_prefix", "") or ""
        # names of one tensor (tied weights): each name answers with the tensor stored under any of them
        by_tensor: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            by_tensor.setdefault(id(p), []).append(name)
        self._aliases = {name: names for names in by_tensor.values() for name in names}
        self._buffer_names = {name for name, _ in model.named_buffers()}
        self.read: list[str] = []
        """the stored names this view has read, in order"""

    def _stored(self, name: str) -> str | None:
        prefix = f"{self._prefix}." if self._prefix else ""
        for alias in self._aliases.get(name, [name]):
            for key in (alias, alias.removeprefix(prefix), prefix + alias):
                if key in self._where:
                    return key
        return None

    def _read(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        self.read.append(key)
        with safe_open(str(self._where[key]), framework="pt") as f:
            return f.get_tensor(key).float()

    def param(self, name: str) -> torch.Tensor:
        key = self._stored(name)
        if key is None:
            raise KeyError(f"{name}: not in the teacher's safetensors files")
        return self._read(key)

    def buffer(self, name: str) -> torch.Tensor | None:
        key = self._stored(name) if name in self._buffer_names else None
        return None if key is None else self._read(key)


def safetensors_files(folder: Path) -> list[Path]:
    """The safetensors files of a saved model: its shards by its index, or its one file."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    return [folder / "model.safetensors"] if (folder / "model.safetensors").exists() else []


def as_weights(teacher: Any) -> Any:
    """A teacher's weights to slice from: a loaded model's, or the view given."""
    return ModuleWeights(teacher) if isinstance(teacher, torch.nn.Module) else teacher


__all__ = ["ModuleWeights", "SafetensorsWeights", "as_weights", "safetensors_files"]
