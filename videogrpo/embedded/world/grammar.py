"""The synthetic world's prompt grammar, its vocabulary and the fixed train / held-out split.

Every prompt has one canonical form, so a prompt maps to exactly one set of attributes and the
rewards can check each attribute against the video. The held-out split keeps some combinations
of colour, shape and direction out of pretraining while every single word (and every pair of
words) still appears in training, so held-out scores measure compositional generalisation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from typing import Literal

import torch

from videogrpo.errors import UserError

VOCABULARY: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow", "cyan", "magenta"),
    "shape": ("square", "circle", "triangle"),
    "direction": ("left", "right", "up", "down"),
    "speed": ("slowly", "quickly"),
    # Neither background is an object colour, so object and background never blend together.
    "background": ("black", "gray"),
}

SENTENCE_FORM = "a {colour} {shape} moving {direction} {speed} on a {background} background"

# Held-out rule: (colour index + shape index + direction index) % HELDOUT_MODULUS == 0, for every
# speed and background. 7 exceeds the largest index range (6 colours), so for any fixed pair of
# the three attributes at most one value of the third is held out: every word and every pair of
# words stays in training, and 10 of the 72 colour-shape-direction triples (13.9 %) are held out.
HELDOUT_MODULUS = 7

Split = Literal["train", "heldout", "all"]


@dataclass(frozen=True)
class Attributes:
    """What a prompt asks for; one word from VOCABULARY per field."""

    colour: str
    shape: str
    direction: str
    speed: str
    background: str

    def __post_init__(self) -> None:
        for field in fields(self):
            word = getattr(self, field.name)
            if word not in VOCABULARY[field.name]:
                raise UserError(
                    f"unknown {field.name} {word!r}; expected one of "
                    f"{', '.join(VOCABULARY[field.name])}"
                )

    def index(self, attribute: str) -> int:
        """Position of this clip's word in VOCABULARY[attribute]; renderer and rewards use it."""
        return VOCABULARY[attribute].index(getattr(self, attribute))


def format_prompt(attributes: Attributes) -> str:
    """The one canonical sentence for these attributes."""
    return SENTENCE_FORM.format(**{f.name: getattr(attributes, f.name) for f in fields(Attributes)})


def _grammar_help() -> str:
    words = "; ".join(f"{name}: {', '.join(words)}" for name, words in VOCABULARY.items())
    return f"expected '{SENTENCE_FORM}' with {words}"


def parse_prompt(text: str) -> Attributes:
    """Attributes of a prompt in canonical form; UserError (one line) for anything else."""
    expected = SENTENCE_FORM.split()
    words = text.split()
    if len(words) != len(expected):
        raise UserError(f"prompt {text!r} is outside the world's grammar: {_grammar_help()}")
    chosen: dict[str, str] = {}
    for slot, word in zip(expected, words, strict=True):
        if slot.startswith("{"):
            attribute = slot.strip("{}")
            if word not in VOCABULARY[attribute]:
                raise UserError(
                    f"prompt {text!r} has unknown {attribute} {word!r}: {_grammar_help()}"
                )
            chosen[attribute] = word
        elif word != slot:
            raise UserError(f"prompt {text!r} is outside the world's grammar: {_grammar_help()}")
    return Attributes(**chosen)


def all_attributes() -> tuple[Attributes, ...]:
    """Every combination the grammar can express, in a fixed order (vocabulary order)."""
    names = [f.name for f in fields(Attributes)]
    return tuple(
        Attributes(**dict(zip(names, words, strict=True)))
        for words in itertools.product(*(VOCABULARY[name] for name in names))
    )


def is_heldout(attributes: Attributes) -> bool:
    """Whether pretraining never sees this combination (see HELDOUT_MODULUS)."""
    total = attributes.index("colour") + attributes.index("shape") + attributes.index("direction")
    return total % HELDOUT_MODULUS == 0


ALL_PROMPTS: tuple[str, ...] = tuple(format_prompt(a) for a in all_attributes())
TRAIN_PROMPTS: tuple[str, ...] = tuple(p for p in ALL_PROMPTS if not is_heldout(parse_prompt(p)))
HELDOUT_PROMPTS: tuple[str, ...] = tuple(p for p in ALL_PROMPTS if is_heldout(parse_prompt(p)))


def prompts(split: Split) -> tuple[str, ...]:
    """The prompts of one split, in the fixed order of all_attributes()."""
    if split == "train":
        return TRAIN_PROMPTS
    if split == "heldout":
        return HELDOUT_PROMPTS
    if split == "all":
        return ALL_PROMPTS
    raise UserError(f"unknown split {split!r}; expected train, heldout or all")


def sample_prompts(
    n: int, split: Split = "train", generator: torch.Generator | int | None = None
) -> list[str]:
    """n prompts drawn uniformly with replacement from a split; reproducible given a seed."""
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    pool = prompts(split)
    picks = torch.randint(len(pool), (n,), generator=generator)
    return [pool[i] for i in picks.tolist()]


def tokenizer_vocabulary() -> list[str]:
    """Every word the grammar can produce, in a fixed order: the sentence's own words first."""
    template_words = [w for w in SENTENCE_FORM.split() if not w.startswith("{")]
    words = template_words + [w for words in VOCABULARY.values() for w in words]
    return list(dict.fromkeys(words))
