"""The synthetic world: a strict grammar, a held-out split that tests composition, and a
deterministic renderer whose object always stays whole inside the frame."""

import itertools

import pytest
import torch

from videogrpo.embedded.world.grammar import (
    HELDOUT_PROMPTS,
    SENTENCE_FORM,
    TRAIN_PROMPTS,
    VOCABULARY,
    Attributes,
    all_attributes,
    format_prompt,
    parse_prompt,
    prompts,
    sample_prompts,
    tokenizer_vocabulary,
)
from videogrpo.embedded.world.render import (
    BACKGROUND_RGB,
    FRAMES,
    HEIGHT,
    OBJECT_RGB,
    SHAPE_TEMPLATES,
    WIDTH,
    render,
    render_prompts,
)
from videogrpo.errors import UserError

TRIPLE = ("colour", "shape", "direction")


def test_every_prompt_round_trips_through_the_grammar():
    for attributes in all_attributes():
        assert parse_prompt(format_prompt(attributes)) == attributes
    assert format_prompt(Attributes("red", "circle", "left", "quickly", "black")) == (
        "a red circle moving left quickly on a black background"
    )


@pytest.mark.parametrize(
    "text",
    [
        "a purple circle moving left quickly on a black background",  # unknown colour
        "a red circle moving left quickly on a black",  # truncated
        "a red circle moving sideways quickly on a black background",  # unknown direction
        "the red circle moving left quickly on a black background",  # not the sentence form
        "",
    ],
)
def test_prompt_outside_the_grammar_is_rejected_listing_the_vocabulary(text):
    with pytest.raises(UserError) as error:
        parse_prompt(text)
    message = str(error.value)
    assert "\n" not in message
    assert SENTENCE_FORM in message
    for words in VOCABULARY.values():
        for word in words:
            assert word in message


def test_attributes_reject_unknown_words():
    with pytest.raises(UserError, match="unknown shape 'hexagon'"):
        Attributes("red", "hexagon", "left", "quickly", "black")


def test_backgrounds_are_distinct_from_every_object_colour():
    distances = torch.cdist(BACKGROUND_RGB, OBJECT_RGB)
    assert distances.min() > 0.8


def test_heldout_split_is_disjoint_and_compositional():
    train, heldout = set(TRAIN_PROMPTS), set(HELDOUT_PROMPTS)
    assert not train & heldout
    assert train | heldout == set(prompts("all"))
    assert 0.10 <= len(heldout) / len(prompts("all")) <= 0.15
    train_attributes = [parse_prompt(p) for p in TRAIN_PROMPTS]
    for name, words in VOCABULARY.items():
        assert {getattr(a, name) for a in train_attributes} == set(words), name
    # Stronger than single words: every pair of colour / shape / direction is seen in training,
    # so a held-out prompt is a new combination of familiar pairs.
    for first, second in itertools.combinations(TRIPLE, 2):
        seen = {(getattr(a, first), getattr(a, second)) for a in train_attributes}
        assert len(seen) == len(VOCABULARY[first]) * len(VOCABULARY[second])


def test_sample_prompts_is_reproducible_and_stays_in_its_split():
    first = sample_prompts(50, "heldout", 3)
    assert first == sample_prompts(50, "heldout", torch.Generator().manual_seed(3))
    assert set(first) <= set(HELDOUT_PROMPTS)
    assert first != sample_prompts(50, "heldout", 4)
    with pytest.raises(UserError, match="unknown split"):
        sample_prompts(1, "test")


def test_tokenizer_vocabulary_covers_every_prompt_word_once():
    words = tokenizer_vocabulary()
    assert len(words) == len(set(words))
    assert all(w == w.lower() for w in words)
    assert {w for p in prompts("all") for w in p.split()} == set(words)
    assert words == tokenizer_vocabulary()


def test_renderer_is_deterministic_and_channels_last():
    batch = sample_prompts(16, "all", 0)
    clips = render_prompts(batch, 7)
    assert clips.shape == (16, FRAMES, HEIGHT, WIDTH, 3)
    assert clips.dtype == torch.float32
    assert clips.min() >= 0 and clips.max() <= 1
    assert torch.equal(clips, render_prompts(batch, 7))
    assert not torch.equal(clips, render_prompts(batch, 8))


def _object_mask(clips: torch.Tensor, attributes: list[Attributes]) -> torch.Tensor:
    backgrounds = BACKGROUND_RGB[[a.index("background") for a in attributes]]
    return (clips != backgrounds[:, None, None, None, :]).any(-1)


def test_object_stays_whole_in_frame_and_moves_as_asked():
    attributes = list(all_attributes())
    clips = render(attributes, torch.Generator().manual_seed(0))
    mask = _object_mask(clips, attributes)
    areas = SHAPE_TEMPLATES.sum((1, 2))[[a.index("shape") for a in attributes]]
    # The full template's area in every frame means no pixel of the object ever left the frame.
    assert torch.equal(mask.sum((2, 3)), areas[:, None].expand(-1, FRAMES))
    colours = OBJECT_RGB[[a.index("colour") for a in attributes]]
    assert torch.equal(clips[mask], colours[:, None, None, None].expand_as(clips)[mask])

    rows, cols = torch.arange(HEIGHT), torch.arange(WIDTH)
    centre_x = (mask.sum(2) * cols).sum(-1) / mask.sum((2, 3))
    centre_y = (mask.sum(3) * rows).sum(-1) / mask.sum((2, 3))
    speed = {"slowly": 1.0, "quickly": 2.0}
    unit = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for i, a in enumerate(attributes):
        dx, dy = unit[a.direction]
        expected_x = torch.full((FRAMES - 1,), dx * speed[a.speed])
        expected_y = torch.full((FRAMES - 1,), dy * speed[a.speed])
        torch.testing.assert_close(centre_x[i].diff(), expected_x)
        torch.testing.assert_close(centre_y[i].diff(), expected_y)


def test_start_positions_vary_with_the_seed():
    attributes = [Attributes("red", "square", "right", "slowly", "black")] * 64
    clips = render(attributes, torch.Generator().manual_seed(0))
    first_object_pixel = {int(c[0].flatten().nonzero()[0]) for c in clips}
    # 5 × 5 jittered starts around the centre; 64 draws miss few of the 25.
    assert len(first_object_pixel) > 15


def test_a_path_that_does_not_fit_is_a_user_error():
    fast = [Attributes("red", "square", "right", "quickly", "black")]
    with pytest.raises(UserError, match="does not fit"):
        render(fast, frames=20)
