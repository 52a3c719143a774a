#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reference outputs of Hugging Face transformers for rsq's tests (issue 15), made on the GPU machine, which has
torch, transformers, safetensors and numpy (no internet: every model here is made locally).

  python3 scripts/hf-reference.py make --out tests/model/fixtures/hf_reference [--lm7m ../shared/data/models/lm7m/hf]
      Small randomly initialised LlamaForCausalLM (Llama-3 style, with llama3 RoPE scaling), Qwen2ForCausalLM (q/k/v
      biases, tied embeddings), MistralForCausalLM (and one with head_dim * heads != hidden_size, as Mistral-Nemo) and
      LlamaForCausalLM with attention_bias and mlp_bias configurations, each saved as a Hugging Face folder
      (config.json + model.safetensors) with tokens.npy (int32, (2, 24)) and logits.npy (float32, (2, 24, vocab)),
      computed by transformers in float32 with eager attention; for lm7m only tokens.npy and logits.npy (its folder
      is in ../shared). The folders are a few hundred KB: small enough to commit as test fixtures.

  python3 scripts/hf-reference.py windows --model DIR --text FILE --windows N --length L --out T.npy
      The first N consecutive windows of L tokens of a text, tokenized by the `tokenizers` library with the model's
      tokenizer.json (int32, (N, L)): evaluation data that rsq-quantize --eval and `perplexity` read alike.

  python3 scripts/hf-reference.py perplexity --model DIR --tokens T.npy
      Transformers' perplexity (mean next-token loss over every window, exp) of a model folder, e.g. one that
      `rsq-quantize --format hf` wrote; prints one line `perplexity <value>` to compare with rsq's figure.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import transformers


def tokens_for(vocab, seed, shape=(2, 24)):
    g = np.random.default_rng(seed)
    t = g.integers(0, vocab, size=shape, dtype=np.int64)
    t[:, 0] = 1  # a BOS-like first token
    return t.astype(np.int32)


@torch.no_grad()
def logits_of(model, tokens):
    model.eval()
    out = model(input_ids=torch.from_numpy(tokens.astype(np.int64)))
    return out.logits.float().numpy()


def small_configs():
    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-5,
                  attn_implementation="eager")
    llama3 = transformers.LlamaConfig(
        **common, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})
    qwen2 = transformers.Qwen2Config(**common, rope_theta=1000000.0, tie_word_embeddings=True)
    mistral = transformers.MistralConfig(**common, rope_theta=10000.0, tie_word_embeddings=False,
                                         sliding_window=None)
    # Mistral-Nemo's shape: head_dim * heads != hidden_size (q_proj 64 -> 128, o_proj 128 -> 64)
    mistral_head_dim = transformers.MistralConfig(**common, head_dim=32, rope_theta=1000000.0,
                                                  tie_word_embeddings=False, sliding_window=None)
    # attention_bias gives q/k/v and o_proj biases, mlp_bias gate/up/down biases
    llama_biases = transformers.LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=True,
                                            attention_bias=True, mlp_bias=True)
    return {"llama3": (transformers.LlamaForCausalLM, llama3), "qwen2": (transformers.Qwen2ForCausalLM, qwen2),
            "mistral": (transformers.MistralForCausalLM, mistral),
            "mistral_head_dim": (transformers.MistralForCausalLM, mistral_head_dim),
            "llama_biases": (transformers.LlamaForCausalLM, llama_biases)}


def make(args):
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    for k, (name, (cls, config)) in enumerate(small_configs().items()):
        model = cls(config).float()
        with torch.no_grad():  # biases are zero at initialisation: give them values a test can see
            for n, p in model.named_parameters():
                if n.endswith(".bias"):
                    p.normal_(0.0, 0.5)
        folder = os.path.join(args.out, name)
        model.save_pretrained(folder, safe_serialization=True)
        tokens = tokens_for(config.vocab_size, 10 + k)
        np.save(os.path.join(folder, "tokens.npy"), tokens)
        np.save(os.path.join(folder, "logits.npy"), logits_of(model, tokens))
        print(f"{name}: {folder}")
    if args.lm7m and os.path.isdir(args.lm7m):
        model = transformers.AutoModelForCausalLM.from_pretrained(args.lm7m, dtype=torch.float32,
                                                                  attn_implementation="eager")
        folder = os.path.join(args.out, "lm7m")
        os.makedirs(folder, exist_ok=True)
        tokens = tokens_for(model.config.vocab_size, 99, (2, 64))
        np.save(os.path.join(folder, "tokens.npy"), tokens)
        np.save(os.path.join(folder, "logits.npy"), logits_of(model, tokens))
        print(f"lm7m: {folder}")
    with open(os.path.join(args.out, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f)


def windows(args):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    ids = []
    for line in text.split("\n\n"):  # paragraph by paragraph: the same stream whatever the text's length
        if line.strip():
            ids.extend(tok.encode(line).ids)
        if len(ids) >= args.windows * args.length:
            break
    if len(ids) < args.windows * args.length:
        sys.exit(f"{args.text}: {len(ids)} tokens, fewer than {args.windows} windows of {args.length}")
    out = np.array(ids[: args.windows * args.length], dtype=np.int32).reshape(args.windows, args.length)
    np.save(args.out, out)
    print(f"{args.out}: {out.shape[0]} windows of {out.shape[1]} tokens")


@torch.no_grad()
def perplexity(args):
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                              attn_implementation="eager")
    model.eval()
    tokens = np.load(args.tokens).astype(np.int64)
    total, count = 0.0, 0
    for row in tokens:
        ids = torch.from_numpy(row[None, :])
        logits = model(input_ids=ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        total += float(loss)
        count += ids.shape[1] - 1
    print(f"perplexity {math.exp(total / count):.6f} over {count} predictions")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--lm7m", default=None)
    q = sub.add_parser("perplexity")
    q.add_argument("--model", required=True)
    q.add_argument("--tokens", required=True)
    w = sub.add_parser("windows")
    w.add_argument("--model", required=True)
    w.add_argument("--text", required=True)
    w.add_argument("--windows", type=int, default=16)
    w.add_argument("--length", type=int, default=256)
    w.add_argument("--out", required=True)
    a = p.parse_args()
    {"make": make, "perplexity": perplexity, "windows": windows}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
