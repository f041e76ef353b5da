"""Small models made here with torch (random weights, no downloads): the demo serves one, the tests convert them."""

from __future__ import annotations

import torch


class CNN(torch.nn.Module):
    """A small image classifier: two convolutions, global average pooling, 10 classes, on 3x32x32 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


TINY_LLAMA_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A model serves answers to questions about the weather, the sea, "
    "numbers and names. Triton serves models on GPUs; Kubernetes runs the pods. Once upon a time there was a small "
    "language model that learned to count: one, two, three, four, five, six, seven, eight, nine, ten. "
    "Hello, world! What is the capital of France? Paris is the capital of France. How are you today? I am fine. "
)
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def tiny_llama(dest: str, seed: int = 0, vocab: int = 384, hidden: int = 128, layers: int = 2) -> str:
    """A Llama-style checkpoint in `dest`: config.json, model.safetensors, a byte-level BPE tokenizer trained here
    with `tokenizers`, a chat template. Random weights (greedy output is repeatable, not meaningful); 2 heads of
    dimension 64, which vLLM's CPU attention takes (head_dim 16 it refuses)."""
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TINY_LLAMA_CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2, head_dim=hidden // 2,
                         max_position_embeddings=512, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=False, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out), safe_serialization=True)
    return str(out)
