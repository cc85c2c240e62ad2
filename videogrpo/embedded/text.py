"""The tiny model's text side, built in memory: a word-level tokenizer and a small random UMT5.

Nothing here touches the Hugging Face Hub, so the embedded default works offline and its text side
is fully determined by a word list, a size and a seed. The classes are the same ones diffusers'
`WanPipeline` uses (a fast tokenizer, `UMT5EncoderModel`), so the tiny model plugs into it as is.
"""

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

# T5's own special-token ids (pad 0, eos 1, unk 2), so padding and masks behave as in real Wan.
PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)


def build_word_tokenizer(vocabulary: Sequence[str], max_length: int) -> PreTrainedTokenizerFast:
    """One token per lower-cased word (punctuation split off), `</s>` appended, padded right.

    Word level because the synthetic prompts come from a small grammar: every word is a concept the
    model must learn, and sub-word pieces would only make the sequences longer.
    """
    words = list(dict.fromkeys(word.lower() for word in vocabulary))
    bad = [word for word in words if not word or word.split() != [word] or word in SPECIAL_TOKENS]
    if bad:
        raise ValueError(f"vocabulary entries must be single non-special words, got {bad[:5]}")
    token_ids = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=token_ids, unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, token_ids[EOS_TOKEN])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
        padding_side="right",
    )


def build_tiny_umt5(
    vocab_size: int, d_model: int, num_layers: int, num_heads: int, ffn_dim: int, seed: int
) -> UMT5EncoderModel:
    """A randomly initialised UMT5 encoder (Wan's text-encoder class) with dropout off.

    Dropout is 0 so that train() and eval() give the same embeddings: the RL ratio must be exactly 1
    when nothing changed. The seed is applied in a forked RNG so the caller's stream is untouched.
    """
    if d_model % num_heads:
        raise ValueError(f"text d_model {d_model} must be divisible by its {num_heads} heads")
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=ffn_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        eos_token_id=SPECIAL_TOKENS.index(EOS_TOKEN),
        decoder_start_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UMT5EncoderModel(config)
