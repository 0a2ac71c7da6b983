"""Factories for tiny random models, tokenizers, SAEs and datasets, built in memory with nothing downloaded."""

from __future__ import annotations

import os

import torch
from datasets import Dataset
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

HIDDEN_SIZE = 32
NUM_LAYERS = 3
VOCAB = ["<pad>", "<s>", "</s>", "user", "assistant", ":", "\n"] + [f"w{i}" for i in range(57)]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}:{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a fixed vocabulary with a minimal chat template."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"[:\n]"), behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def make_sae(architecture: str = "standard", d_sae: int = 48, layer: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    metadata = SAEMetadata(hook_name=f"model.layers.{layer}", model_name="tiny-llama")
    if architecture == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=HIDDEN_SIZE, d_sae=d_sae, metadata=metadata))
    elif architecture == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=HIDDEN_SIZE, d_sae=d_sae, metadata=metadata))
    else:
        raise ValueError(architecture)
    with torch.no_grad():
        for name, parameter in sae.named_parameters():
            if name == "threshold":
                parameter.uniform_(0.0, 0.2)
            else:
                parameter.normal_(0, 0.5 if name.startswith("W") else 0.1)
    return sae


def make_dataset(num_rows: int = 16, seed: int = 0) -> Dataset:
    """Conversational prompt/completion rows over the tiny vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(num_rows):
        prompt = " ".join(f"w{int(i)}" for i in torch.randint(0, 57, (int(torch.randint(2, 6, (1,), generator=generator)),), generator=generator))
        answer = " ".join(f"w{int(i)}" for i in torch.randint(0, 57, (int(torch.randint(3, 9, (1,), generator=generator)),), generator=generator))
        rows.append({"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}]})
    return Dataset.from_list(rows)
