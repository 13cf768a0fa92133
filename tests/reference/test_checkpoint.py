"""Checkpoints: bit-exact round trips of the debug model and its optimizer, clear errors, atomic writes."""

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

from reference_impl import checkpoint
from reference_impl.checkpoint import load_checkpoint, read_meta, save_checkpoint
from reference_impl.model import ModelArgs, Transformer
from reference_impl.train import AdamW, cross_entropy


def debug_model(seed: int = 0, **changes: Any) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(dataclasses.replace(ModelArgs.from_name("debug"), **changes))


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.args.vocab_size, (2, 9), generator=generator)
    cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trained(optimizer_class: type[torch.optim.Optimizer], **changes: Any) -> tuple[Transformer, Any]:
    model = debug_model(**changes)
    optimizer = optimizer_class(model.parameters(), lr=1e-3, weight_decay=0.1)
    for seed in range(3):
        training_step(model, optimizer, seed)
    return model, optimizer


def assert_identical(actual: Any, expected: Any) -> None:
    """Equal structure, equal plain values, and tensors with equal dtype, shape and bits."""
    assert type(actual) is type(expected), (type(actual), type(expected))
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_identical(actual[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_identical(a, e)
    else:
        assert actual == expected


@pytest.mark.parametrize("optimizer_class", [torch.optim.AdamW, AdamW])
def test_round_trip_is_bit_exact(tmp_path: Path, optimizer_class: type[torch.optim.Optimizer]) -> None:
    model, optimizer = trained(optimizer_class)
    save_checkpoint(tmp_path / "ckpt", model, optimizer, step=3, extra={"tokens_seen": 48})

    restored = debug_model(seed=1)
    restored_optimizer = optimizer_class(restored.parameters(), lr=0.5, weight_decay=0.0)
    step = load_checkpoint(tmp_path / "ckpt", restored, restored_optimizer)

    assert step == 3
    assert_identical(restored.state_dict(), model.state_dict())
    assert_identical(restored_optimizer.state_dict(), optimizer.state_dict())
    assert set(optimizer.state_dict()["state"][0]) >= {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize("optimizer_class", [torch.optim.AdamW, AdamW])
def test_training_continues_identically_after_load(
    tmp_path: Path, optimizer_class: type[torch.optim.Optimizer]
) -> None:
    model, optimizer = trained(optimizer_class)
    save_checkpoint(tmp_path / "ckpt", model, optimizer, step=3)
    training_step(model, optimizer, seed=99)

    resumed = debug_model(seed=1)
    resumed_optimizer = optimizer_class(resumed.parameters(), lr=1e-3, weight_decay=0.1)
    load_checkpoint(tmp_path / "ckpt", resumed, resumed_optimizer)
    training_step(resumed, resumed_optimizer, seed=99)

    assert_identical(resumed.state_dict(), model.state_dict())
    assert_identical(resumed_optimizer.state_dict(), optimizer.state_dict())


def test_step_and_extra_are_saved_in_meta(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model(), step=1234, extra={"run": "a", "losses": [2.5, 1.0]})
    meta = read_meta(tmp_path / "ckpt")
    assert meta["step"] == 1234
    assert meta["extra"] == {"run": "a", "losses": [2.5, 1.0]}
    assert meta["architecture"]["tensors"]["output.weight"] == {"shape": [256, 64], "dtype": "float32"}


def test_directory_holds_safetensors_and_json_only(tmp_path: Path) -> None:
    model, optimizer = trained(torch.optim.AdamW)
    save_checkpoint(tmp_path / "ckpt", model, optimizer)
    names = sorted(path.name for path in (tmp_path / "ckpt").iterdir())
    assert names == ["meta.json", "model.safetensors", "optimizer.json", "optimizer.safetensors"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt"]  # no temporary directory left


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer = trained(torch.optim.AdamW)
    save_checkpoint(tmp_path / "ckpt", model, optimizer)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    restored = debug_model(seed=1)
    load_checkpoint(tmp_path / "ckpt", restored, torch.optim.AdamW(restored.parameters()))


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path: Path) -> None:
    model = debug_model(tie_embeddings=True)
    save_checkpoint(tmp_path / "ckpt", model)
    stored = safetensors.torch.load_file(tmp_path / "ckpt" / "model.safetensors")
    assert "tok_embeddings.weight" in stored and "output.weight" not in stored
    assert read_meta(tmp_path / "ckpt")["architecture"]["tied"] == {"output.weight": "tok_embeddings.weight"}

    restored = debug_model(seed=1, tie_embeddings=True)
    load_checkpoint(tmp_path / "ckpt", restored)
    assert restored.output.weight is restored.tok_embeddings.weight
    assert_identical(restored.state_dict(), model.state_dict())


def test_tied_checkpoint_does_not_load_into_an_untied_model(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model(tie_embeddings=True))
    with pytest.raises(ValueError, match=r"tied weights differ.*output\.weight"):
        load_checkpoint(tmp_path / "ckpt", debug_model())


def test_extra_layer_is_named(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model())
    with pytest.raises(
        ValueError, match=r"in the model but not in the checkpoint: \['layers\.2\.attention\.wk\.weight'"
    ):
        load_checkpoint(tmp_path / "ckpt", debug_model(n_layers=3))


def test_missing_layer_is_named(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model(n_layers=3))
    with pytest.raises(
        ValueError, match=r"in the checkpoint but not in the model: \['layers\.2\.attention\.wk\.weight'"
    ):
        load_checkpoint(tmp_path / "ckpt", debug_model())


def test_shape_mismatch_is_named_and_leaves_the_model_unchanged(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model(vocab_size=300))
    model = debug_model()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"output\.weight: checkpoint shape \(300, 64\), model shape \(256, 64\)"
    ):
        load_checkpoint(tmp_path / "ckpt", model)
    assert_identical(dict(model.state_dict()), before)


def test_dtype_mismatch_is_named(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model())
    with pytest.raises(ValueError, match=r"norm\.weight: checkpoint dtype float32, model dtype bfloat16"):
        load_checkpoint(tmp_path / "ckpt", debug_model().to(torch.bfloat16))


def test_truncated_model_file_is_reported(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model())
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.safetensors is corrupt or truncated"):
        load_checkpoint(tmp_path / "ckpt", debug_model())


def test_flipped_weight_byte_is_reported(tmp_path: Path) -> None:
    model, optimizer = trained(torch.optim.AdamW)
    save_checkpoint(tmp_path / "ckpt", model, optimizer)
    state = tmp_path / "ckpt" / "optimizer.safetensors"
    data = bytearray(state.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's data: still a well-formed safetensors file
    state.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"optimizer\.safetensors is corrupt or truncated"):
        load_checkpoint(tmp_path / "ckpt", model, optimizer)


def test_corrupt_meta_is_reported(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model())
    (tmp_path / "ckpt" / "meta.json").write_text('{"step": 3, "extr')
    with pytest.raises(ValueError, match=r"meta\.json is corrupt"):
        load_checkpoint(tmp_path / "ckpt", debug_model())


def test_missing_file_is_reported(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model())
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"incomplete: model\.safetensors is missing"):
        load_checkpoint(tmp_path / "ckpt", debug_model())


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "nothing", debug_model())


def test_optimizer_requested_from_a_weights_only_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model())
    model = debug_model()
    with pytest.raises(ValueError, match="saved without an optimizer"):
        load_checkpoint(tmp_path / "ckpt", model, torch.optim.AdamW(model.parameters()))


def test_overwrite_replaces_the_old_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model(seed=0), step=1)
    newer = debug_model(seed=5)
    save_checkpoint(tmp_path / "ckpt", newer, step=2)
    restored = debug_model(seed=1)
    assert load_checkpoint(tmp_path / "ckpt", restored) == 2
    assert_identical(restored.state_dict(), newer.state_dict())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt"]


def test_failed_save_leaves_the_old_checkpoint_and_no_debris(tmp_path: Path) -> None:
    model = debug_model()
    save_checkpoint(tmp_path / "ckpt", model, step=1)
    before = (tmp_path / "ckpt" / "meta.json").read_bytes()
    # A tensor-valued hyperparameter cannot go into JSON: the save fails after the staging directory exists.
    optimizer = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.1))
    with pytest.raises(TypeError, match=r"param_groups\.0\.lr"):
        save_checkpoint(tmp_path / "ckpt", model, optimizer, step=2)
    assert (tmp_path / "ckpt" / "meta.json").read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt"]


def test_extra_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="extra must be JSON-serialisable"):
        save_checkpoint(tmp_path / "ckpt", debug_model(), extra={"when": object()})


def test_model_file_not_matching_meta_is_reported(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", debug_model())
    weights = tmp_path / "ckpt" / "model.safetensors"
    stored = safetensors.torch.load_file(weights)
    del stored["norm.weight"]
    data = safetensors.torch.save(stored)
    weights.write_bytes(data)
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    meta["files"]["model.safetensors"] = checkpoint.hashlib.sha256(data).hexdigest()
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"does not hold the keys its meta\.json lists"):
        load_checkpoint(tmp_path / "ckpt", debug_model())


def test_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a checkpoint directory"):
        save_checkpoint(tmp_path / "runs", debug_model())
    assert (tmp_path / "runs" / "notes.txt").read_text() == "keep me"
