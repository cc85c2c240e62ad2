"""Prompt files for real runs (.txt, .jsonl, .csv) and the order a run draws them in."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import make_trainer

from videogrpo.embedded.world.grammar import prompts as world_prompts
from videogrpo.errors import UserError
from videogrpo.training.prompts import PromptOrder, load_prompts

PROMPTS = ["a red circle, moving left", 'a sign that reads "OPEN"', "ünïcode prompt"]


def test_txt_jsonl_and_csv_files_give_the_same_prompts(tmp_path):
    """Commas, quotes and non-ASCII survive each format; extra columns and keys are ignored."""
    txt = tmp_path / "p.txt"
    txt.write_text("# a comment\n" + "\n\n".join(PROMPTS) + "\n", encoding="utf-8")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"id": i, "prompt": p}) for i, p in enumerate(PROMPTS)),
        encoding="utf-8",
    )
    captions = tmp_path / "captions.jsonl"  # another common key
    captions.write_text("\n".join(json.dumps({"caption": p}) for p in PROMPTS), encoding="utf-8")
    csv_file = tmp_path / "p.csv"
    with csv_file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "Prompt"])
        writer.writerows(enumerate(PROMPTS))
    for path in (txt, jsonl, captions, csv_file):
        assert load_prompts(str(path)) == PROMPTS, path.name


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"prompt": "ok"}\nnot json\n', r"line 2: not JSON"),
        ("bad.jsonl", '{"title": "x"}\n', r"line 1: expected an object with a string prompt"),
        ("bad.csv", "id,title\n1,x\n", r"no prompt / caption / text column .*found: id, title"),
        ("empty.txt", "# only a comment\n", r"holds no prompts"),
    ],
)
def test_malformed_prompt_files_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        load_prompts(str(path))
    assert "\n" not in str(error.value)


def test_random_order_draws_exactly_as_before_and_shuffle_visits_each_prompt_once_per_epoch():
    """`random` is the old independent draw from the data stream (the embedded presets' numbers
    stay bitwise); `shuffle` is a permutation per epoch, another one the next epoch, the same for
    the same seed."""
    generator = torch.Generator().manual_seed(0)
    picks = PromptOrder("random", 7, seed=0).draw(5, generator)
    assert picks == torch.randint(7, (5,), generator=torch.Generator().manual_seed(0)).tolist()

    order = PromptOrder("shuffle", 7, seed=3)
    first, second = order.draw(7, generator), order.draw(7, generator)
    assert sorted(first) == sorted(second) == list(range(7)) and first != second
    assert PromptOrder("shuffle", 7, seed=3).draw(14, generator) == first + second
    assert PromptOrder("shuffle", 7, seed=4).draw(7, generator) != first


def test_a_resumed_trainer_continues_the_shuffled_order_mid_epoch(tiny_model_dir, tmp_path):
    """The prompt position is part of the trainer's state: after a restore the next draws are
    the ones the uninterrupted trainer makes (3 prompts per draw, 5 prompts per epoch)."""
    prompts_file = tmp_path / "train.txt"
    prompts_file.write_text("\n".join(list(world_prompts("train"))[:5]) + "\n")
    settings = [
        f"data.prompts={prompts_file}",
        "data.order=shuffle",
        "data.prompts_per_iteration=3",
    ]
    straight = make_trainer(tiny_model_dir, tmp_path, "sage", settings)
    expected = [straight.next_prompts() for _ in range(3)]
    first = make_trainer(tiny_model_dir, tmp_path, "sage", settings)
    assert first.next_prompts() == expected[0]
    state = first.state_dict()
    resumed = make_trainer(tiny_model_dir, tmp_path, "sage", settings)
    resumed.load_state_dict(state)
    assert [resumed.next_prompts() for _ in range(2)] == expected[1:]
    drawn = [p for prompts, _ in expected[:2] for p in prompts[:: straight.config.data.group_size]]
    assert sorted(set(drawn[:5])) == sorted(set(resumed.prompts))  # epoch 1 = each prompt once
