"""Checkpoints: pickle-free round trip of nested state, atomic folder swap, damage → UserError,
and recovery of the newest complete checkpoint after a kill at any instant of a save.

Guards the resume invariant (DESIGN.md: "Resume after a stop gives the same next iterations as
never stopping"): whatever the trainer stores must come back with the same types and values.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file

import videogrpo.runs.checkpoint as checkpoint_module
from videogrpo import faults
from videogrpo.errors import UserError
from videogrpo.runs.checkpoint import (
    MANIFEST_FILE,
    SKELETON_FILE,
    TENSORS_FILE,
    FoundCheckpoint,
    checkpoint_problem,
    find_checkpoint,
    load_state,
    promote_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
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


# ---------------------------------------------------------------- surviving a kill at any instant


class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing after it runs, no `except Exception` catches it."""


def checkpoint_state(step: int) -> dict:
    return {"step": step, "w": torch.full((64,), float(step))}


def kill_at_operation(monkeypatch, operation: int) -> list[str]:
    """Make the `operation`-th file-system call (or fault point) of what follows raise
    SimulatedKill; returns the log of calls made. Patches the calls a checkpoint save uses to
    move and remove folders (shutil.rmtree removes through os.unlink / os.rmdir)."""
    calls: list[str] = []

    def wrap(name, original):
        def wrapper(*args, **kwargs):
            calls.append(name)
            if len(calls) == operation:
                raise SimulatedKill(name)
            return original(*args, **kwargs)

        return wrapper

    for name in ("replace", "unlink", "rmdir", "mkdir", "fsync"):
        monkeypatch.setattr(os, name, wrap(name, getattr(os, name)))
    monkeypatch.setattr(faults, "reached", wrap("fault point", lambda point, step: None))
    monkeypatch.setattr(checkpoint_module, "save_state", wrap("save_state", save_state))
    return calls


def newest_step(target) -> int:
    """The step of the newest complete checkpoint, after checking its content is that step's."""
    found = find_checkpoint(target)
    state = load_state(found.path)
    assert state["step"] == found.step and torch.equal(
        state["w"], checkpoint_state(found.step)["w"]
    )
    return found.step


def make_leftovers(tmp_path, layout: str):
    """The folders a kill can leave, with the newest complete step 2 (or 1 for `plain`)."""
    target = tmp_path / "checkpoint"
    save_checkpoint(target, checkpoint_state(1), step=1)
    if layout == "plain":
        return target, 1
    save_checkpoint(target, checkpoint_state(2), step=2)
    tmp, old = tmp_path / "checkpoint.tmp", tmp_path / "checkpoint.old"
    if layout == "swap":  # killed between the two renames: .old (step 1) and .tmp (step 2)
        os.replace(target, tmp)
        save_checkpoint(tmp_path / "other", checkpoint_state(1), step=1)
        os.replace(tmp_path / "other", old)
    elif layout == "cleanup":  # killed while removing .old: half of it is gone
        save_checkpoint(tmp_path / "other", checkpoint_state(1), step=1)
        os.replace(tmp_path / "other", old)
        (old / TENSORS_FILE).unlink()
    elif layout == "unfinished":  # killed while writing .tmp: no manifest yet
        tmp.mkdir()
        (tmp / TENSORS_FILE).write_bytes(b"half")
    return target, 2


@pytest.mark.parametrize("layout", ["plain", "swap", "cleanup", "unfinished"])
def test_a_kill_at_any_instant_of_a_save_keeps_the_newest_complete_checkpoint(
    tmp_path, monkeypatch, layout
):
    """Kill the save of step 3 after each of its file-system calls in turn, starting from every
    layout a kill can leave: the newest complete checkpoint is never older than before the save
    and loads whole; once the save gets through, it is step 3 alone."""
    operation, killed_after_manifest = 1, 0
    while True:
        case = tmp_path / f"case{operation}"
        case.mkdir()
        target, before = make_leftovers(case, layout)
        with monkeypatch.context() as patch:
            calls = kill_at_operation(patch, operation)
            try:
                save_checkpoint(target, checkpoint_state(3), step=3)
                finished = True
            except SimulatedKill:
                finished = False
        assert newest_step(target) in (before, 3), (operation, calls)
        if finished:
            break
        killed_after_manifest += newest_step(target) == 3
        # The next save after the kill (what the resumed run does) gets through and cleans up.
        save_checkpoint(target, checkpoint_state(4), step=4)
        assert newest_step(target) == 4
        assert sorted(p.name for p in case.iterdir() if "checkpoint" in p.name) == ["checkpoint"]
        operation += 1
    # The sweep went through the whole save, the swap included (kills after the manifest).
    assert operation > 10 and killed_after_manifest >= 3, calls
    assert sorted(p.name for p in case.iterdir() if "checkpoint" in p.name) == ["checkpoint"]
    assert newest_step(target) == 3


def test_the_newest_complete_folder_wins_and_ties_go_to_the_main_name(tmp_path):
    target, _ = make_leftovers(tmp_path, "swap")  # .old step 1, .tmp step 2, no checkpoint/
    assert find_checkpoint(target) == FoundCheckpoint(tmp_path / "checkpoint.tmp", 2)
    save_checkpoint(tmp_path / "copy", checkpoint_state(2), step=2)
    os.replace(tmp_path / "copy", target)
    assert find_checkpoint(target) == FoundCheckpoint(target, 2)


def test_a_file_changed_in_place_fails_its_hash_and_the_older_copy_is_used(tmp_path):
    """Same size, one byte different (what a power cut or bad disk can leave): not complete."""
    target, _ = make_leftovers(tmp_path, "swap")
    tensors = tmp_path / "checkpoint.tmp" / TENSORS_FILE
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    assert "hash" in checkpoint_problem(tmp_path / "checkpoint.tmp")
    assert find_checkpoint(target) == FoundCheckpoint(tmp_path / "checkpoint.old", 1)


def test_an_unfinished_first_save_is_no_checkpoint_and_a_damaged_one_is_an_error(tmp_path):
    target = tmp_path / "checkpoint"
    (tmp_path / "checkpoint.tmp").mkdir()
    (tmp_path / "checkpoint.tmp" / TENSORS_FILE).write_bytes(b"half")
    assert find_checkpoint(target) is None  # killed during the first save: nothing to resume
    save_checkpoint(target, checkpoint_state(1), step=1)
    (target / MANIFEST_FILE).write_text("{")
    with pytest.raises(UserError) as error:
        find_checkpoint(target)
    assert str(target) in str(error.value) and MANIFEST_FILE in str(error.value)


@pytest.mark.parametrize("layout", ["swap", "cleanup", "unfinished"])
def test_promoting_leaves_the_newest_checkpoint_alone_under_its_name(tmp_path, layout):
    target, newest = make_leftovers(tmp_path, layout)
    promote_checkpoint(find_checkpoint(target), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert find_checkpoint(target) == FoundCheckpoint(target, newest)


def test_the_manifest_records_each_files_size_and_hash_and_files_get_the_umask_mode(tmp_path):
    """safetensors writes 0600; a run's weights should be readable like the rest of it."""
    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "checkpoint", checkpoint_state(5), step=5)
    finally:
        os.umask(previous)
    folder = tmp_path / "checkpoint"
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["step"] == 5 and sorted(manifest["files"]) == [SKELETON_FILE, TENSORS_FILE]
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644
