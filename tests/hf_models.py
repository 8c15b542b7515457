"""Tiny random Hugging Face models and tokenizers, built offline, for tests (the oracle is torch)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

VOCAB = 128  # >= the test tokenizers' vocabularies
SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

VARIANTS = {
    # Qwen2: q/k/v bias, untied head.
    "qwen2": dict(cls="Qwen2", kw=dict(num_key_value_heads=2)),
    # Qwen3: q/k norms, tied embeddings, a non-default rope_theta.
    "qwen3": dict(cls="Qwen3", kw=dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, rope_theta=5e6)),
    # Llama-3.1: llama3 rope scaling, GQA 4:1.
    "llama": dict(
        cls="Llama",
        kw=dict(
            num_key_value_heads=1,
            rope_theta=5e5,
            rope_scaling=dict(
                rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
}


def make_hf_model(variant: str, seed: int = 0) -> transformers.PreTrainedModel:
    spec = VARIANTS[variant]
    config_cls = getattr(transformers, f"{spec['cls']}Config")
    model_cls = getattr(transformers, f"{spec['cls']}ForCausalLM")
    config = config_cls(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        attn_implementation="eager", **spec["kw"],
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb so bugs show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def lively_model(variant: str) -> transformers.PreTrainedModel:
    """A tiny random model with weights large enough that greedy text does not repeat one token."""
    model = make_hf_model(variant)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model


def save_hf_model(variant: str, path: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    model = make_hf_model(variant, seed).to(dtype)
    model.save_pretrained(path)
    return path


def torch_logits(model: transformers.PreTrainedModel, tokens, attention_mask=None):
    with torch.no_grad():
        ids = torch.as_tensor(tokens, dtype=torch.long)
        mask = None if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
        kwargs = {}
        if mask is not None:  # HF needs explicit positions for left padding
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        return model(input_ids=ids, attention_mask=mask, **kwargs).logits.float().numpy()


def save_tokenizer(path: Path, kind: str = "char") -> Path:
    """A tokenizer in HF format built offline, ids 0..2 = <pad>, <s>, </s>.

    'char': one token per character (so the step delimiter "\n\n" is two tokens);
    'bpe': a BPE trained on arithmetic text, where "\n\n" is one token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    if kind == "char":
        vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
        tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
        tok.decoder = decoders.Fuse()
    else:
        tok = Tokenizer(models.BPE())
        tok.decoder = decoders.Fuse()
        text = ["Step 1: 3 + 4 = 7\n\nStep 2: 7 * 2 = 14\n\nThe answer is 14\n\n"] * 50
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, initial_alphabet=chars)
        tok.train_from_iterator(text, trainer)
        assert tok.get_vocab_size() <= VOCAB
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return path


def write_addition_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """n DPO pair records ("Q: a + b?" -> the worked sum, against a wrong bare number) as JSON lines."""
    import json
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 99)
        rows.append({"prompt": f"Q: {a} + {b}?\n", "chosen": f"{a} + {b} = {a + b}\n\n", "rejected": f"{a + b - 1}\n"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
