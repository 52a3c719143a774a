// SPDX-License-Identifier: MIT
// Writes tests/model/fixtures/generated/{llama3,qwen2}.{tokenizer.json,text.txt,ids.txt}: tiny byte-level BPE
// tokenizers with Llama-3's and Qwen2's pre-tokenizers, a test text, and the ids the `tokenizers` library (its
// Node binding, npm package "tokenizers") gives for it. The twin of scripts/make-tokenizer-fixtures.py for machines
// with Node instead of Python's tokenizers; both write the same files. The Node binding cannot configure a trainer,
// so the merges are learned here (most frequent pair of bytes first, ties in code-unit order) over the pre-tokens
// that the library's own pre-tokenizer gives; the ids come from the library alone.
//
//   cd /tmp && npm install tokenizers && NODE_PATH=/tmp/node_modules node <repo>/scripts/make-tokenizer-fixtures.mjs
import fs from 'node:fs';
import path from 'node:path';
import {createRequire} from 'node:module';
import {fileURLToPath} from 'node:url';

const require = createRequire(import.meta.url);
const {Tokenizer} = require('tokenizers');
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(repo, 'tests/model/fixtures/generated');
const kinds = JSON.parse(fs.readFileSync(path.join(repo, 'scripts/tokenizer-fixtures.json'), 'utf8'));

function byteToUnicode() {  // GPT-2's map
  const m = [];
  let next = 256;
  for (let b = 0; b < 256; ++b) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    m.push(String.fromCodePoint(printable ? b : next++));
  }
  return m;
}

function skeleton(kind, vocab, merges) {
  const added = kind.special_tokens.map((c, i) => ({id: 256 + i, content: c, single_word: false, lstrip: false,
                                                     rstrip: false, normalized: false, special: true}));
  const post = kind.bos ? {type: 'TemplateProcessing', single: [{SpecialToken: {id: kind.bos, type_id: 0}},
                                                               {Sequence: {id: 'A', type_id: 0}}],
                           pair: [{SpecialToken: {id: kind.bos, type_id: 0}}, {Sequence: {id: 'A', type_id: 0}},
                                  {SpecialToken: {id: kind.bos, type_id: 1}}, {Sequence: {id: 'B', type_id: 1}}],
                           special_tokens: {[kind.bos]: {id: kind.bos, ids: [256 + kind.special_tokens.indexOf(kind.bos)],
                                                         tokens: [kind.bos]}}}
                        : {type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false};
  return {version: '1.0', truncation: null, padding: null, added_tokens: added,
          normalizer: kind.nfc ? {type: 'NFC'} : null,
          pre_tokenizer: {type: 'Sequence', pretokenizers: [
            {type: 'Split', pattern: {Regex: kind.pattern}, behavior: 'Isolated', invert: false},
            {type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false}]},
          post_processor: post,
          decoder: {type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true},
          model: {type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
                  fuse_unk: false, byte_fallback: false, ignore_merges: kind.ignore_merges, vocab, merges}};
}

function train(kind, text) {
  const alphabet = byteToUnicode();
  const vocab = {};
  alphabet.forEach((c, b) => { vocab[c] = b; });
  kind.special_tokens.forEach((c, i) => { vocab[c] = 256 + i; });
  const pre = Tokenizer.fromString(JSON.stringify(skeleton(kind, vocab, []))).getPreTokenizer();
  const words = new Map();  // pre-token (GPT-2 characters) -> count
  for (const [w] of pre.preTokenizeString(text)) words.set(w, (words.get(w) || 0) + 1);
  let seqs = [...words].map(([w, n]) => [[...w], n]);
  const merges = [];
  while (merges.length < kind.merges) {
    const pairs = new Map();
    for (const [s, n] of seqs)
      for (let i = 0; i + 1 < s.length; ++i) {
        const k = s[i] + '\u0000' + s[i + 1];
        pairs.set(k, (pairs.get(k) || 0) + n);
      }
    let best = null, bestN = 1;  // pairs seen once are not merged
    for (const [k, n] of pairs) if (n > bestN || (n === bestN && best !== null && k < best)) { best = k; bestN = n; }
    if (best === null) break;
    const [a, b] = best.split('\u0000');
    merges.push([a, b]);
    if (!(a + b in vocab)) vocab[a + b] = Object.keys(vocab).length;
    seqs = seqs.map(([s, n]) => {
      const r = [];
      for (let i = 0; i < s.length; ++i)
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) { r.push(a + b); ++i; } else r.push(s[i]);
      return [r, n];
    });
  }
  // A whole word the merges do not reach, so that ignore_merges shows: the most frequent pre-token of 4+ chars.
  const whole = [...words].filter(([w]) => [...w].length >= 4 && !(w in vocab)).sort((x, y) => y[1] - x[1])[0];
  if (whole) vocab[whole[0]] = Object.keys(vocab).length;
  return skeleton(kind, vocab, merges);
}

fs.mkdirSync(out, {recursive: true});
const trainText = kind => kind.train_files.map(f => fs.readFileSync(path.join(repo, f), 'utf8')).join('\n');
for (const [name, kind] of Object.entries(kinds.tokenizers)) {
  const json = JSON.stringify(train(kind, trainText(kind)));
  const tok = Tokenizer.fromString(json);
  const file = path.join(out, `${name}.tokenizer.json`);
  tok.save(file, false);  // the library's own serialization
  const reloaded = Tokenizer.fromFile(file);
  const text = kinds.test_text.join('');
  const ids = (await reloaded.encode(text, null, {addSpecialTokens: true})).getIds();
  fs.writeFileSync(path.join(out, `${name}.text.txt`), text);
  fs.writeFileSync(path.join(out, `${name}.ids.txt`), ids.join(' ') + '\n');
  console.log(`${name}: ${Object.keys(JSON.parse(json).model.vocab).length} pieces, ${ids.length} ids`);
}
