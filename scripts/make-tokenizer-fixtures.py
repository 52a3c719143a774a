#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes tests/model/fixtures/generated/{llama3,qwen2}.{tokenizer.json,text.txt,ids.txt}.

Tiny byte-level BPE tokenizers with Llama-3's and Qwen2's pre-tokenizers (Split on the model's regex, Isolated, then
ByteLevel without its own regex; Qwen2 also NFC), trained here with the `tokenizers` library on docs of this repo,
a test text, and the ids `tokenizers` gives for it (add_special_tokens=True). tests/model/hf_tokenizer_test.cpp
compares rsq's ids with them when the files are there and skips visibly when not.

Needs only `pip install tokenizers` (no network at run time). What to build and the test text are in
scripts/tokenizer-fixtures.json, shared with scripts/make-tokenizer-fixtures.mjs (the same for Node's binding).

    python3 scripts/make-tokenizer-fixtures.py
"""
import json
import pathlib

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT = REPO / "tests/model/fixtures/generated"


def build(kind: dict) -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=kind["ignore_merges"]))  # ignore_merges: tokenizers >= 0.19
    if kind["nfc"]:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(kind["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = kind["special_tokens"]
    # Vocabulary: the specials, then the 256 byte characters, then the merges.
    trainer = trainers.BpeTrainer(vocab_size=len(specials) + 256 + kind["merges"], min_frequency=2,
                                  special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = "\n".join((REPO / f).read_text(encoding="utf-8") for f in kind["train_files"])
    tok.train_from_iterator([text], trainer)
    if kind["bos"]:
        bos = kind["bos"]
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))]),
        ])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def main() -> None:
    cfg = json.loads((REPO / "scripts/tokenizer-fixtures.json").read_text(encoding="utf-8"))
    text = "".join(cfg["test_text"])
    OUT.mkdir(parents=True, exist_ok=True)
    for name, kind in cfg["tokenizers"].items():
        path = OUT / f"{name}.tokenizer.json"
        build(kind).save(str(path), pretty=False)
        tok = Tokenizer.from_file(str(path))  # the ids of the file as saved
        ids = tok.encode(text, add_special_tokens=True).ids
        (OUT / f"{name}.text.txt").write_text(text, encoding="utf-8", newline="")
        (OUT / f"{name}.ids.txt").write_text(" ".join(map(str, ids)) + "\n", encoding="utf-8")
        print(f"{name}: {tok.get_vocab_size()} pieces, {len(ids)} ids")


if __name__ == "__main__":
    main()
