// SPDX-License-Identifier: MIT
// Runs a GGUF model in llama.cpp (node-llama-cpp's prebuilt libraries, CPU) for rsq's tests:
//   node evaluate.mjs request.json
// request: {"model": path, "windows": [[ids]], "prompts": [[ids]], "generate": n, "texts": [strings]}
// prints JSON: {"windows": [{"sum": Σ −log p(next), "count": predictions}], "greedy": [[n ids after each prompt]],
//               "top2": [[[id, p, id2, p2] for each greedy step] for each prompt] (the two most probable tokens),
//               "tokens": [[llama.cpp's ids of each text, no BOS]]}
import {readFileSync} from "node:fs";
import {getLlama} from "node-llama-cpp";

const request = JSON.parse(readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: request.model});
const longest = Math.max(8, ...request.windows.map((w) => w.length),
                         ...request.prompts.map((p) => p.length + (request.generate ?? 0)));
const context = await model.createContext({contextSize: longest, batchSize: longest, sequences: 1, threads: 2});
const sequence = context.getSequence();
const next = (t) => [t, {generateNext: {probabilities: true}}];

const windows = [];
for (const w of request.windows) {
  await sequence.clearHistory();
  const out = await sequence.controlledEvaluate(w.slice(0, -1).map(next));
  let sum = 0;
  for (let i = 0; i + 1 < w.length; i++) sum -= Math.log(out[i].next.probabilities.get(w[i + 1]) ?? 0);
  windows.push({sum, count: w.length - 1});
}

// Greedy: the most probable next token (the first of equals), one token at a time; also the runner-up.
const top2 = (p) => {
  let best = -1, bp = -1, second = -1, sp = -1;
  for (const [t, v] of p)
    if (v > bp) [second, sp, best, bp] = [best, bp, t, v];
    else if (v > sp) [second, sp] = [t, v];
  return [best, bp, second, sp];
};
const greedy = [], top = [];
for (const prompt of request.prompts) {
  await sequence.clearHistory();
  let out = await sequence.controlledEvaluate(prompt.map((t, i) => (i + 1 === prompt.length ? next(t) : t)));
  const ids = [], tops = [];
  for (let k = 0; k < (request.generate ?? 0); k++) {
    const t2 = top2(out[out.length - 1].next.probabilities);
    ids.push(t2[0]);
    tops.push(t2);
    out = await sequence.controlledEvaluate([next(t2[0])]);
  }
  greedy.push(ids);
  top.push(tops);
}

const tokens = (request.texts ?? []).map((s) => Array.from(model.tokenize(s)));
console.log(JSON.stringify({windows, greedy, top2: top, tokens}));
await context.dispose();
await model.dispose();
await llama.dispose();
