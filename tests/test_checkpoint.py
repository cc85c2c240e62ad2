"""Checkpoints: pickle-free round trip of nested state, atomic folder swap, damage → UserError.

Guards the resume invariant (DESIGN.md: "Resume after a stop gives the same next iterations as
never stopping"): whatever the trainer stores must come back with the same types and values.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from videogrpo.errors import UserError
from videogrpo.runs.checkpoint import (
    SKELETON_FILE,
    TENSORS_FILE,
    load_state,
    restore_rng_state,
    rng_state,
    save_state,
    write_atomically,
)


def assert_same(loaded, original) -> None:
    """Equal values and equal types all the way down (tuples stay tuples, ints stay ints)."""
    assert type(loaded) is type(original), (type(loaded), type(original))
    if isinstance(original, torch.Tensor):
        assert loaded.dtype == original.dtype and loaded.shape == original.shape
        assert torch.equal(loaded, original)
    elif isinstance(original, dict):
        assert list(loaded) == list(original)  # keys, their types and their order
        for key in original:
            assert type(key) is type(next(k for k in loaded if k == key))
            assert_same(loaded[key], original[key])
    elif isinstance(original, list | tuple):
        assert len(loaded) == len(original)
        for a, b in zip(loaded, original, strict=True):
            assert_same(a, b)
    else:
        assert loaded == original


def test_nested_state_round_trips_with_types(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {
        "iteration": 7,
        "lr": 3e-4,
        "flag": True,
        "nothing": None,
        "name": "sage",
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}, 1: {}},
            "param_groups": [{"params": [0, 1], "betas": (0.9, 0.999), "fused": None}],
        },
        "mixed_keys": {1: "one", "1": "string one"},
        "empty": {"list": [], "tuple": (), "dict": {}},
        "tensors": {
            "rng": torch.get_rng_state(),  # uint8
            "ints": torch.arange(5),
            "half": torch.randn(4, generator=generator).to(torch.bfloat16),
            "scalar": torch.tensor(2.5, dtype=torch.float64),
            "non_contiguous": torch.randn(3, 4, generator=generator).t(),
        },
    }
    save_state(tmp_path, state)
    assert_same(load_state(tmp_path), state)


def test_tied_tensors_are_stored_once_and_come_back_equal(tmp_path):
    """Views of one storage (tied embeddings) would make safetensors refuse the file."""
    weight = torch.randn(4, 3)
    view = weight[1:3]  # another view of the same storage, different shape: stored separately
    state = {"embed": weight, "lm_head": weight, "nested": [weight], "part": view}
    save_state(tmp_path, state)
    assert len(load_file(str(tmp_path / TENSORS_FILE))) == 2
    loaded = load_state(tmp_path)
    for key in ("embed", "lm_head"):
        assert torch.equal(loaded[key], weight)
    assert torch.equal(loaded["nested"][0], weight) and torch.equal(loaded["part"], view)


def test_saved_tensors_are_snapshots_not_aliases(tmp_path):
    weight = torch.zeros(3)
    save_state(tmp_path, {"w": weight})
    weight.add_(1.0)
    assert torch.equal(load_state(tmp_path)["w"], torch.zeros(3))


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    """AdamW restored from a checkpoint takes the same next step as the one never saved."""
    torch.manual_seed(0)

    def make() -> tuple[torch.nn.Linear, torch.optim.AdamW]:
        layer = torch.nn.Linear(3, 2)
        return layer, torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.01)

    def train_step(layer, optimizer, x) -> None:
        optimizer.zero_grad()
        layer(x).square().sum().backward()
        optimizer.step()

    x = torch.randn(5, 3)
    layer, optimizer = make()
    for _ in range(2):
        train_step(layer, optimizer, x)
    save_state(tmp_path, {"weights": layer.state_dict(), "optimizer": optimizer.state_dict()})
    train_step(layer, optimizer, x)

    state = load_state(tmp_path)
    resumed, resumed_optimizer = make()
    resumed.load_state_dict(state["weights"])
    resumed_optimizer.load_state_dict(state["optimizer"])
    train_step(resumed, resumed_optimizer, x)
    for a, b in zip(resumed.parameters(), layer.parameters(), strict=True):
        assert torch.equal(a, b)


def test_rng_state_round_trips(tmp_path):
    torch.manual_seed(123)
    save_state(tmp_path, {"rng": rng_state()})
    expected = torch.rand(4)
    torch.manual_seed(999)
    restore_rng_state(load_state(tmp_path)["rng"])
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("value", [{1.5: "float key"}, {"s": {1, 2}}, {"o": object()}])
def test_unsupported_values_are_refused_when_saving(tmp_path, value):
    with pytest.raises(TypeError):
        save_state(tmp_path, value)


def test_write_atomically_swaps_in_the_new_folder(tmp_path):
    target = tmp_path / "checkpoint"
    write_atomically(target, lambda tmp: save_state(tmp, {"step": 1}))
    write_atomically(target, lambda tmp: save_state(tmp, {"step": 2}))
    assert load_state(target) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no .tmp / .old left


def test_a_failing_writer_leaves_the_previous_checkpoint_intact(tmp_path):
    target = tmp_path / "checkpoint"
    write_atomically(target, lambda tmp: save_state(tmp, {"step": 1, "w": torch.ones(2)}))

    def crash_halfway(tmp) -> None:
        (tmp / TENSORS_FILE).write_bytes(b"half a file")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a save

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, crash_halfway)
    state = load_state(target)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(2))
    # The next save cleans up the leftover temporary folder and succeeds.
    write_atomically(target, lambda tmp: save_state(tmp, {"step": 3}))
    assert load_state(target) == {"step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete", "bad_json", "no_json"])
def test_a_damaged_checkpoint_is_a_user_error_naming_it(tmp_path, damage):
    save_state(tmp_path, {"w": torch.randn(64, 64), "step": 1})
    tensors, skeleton = tmp_path / TENSORS_FILE, tmp_path / SKELETON_FILE
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:200])
    elif damage == "garbage":
        tensors.write_bytes(b"\x00" * 64)
    elif damage == "delete":
        tensors.unlink()
    elif damage == "bad_json":
        skeleton.write_text("{not json")
    else:
        skeleton.unlink()
    with pytest.raises(UserError) as error:
        load_state(tmp_path)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


def test_skeleton_is_plain_json(tmp_path):
    """No pickle anywhere: the non-tensor part is readable JSON."""
    save_state(tmp_path, {"a": (1, "x"), 2: None})
    json.loads((tmp_path / SKELETON_FILE).read_text())
