// SPDX-License-Identifier: MIT
// Runs a GGUF model in llama.cpp (node-llama-cpp's prebuilt libraries, CPU) for rsq's tests:
//   node evaluate.mjs request.json
// request: {"model": path, "windows": [[ids]], "prompts": [[ids]], "generate": n, "texts": [strings]}
// prints JSON: {"windows": [{"sum": Σ −log p(next), "count": predictions}], "greedy": [[n ids after each prompt]],
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

// Greedy: the most probable next token (the first of equals), one token at a time.
const argmax = (p) => {
  let best = -1, bp = -1;
  for (const [t, v] of p) if (v > bp) [best, bp] = [t, v];
  return best;
};
const greedy = [];
for (const prompt of request.prompts) {
  await sequence.clearHistory();
  let out = await sequence.controlledEvaluate(prompt.map((t, i) => (i + 1 === prompt.length ? next(t) : t)));
  const ids = [];
  for (let k = 0; k < (request.generate ?? 0); k++) {
    const t = argmax(out[out.length - 1].next.probabilities);
    ids.push(t);
    out = await sequence.controlledEvaluate([next(t)]);
  }
  greedy.push(ids);
}

const tokens = (request.texts ?? []).map((s) => Array.from(model.tokenize(s)));
console.log(JSON.stringify({windows, greedy, tokens}));
await context.dispose();
await model.dispose();
await llama.dispose();
