"""The project's own tokenizer and small UMT5 text encoders, for the tiny and micro models.

Real Wan2.2 checkpoints bring their own UMT5-XXL tokenizer and encoder. The tiny and micro models cannot fetch
those from a hub, so wanflow builds a word-level tokenizer over the caption vocabulary
(:data:`wanflow.micro.vocabulary.WORDS`) with the ``tokenizers`` library, wrapped as a
``transformers.PreTrainedTokenizerFast`` so that diffusers' Wan pipelines call it exactly as they call UMT5's.
"""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from wanflow.micro.vocabulary import WORDS

#: UMT5's special tokens keep their ids (pad 0, eos 1, unk 2) so padding and masks behave as in the real encoder.
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")

#: The text encoder's sequence length, as in Wan2.2 (``text_len = 512`` in ``wan/configs/shared_config.py``).
MAX_SEQUENCE_LENGTH = 512


def build_tokenizer(words: tuple[str, ...] = WORDS) -> PreTrainedTokenizerFast:
    """A lower-casing, punctuation-splitting word-level tokenizer over ``words``.

    Unknown words map to ``<unk>``; every sequence ends with ``</s>`` as in UMT5. Token ids are
    ``len(SPECIAL_TOKENS) + index in words``, so they depend on the order of ``words``.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_SEQUENCE_LENGTH,
    )


def build_text_encoder(vocab_size: int, d_model: int = 32, num_layers: int = 2, num_heads: int = 4) -> UMT5EncoderModel:
    """A small ``UMT5EncoderModel`` (random weights) whose output width ``d_model`` is the transformer's ``text_dim``.

    UMT5-XXL has ``d_model`` 4096, 24 layers, 64 heads; these models keep the class and shrink the widths.
    """
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=max(d_model // num_heads, 4),
        d_ff=d_model * 2,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
    )
    return UMT5EncoderModel(config)


def unknown_words(tokenizer: PreTrainedTokenizerFast, text: str) -> list[str]:
    """The words of ``text`` (normalised and split as ``tokenizer`` does; punctuation is not a word) that are not in
    its vocabulary, each once, in order: what a word-level tokenizer maps to ``<unk>``. Meant for the project's
    tokenizer (:func:`build_tokenizer`); a sub-word tokenizer such as UMT5's has no unknown words to report."""
    backend = tokenizer.backend_tokenizer
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
    vocab = tokenizer.get_vocab()
    words = [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)] if backend.pre_tokenizer else []
    return list(dict.fromkeys(w for w in words if w not in vocab and any(c.isalnum() for c in w)))
