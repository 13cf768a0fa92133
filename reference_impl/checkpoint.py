"""Saving and resuming training: model weights, optimizer state and step, bit for bit, without pickle.

A checkpoint is a directory:

    model.safetensors      every tensor of ``model.state_dict()``, tied weights stored once
    optimizer.safetensors  the optimizer's per-parameter tensors (AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``),
                           keyed ``state.<parameter index>.<name>``            (only when an optimizer is saved)
    optimizer.json         the rest of ``optimizer.state_dict()``: hyperparameters, non-tensor state
    meta.json              step, the caller's ``extra``, the architecture (every key's shape and dtype, which
                           keys are tied to which) and a SHA-256 of each file above

Why this shape: safetensors holds only tensors and cannot run code when read, unlike ``torch.load`` of a pickle,
so loading a student's checkpoint is safe; JSON holds the few non-tensor values. The checksums turn a truncated
or corrupted file into a clear error instead of silently wrong weights. The directory is written under a
temporary name beside its destination and renamed into place, so a crash mid-save never leaves a half-written
checkpoint under the real name: readers see the old checkpoint or the new one.

Loading checks everything before changing anything: a model whose keys, shapes, dtypes or weight tying differ
from the checkpoint's gets a ``ValueError`` naming the keys, and neither the model nor the optimizer is touched.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor, nn

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_JSON_FILE = "optimizer.json"
META_FILE = "meta.json"


def _storage_key(tensor: Tensor) -> tuple[Any, ...]:
    """Two state-dict entries with the same key here are the same tensor (tied weights)."""
    return (
        tensor.device,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
    )


def _tied_keys(state_dict: dict[str, Tensor]) -> dict[str, str]:
    """``{alias: source}`` for each key whose tensor is an earlier key's tensor, e.g. a tied output projection."""
    first_key_of: dict[tuple[Any, ...], str] = {}
    tied = {}
    for key, tensor in state_dict.items():
        if tensor.numel() == 0:
            continue  # empty tensors may all report the same (null) data pointer without being tied
        storage = _storage_key(tensor)
        if storage in first_key_of:
            tied[key] = first_key_of[storage]
        else:
            first_key_of[storage] = key
    return tied


def architecture(model: nn.Module) -> dict[str, Any]:
    """The model's fingerprint as stored in ``meta.json``: each state-dict key's shape and dtype, and the ties."""
    state_dict = model.state_dict()
    return {
        "tensors": {
            key: {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
            for key, tensor in state_dict.items()
        },
        "tied": _tied_keys(state_dict),
    }


def _architecture_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    saved_tensors, current_tensors = saved["tensors"], current["tensors"]
    problems = []
    missing = sorted(saved_tensors.keys() - current_tensors.keys())
    unexpected = sorted(current_tensors.keys() - saved_tensors.keys())
    if missing:
        problems.append(f"keys in the checkpoint but not in the model: {missing}")
    if unexpected:
        problems.append(f"keys in the model but not in the checkpoint: {unexpected}")
    for key in sorted(saved_tensors.keys() & current_tensors.keys()):
        was, now = saved_tensors[key], current_tensors[key]
        if was["shape"] != now["shape"]:
            problems.append(
                f"{key}: checkpoint shape {tuple(was['shape'])}, model shape {tuple(now['shape'])}"
            )
        if was["dtype"] != now["dtype"]:
            problems.append(f"{key}: checkpoint dtype {was['dtype']}, model dtype {now['dtype']}")
    if not problems and saved["tied"] != current["tied"]:
        problems.append(f"tied weights differ: checkpoint {saved['tied']}, model {current['tied']}")
    return problems


def _encode_json(value: Any, where: str) -> Any:
    """JSON for optimizer hyperparameters; tuples (AdamW's ``betas``) are tagged so they come back as tuples."""
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_json(item, where) for item in value]}
    if isinstance(value, list):
        return [_encode_json(item, where) for item in value]
    if isinstance(value, dict):
        return {str(key): _encode_json(item, f"{where}.{key}") for key, item in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot save optimizer value {where} of type {type(value).__name__} in a checkpoint")


def _decode_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode_json(item) for item in value["__tuple__"])
        return {key: _decode_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_json(item) for item in value]
    return value


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into its tensors (for safetensors) and everything else (for JSON)."""
    tensors = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, parameter_state in state_dict["state"].items():
        plain_state[str(index)] = {}
        for name, value in parameter_state.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous()
            else:
                plain_state[str(index)][name] = _encode_json(value, f"state.{index}.{name}")
    param_groups = [
        _encode_json(group, f"param_groups.{i}") for i, group in enumerate(state_dict["param_groups"])
    ]
    return tensors, {"state": plain_state, "param_groups": param_groups}


def _join_optimizer_state(tensors: dict[str, Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {
        int(index): {name: _decode_json(value) for name, value in parameter_state.items()}
        for index, parameter_state in plain["state"].items()
    }
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    return {"state": state, "param_groups": [_decode_json(group) for group in plain["param_groups"]]}


def _write(path: Path, data: bytes) -> str:
    """Write ``data`` durably and return its SHA-256."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return hashlib.sha256(data).hexdigest()


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` (and ``optimizer``, ``step``, JSON-serialisable ``extra``) to the directory ``path``.

    An existing checkpoint at ``path`` is replaced only once the new one is completely written.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and ((path / META_FILE).exists() or not any(path.iterdir()))):
        # Replacing the directory deletes it: refuse anything that is not an old checkpoint or empty.
        raise FileExistsError(f"{path} exists and is not a checkpoint directory; refusing to replace it")
    try:
        extra_json = json.loads(json.dumps(extra if extra is not None else {}))
    except TypeError as error:
        raise TypeError(f"checkpoint extra must be JSON-serialisable: {error}") from error

    state_dict = model.state_dict()
    tied = _tied_keys(state_dict)
    model_tensors = {
        key: tensor.detach().contiguous() for key, tensor in state_dict.items() if key not in tied
    }
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "extra": extra_json,
        "architecture": architecture(model),
        "files": {},
    }

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        meta["files"][MODEL_FILE] = _write(staging / MODEL_FILE, safetensors.torch.save(model_tensors))
        if optimizer is not None:
            optimizer_tensors, optimizer_plain = _split_optimizer_state(optimizer.state_dict())
            meta["files"][OPTIMIZER_TENSORS_FILE] = _write(
                staging / OPTIMIZER_TENSORS_FILE, safetensors.torch.save(optimizer_tensors)
            )
            meta["files"][OPTIMIZER_JSON_FILE] = _write(
                staging / OPTIMIZER_JSON_FILE, json.dumps(optimizer_plain, indent=1).encode()
            )
        _write(staging / META_FILE, json.dumps(meta, indent=1).encode())
        _fsync_directory(staging)
        if path.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside first. A crash between
            # the two renames leaves both complete checkpoints on disk, under their temporary names.
            retired = staging.with_name(staging.name + ".old")
            os.rename(path, retired)
            os.rename(staging, path)
            shutil.rmtree(retired)
        else:
            os.rename(staging, path)
        _fsync_directory(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _read_verified(directory: Path, name: str, meta: dict[str, Any]) -> bytes:
    file = directory / name
    if name not in meta["files"]:
        raise ValueError(f"checkpoint {directory} has no {name}")
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"checkpoint {directory} is incomplete: {name} is missing") from None
    if hashlib.sha256(data).hexdigest() != meta["files"][name]:
        raise ValueError(
            f"checkpoint file {file} is corrupt or truncated (its SHA-256 does not match meta.json)"
        )
    return data


def _load_tensors(directory: Path, name: str, meta: dict[str, Any]) -> dict[str, Tensor]:
    data = _read_verified(directory, name, meta)
    try:
        return safetensors.torch.load(data)
    except SafetensorError as error:
        raise ValueError(
            f"checkpoint file {directory / name} is not a valid safetensors file: {error}"
        ) from error


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's ``meta.json``: ``step``, ``extra``, ``architecture``, the file checksums."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    try:
        meta = json.loads((path / META_FILE).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is not a complete checkpoint: {META_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"checkpoint file {path / META_FILE} is corrupt: {error}") from error
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path / META_FILE} is not a format-{FORMAT_VERSION} checkpoint")
    return meta


def load_checkpoint(
    path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> int:
    """Restore ``model`` (and ``optimizer``, if given) from the directory ``path``; return the saved step.

    Raises ``ValueError`` naming the keys if the model does not match the checkpoint's architecture, and if any
    file is missing, truncated or corrupt; in every such case the model and optimizer are left unchanged.
    """
    path = Path(path)
    meta = read_meta(path)
    problems = _architecture_mismatch(meta["architecture"], architecture(model))
    if problems:
        raise ValueError(f"checkpoint {path} does not fit this model:\n  " + "\n  ".join(problems))

    stored = _load_tensors(path, MODEL_FILE, meta)
    tied = meta["architecture"]["tied"]
    expected_keys = meta["architecture"]["tensors"].keys() - tied.keys()
    if stored.keys() != expected_keys:
        raise ValueError(f"checkpoint file {path / MODEL_FILE} does not hold the keys its meta.json lists")
    model_state = {key: stored[tied.get(key, key)] for key in meta["architecture"]["tensors"]}

    if optimizer is not None:
        if OPTIMIZER_TENSORS_FILE not in meta["files"]:
            raise ValueError(f"checkpoint {path} was saved without an optimizer")
        optimizer_tensors = _load_tensors(path, OPTIMIZER_TENSORS_FILE, meta)
        try:
            optimizer_plain = json.loads(_read_verified(path, OPTIMIZER_JSON_FILE, meta))
        except json.JSONDecodeError as error:
            raise ValueError(f"checkpoint file {path / OPTIMIZER_JSON_FILE} is corrupt: {error}") from error
        # The optimizer goes first: torch checks its parameter groups against the saved ones before changing
        # anything, and the model, already checked above, cannot fail to load after it.
        optimizer.load_state_dict(_join_optimizer_state(optimizer_tensors, optimizer_plain))
    model.load_state_dict(model_state, strict=True)
    return int(meta["step"])
