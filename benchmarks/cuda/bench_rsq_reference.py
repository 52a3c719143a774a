# SPDX-License-Identifier: MIT
"""The PyTorch baseline of the end-to-end comparison: the reference RSQ layer loop (rsq-method.md §1 step 5, §4.2, §5, §6,
§7, §8.3) on N decoder layers of a model with Llama-3-8B's shapes, random weights made on the device (no files), on
S calibration sequences of L tokens. Written from the spec and the published loop's structure (no code copied), in the
style of bench_gptq_reference.py, whose fit/quantize/GPTQ/Hessian helpers the --quick self-checks compare against.

What one layer costs here, in the reference's order (everything stays on the device; bf16 model, fp32 Hessians/GPTQ,
TF32 off as the reference sets it):
  rotation     QuaRot/RSQ rotate_model for this layer: RMSNorm gains fused into q/k/v/up/gate (fp64), W·Q resp. Qᵀ·W with
               the randomized Hadamard Q in fp64, exact Hadamards (torch butterflies + the K×K factor, fp32) on down_proj's
               and o_proj's inputs and per head on v_proj's outputs, cast back to bf16.
  forward_fp   the layer's FP forward over all sequences with the default (SDPA) attention, outputs stored.
  importance   AttnCon: the layer's RMSNorm + attention module again with its custom eager attention (probabilities
               materialised: softmax in fp32, cast to bf16), s_t = Σ_h Σ_{i≥t} A_h[i,t] (bf16 sums as the reference),
               min-max to [r_min, r_max] = [0.005, 1] per sequence.
  forward_grp  true-sequential groups [k,v,q] → [o] → [up,gate] → [down]: a full forward of the layer over all sequences
               per group (eager attention stays enabled, earlier groups already quantized) whose hooks on the group's
               Linears feed add_batch (hessian, timed separately); then fasterquant on each Linear of the group.
  hessian      add_batch: H ← H·n/(n+b), n += b, H += (√(2/n)·√w·X)(…)ᵀ in fp32, w = L·r/Σr per sequence (7 Hessians).
  fq_*         fasterquant: factor = damping + chol → cholesky_inverse → chol(upper) (add_until_fail); grid = quantizer
               fits (whole W once, then every group; MSE clip search with one host sync per shrink step as the
               reference's torch.any); solve = the column loop (one host sync per column: the quantizer's ready()),
               act-order permutation, NaN check, the re-quantize check of get_quantize_linear, gc + empty_cache.
  forward_fin  the quantized layer's forward over all sequences (eager), which becomes the next layer's input.
The online Hadamards of the forward (down_proj's input: hadK ⊗ H_{n/K} with K = 28 for 14336; o_proj's input: across the
32 heads) are bf16 GEMMs with ±1 matrices, a stand-in for the fast-hadamard-transform CUDA kernel the reference calls.
Once per model (reported apart, added to the 32-layer extrapolation): Q, embedding centring and E·Q, lm_head fusion and
W·Q (fp64), the layer-0 inputs. Not included: the reference keeps the model on the CPU (norm fusion in fp64 there, every
weight copied to the device and back for its rotation, each layer moved in and out of the device), and tqdm/logging.
--batch 1 (default) is the reference's loop over samples (one sequence per forward, per add_batch, per AttnCon call);
--batch B runs B sequences at a time with the same results up to rounding (importances normalised per sequence).

usage: python3 bench_rsq_reference.py [--layers 2] [--sequences 128] [--seq-len 2048] [--batch 1] [--device cuda|cpu]
                                      [--quick] [--out results.md] [--no-clip] [--groupsize 128] [--no-act-order] ...
"""
import argparse
import contextlib
import functools
import gc
import math
import os
import statistics
import sys
import time
from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_gptq_reference as gref  # noqa: E402  (this project's single-layer reference: sync, GPTQ, Hessian, grids)


# ---------------------------------------------------------------------------------------------------------------------
# Model shapes

class Shape:
    def __init__(self, name, hidden, heads, kv_heads, head_dim, inter, vocab, eps=1e-5, theta=500000.0):
        self.name, self.hidden, self.heads, self.kv_heads, self.head_dim = name, hidden, heads, kv_heads, head_dim
        self.inter, self.vocab, self.eps, self.theta = inter, vocab, eps, theta
        assert heads * head_dim == hidden and heads % kv_heads == 0


LLAMA3_8B = Shape("Llama-3-8B", 4096, 32, 8, 128, 14336, 128256)
# Quick shapes keep every code path of the real one: GQA, a head count that is a power of two, and an intermediate size
# whose Hadamard needs the K = 28 factor (896 = 28 · 32, like 14336 = 28 · 512).
QUICK = Shape("quick", 256, 4, 2, 64, 896, 512)

# True-sequential groups in the reference's order (names as the layer's modules; hooks sit on the inner Linear).
SEQUENTIAL = [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"], ["self_attn.o_proj"],
              ["mlp.up_proj", "mlp.gate_proj"], ["mlp.down_proj"]]


def sync(dev):
    gref.sync(dev)


# ---------------------------------------------------------------------------------------------------------------------
# Hadamard matrices and transforms (spec §3)

HADK_ORDER = (172, 156, 148, 140, 108, 60, 52, 36, 28, 40, 20, 48, 12)  # RSQ get_hadK: first K dividing n wins


def is_pow2(n):
    return n > 0 and n & (n - 1) == 0


def sylvester(n):
    """H_n in natural order, H_n[i, j] = (−1)^popcount(i & j), float64 on the CPU."""
    assert is_pow2(n)
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat((torch.cat((H, H), 1), torch.cat((H, -H), 1)), 0)
    return H


def paley2_hadamard(q):
    """Paley II Hadamard matrix of order 2(q+1) for a prime q ≡ 1 (mod 4): kron(C, [[1,−1],[−1,−1]]) + kron(I, [[1,1],
    [1,−1]]) with C the symmetric conference matrix from the Legendre symbol. q = 13 gives a symmetric had28 (the
    reference ships a stored had28, also symmetric; the entries may differ, the cost and the orthogonality do not)."""
    residues = {(x * x) % q for x in range(1, q)}

    def chi(a):
        a %= q
        return 0 if a == 0 else (1 if a in residues else -1)
    n = q + 1
    C = [[0] * n for _ in range(n)]
    for i in range(1, n):
        C[0][i] = C[i][0] = 1
        for j in range(1, n):
            C[i][j] = chi(j - i)
    C = torch.tensor(C, dtype=torch.float64)
    A = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    B = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(C, A) + torch.kron(torch.eye(n, dtype=torch.float64), B)


HADK_MATRICES = {28: lambda: paley2_hadamard(13)}


@functools.lru_cache(maxsize=None)
def get_hadk(n):
    """(K, hadK or None) as RSQ's get_hadK picks it: the first K of HADK_ORDER dividing n, n/K must be a power of two;
    K = 1 when n itself is a power of two. Only K = 28 (Llama-3's 14336 = 28 · 512) has a matrix in this benchmark.
    Cached: the returned matrix is shared and never modified."""
    for k in HADK_ORDER:
        if n % k == 0:
            assert is_pow2(n // k), f"{n} = {k} · {n // k}: not a power of two"
            if k not in HADK_MATRICES:
                raise NotImplementedError(f"K = {k} for n = {n}: only K = 1 and 28 are built in this benchmark")
            return k, HADK_MATRICES[k]()
    assert is_pow2(n), f"no Hadamard factor for n = {n}"
    return 1, None


def fwht_last(x):
    """Unnormalised Sylvester transform along the last axis (out of place): one (a, b) → (a + b, a − b) stage per bit."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    y = x
    h = 1
    while h < n:
        y = y.reshape(*lead, n // (2 * h), 2, h)
        y = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2)
        h *= 2
    return y.reshape(x.shape)


def hadamard_rows(x):
    """Every row x (last axis, length n) → M_n x / √n, M_n = hadK ⊗ H_{n/K} (hadK on the slow index), in x's dtype,
    with torch butterflies then the K×K mix: the reference's matmul_hadU (used for Q and, here, for the weights)."""
    n = x.shape[-1]
    K, hadk = get_hadk(n)
    y = fwht_last(x.reshape(-1, K, n // K))
    if K > 1:
        y = torch.matmul(hadk.to(device=x.device, dtype=x.dtype), y)
    return (y * (1.0 / math.sqrt(n))).reshape(x.shape)


_PM1_CACHE = {}


def _pm1(kind, n, device, dtype):
    key = (kind, n, str(device), dtype)
    if key not in _PM1_CACHE:
        M = sylvester(n) if kind == "syl" else get_hadk(n)[1]
        _PM1_CACHE[key] = M.to(device=device, dtype=dtype)
    return _PM1_CACHE[key]


def online_full_had(x):
    """down_proj's online input Hadamard x ← M_n x / √n in the activation dtype (fp32_had off): a GEMM with the ±1
    H_{n/K} on the fast index, the ±1 hadK on the slow one, then the 1/√n scale (FHT-kernel stand-in)."""
    n = x.shape[-1]
    K, _ = get_hadk(n)
    m = n // K
    y = torch.matmul(x.reshape(-1, K, m), _pm1("syl", m, x.device, x.dtype))  # H symmetric: rows · H = (H · rows)ᵀ
    if K > 1:
        y = torch.matmul(_pm1("hadk", K, x.device, x.dtype), y)
    return y.mul_(1.0 / math.sqrt(n)).reshape(x.shape)


def online_partial_had(x, n_heads):
    """o_proj's online input Hadamard across heads only: x ← (H_{n_h} ⊗ I_{h_d}) x / √n_h (K = 1 for 32 heads)."""
    K, _ = get_hadk(n_heads)
    assert K == 1, "head counts that need a K factor are not built here"
    shape = x.shape
    y = torch.matmul(_pm1("syl", n_heads, x.device, x.dtype), x.reshape(-1, n_heads, shape[-1] // n_heads))
    return y.mul_(1.0 / math.sqrt(n_heads)).reshape(shape)


def random_hadamard_matrix(n, gen, device):
    """Q = diag(s)·M_nᵀ/√n, s ∈ {±1}ⁿ (spec §2.2), float64: the reference applies matmul_hadU to diag(s)."""
    s = torch.randint(0, 2, (n,), generator=gen, device=device).to(torch.float64) * 2 - 1
    return hadamard_rows(torch.diag(s))


# ---------------------------------------------------------------------------------------------------------------------
# The decoder layer (HF Llama semantics after QuaRot's norm fusion: weight-free RMSN, every Linear wrapped)

def rmsn(x, eps):
    """QuaRot/RSQ RMSN: fp16 is upcast, bf16 is computed in bf16; Σx²/d, x·rsqrt(· + eps)."""
    dtype = x.dtype
    if dtype == torch.float16:
        x = x.float()
    variance = x.pow(2).sum(-1, keepdim=True) / x.shape[-1]
    return (x * torch.rsqrt(variance + eps)).to(dtype)


def rope_cos_sin(inv_freq, position_ids, dtype):
    freqs = (inv_freq[None, :, None].float() @ position_ids[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def repeat_kv(x, n_rep):
    b, kv, L, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kv, n_rep, L, hd).reshape(b, kv * n_rep, L, hd)


def causal_mask_4_45(L, dtype, device, batch):
    """The 4-D mask HF 4.45 builds when no mask is cached (target length L + 1, dtype min above the diagonal)."""
    min_dtype = torch.finfo(dtype).min
    cache_position = torch.arange(L, device=device)
    mask = torch.full((L, L + 1), fill_value=min_dtype, dtype=dtype, device=device)
    mask = torch.triu(mask, diagonal=1)
    mask *= torch.arange(L + 1, device=device) > cache_position.reshape(-1, 1)
    return mask[None, None, :, :].expand(batch, 1, -1, -1)


def new_linear(in_f, out_f, dtype, device):
    return torch.nn.utils.skip_init(nn.Linear, in_f, out_f, bias=False, device=device, dtype=dtype)


class Wrapped(nn.Module):
    """ActQuantWrapper without activation quantization: optional online Hadamard of the input, then the Linear. The
    GPTQ hooks sit on .module, so they see the rotated input."""

    def __init__(self, linear, online=None, n_heads=0):
        super().__init__()
        self.module = linear
        self.online = online
        self.n_heads = n_heads

    def forward(self, x):
        x_dtype = x.dtype
        if self.online == "full":
            x = online_full_had(x)
        elif self.online == "partial":
            x = online_partial_had(x, self.n_heads)
        return self.module(x).to(x_dtype)


class Attention(nn.Module):
    def __init__(self, s, dtype, device):
        super().__init__()
        self.s = s
        d, hd = s.hidden, s.head_dim
        self.q_proj = Wrapped(new_linear(d, s.heads * hd, dtype, device))
        self.k_proj = Wrapped(new_linear(d, s.kv_heads * hd, dtype, device))
        self.v_proj = Wrapped(new_linear(d, s.kv_heads * hd, dtype, device))
        self.o_proj = Wrapped(new_linear(s.heads * hd, d, dtype, device), online="partial", n_heads=s.heads)
        self.inv_freq = 1.0 / (s.theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float().to(device) / hd))
        self.mode = "sdpa"  # "eager" = the reference's custom attention (probabilities materialised)

    def forward(self, h, position_ids, output_attentions=False):
        s = self.s
        b, L, _ = h.shape
        q = self.q_proj(h).view(b, L, s.heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, L, s.kv_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, L, s.kv_heads, s.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(self.inv_freq, position_ids, v.dtype)  # computed per call (no position_embeddings)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        n_rep = s.heads // s.kv_heads
        k = repeat_kv(k, n_rep)
        v = repeat_kv(v, n_rep)
        weights = None
        if self.mode == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=L > 1)
        else:
            scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(s.head_dim)
            scores = scores + causal_mask_4_45(L, scores.dtype, scores.device, b)[:, :, :, :L]
            weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            del scores
            out = torch.matmul(weights, v)
        out = out.transpose(1, 2).contiguous().reshape(b, L, -1)
        out = self.o_proj(out)
        return out, (weights if output_attentions else None)


class MLP(nn.Module):
    def __init__(self, s, dtype, device):
        super().__init__()
        self.gate_proj = Wrapped(new_linear(s.hidden, s.inter, dtype, device))
        self.up_proj = Wrapped(new_linear(s.hidden, s.inter, dtype, device))
        self.down_proj = Wrapped(new_linear(s.inter, s.hidden, dtype, device), online="full")

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """A Llama decoder layer after norm fusion (RMSN without gains). gain_in / gain_post hold the RMSNorm gains until
    rotate_layer fuses them; forward() is only valid after that."""

    def __init__(self, s, dtype, device):
        super().__init__()
        self.s = s
        self.self_attn = Attention(s, dtype, device)
        self.mlp = MLP(s, dtype, device)
        self.gain_in = torch.ones(s.hidden, dtype=dtype, device=device)
        self.gain_post = torch.ones(s.hidden, dtype=dtype, device=device)
        self.fused = False

    def linears(self):
        return {"self_attn.q_proj": self.self_attn.q_proj.module, "self_attn.k_proj": self.self_attn.k_proj.module,
                "self_attn.v_proj": self.self_attn.v_proj.module, "self_attn.o_proj": self.self_attn.o_proj.module,
                "mlp.gate_proj": self.mlp.gate_proj.module, "mlp.up_proj": self.mlp.up_proj.module,
                "mlp.down_proj": self.mlp.down_proj.module}

    def forward(self, x, position_ids):
        assert self.fused, "rotate_layer first (the layer runs with weight-free RMSN)"
        residual = x
        h = rmsn(x, self.s.eps)
        h, _ = self.self_attn(h, position_ids)
        x = residual + h
        residual = x
        h = rmsn(x, self.s.eps)
        x = residual + self.mlp(h)
        return (x,)


def make_layer(s, dtype, device, seed, std=0.02):
    layer = DecoderLayer(s, dtype, device)
    g = torch.Generator(device=device).manual_seed(seed)
    for lin in layer.linears().values():
        lin.weight.data.normal_(0.0, std, generator=g)
    return layer


def rotate_layer(layer, Q):
    """QuaRot/RSQ fuse_layer_norms + rotate_model for one layer (spec §2.1–2.3), on the device."""
    s = layer.s
    L = layer.linears()
    dtype = L["self_attn.q_proj"].weight.dtype

    def put(name, W):
        L[name].weight.data = W.to(dtype)
    # §2.1 norm fusion, fp64: W ← W·diag(γ)
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        put(name, L[name].weight.data.double() * layer.gain_in.double())
    for name in ("mlp.up_proj", "mlp.gate_proj"):
        put(name, L[name].weight.data.double() * layer.gain_post.double())
    layer.gain_in = torch.ones_like(layer.gain_in)
    layer.gain_post = torch.ones_like(layer.gain_post)
    layer.fused = True
    # §2.2 residual rotation, fp64: inputs W ← W·Q, outputs W ← Qᵀ·W
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        put(name, torch.matmul(L[name].weight.data.to(torch.float64), Q))
    put("self_attn.o_proj", torch.matmul(Q.T, L["self_attn.o_proj"].weight.data.to(torch.float64)))
    for name in ("mlp.up_proj", "mlp.gate_proj"):
        put(name, torch.matmul(L[name].weight.data.to(torch.float64), Q))
    put("mlp.down_proj", torch.matmul(Q.T, L["mlp.down_proj"].weight.data.to(torch.float64)))
    # §2.3 exact Hadamards, fp32: down_proj input (had_in), v_proj output per head, o_proj input (had_in)
    put("mlp.down_proj", hadamard_rows(L["mlp.down_proj"].weight.data.float()))
    Wt = L["self_attn.v_proj"].weight.data.float().t()  # (hidden × kv·hd): a Hadamard on each head's hd outputs
    hd = s.head_dim
    Wt = (fwht_last(Wt.reshape(-1, Wt.shape[-1] // hd, hd)) * (1.0 / math.sqrt(hd))).reshape(Wt.shape)
    put("self_attn.v_proj", Wt.t())
    put("self_attn.o_proj", hadamard_rows(L["self_attn.o_proj"].weight.data.float()))


# ---------------------------------------------------------------------------------------------------------------------
# AttnCon (spec §4.1, §4.2)

def normalize_default(s, r_min, r_max):
    """Min-max per sequence (rows) into [r_min, r_max], then clamp (a constant row gives NaN, as the reference)."""
    mn = s.amin(dim=-1, keepdim=True)
    mx = s.amax(dim=-1, keepdim=True)
    r = (s - mn) / (mx - mn) * (r_max - r_min) + r_min
    return r.clamp_(r_min, r_max)


def attncon(layer, x, position_ids, r_min, r_max):
    """The layer's own FP attention (eager, probabilities in the model dtype): s_t = Σ_h Σ_i A_h[i, t], normalised."""
    attn = layer.self_attn
    mode, attn.mode = attn.mode, "eager"
    h = rmsn(x, layer.s.eps)
    _, A = attn(h, position_ids, output_attentions=True)
    attn.mode = mode
    s = A.sum(dim=1).sum(dim=1).float()  # over heads, then over queries (bf16 partial results, as the reference)
    del A
    return normalize_default(s, r_min, r_max)


# ---------------------------------------------------------------------------------------------------------------------
# The quantizer (RSQ/QuaRot WeightQuantizer, spec §7) and GPTQ (spec §5.1, §6)

class WeightQuantizer:
    """Per output row. sym: levels −(maxq+1)…maxq, maxq = 2^(b−1)−1, scale = max(|xmin|, xmax, 1e-5)/maxq, zero 0.
    asym: maxq = 2^b−1, scale = max(xmax−xmin, 1e-5)/maxq, zero = round(−xmin/scale). mse: the clip search over
    p = 1, 0.99, … (80 steps), error Σ|x̂ − x|^2.4, strictly better rows kept (one torch.any host sync per step)."""

    def __init__(self, bits, sym=True, mse=False, norm=2.4, grid=100, maxshrink=0.8):
        self.bits, self.sym, self.mse, self.norm, self.grid, self.maxshrink = bits, sym, mse, norm, grid, maxshrink
        self.maxq = torch.tensor(2 ** (bits - 1) - 1 if sym else 2 ** bits - 1)
        self.scale = torch.zeros(1)
        self.zero = torch.zeros(1)

    def ready(self):
        return torch.all(self.scale != 0)

    def _qd(self, x, scale, zero):
        if self.sym:
            q = torch.clamp(torch.round(x / scale), -(self.maxq + 1), self.maxq)
            return scale * q
        q = torch.clamp(torch.round(x / scale) + zero, 0, self.maxq)
        return scale * (q - zero)

    def find_params(self, x):
        dev = x.device
        self.maxq = self.maxq.to(dev)
        x = x.flatten(1)
        zeros = torch.zeros(x.shape[0], device=dev)
        xmin = torch.minimum(x.min(1)[0], zeros)
        xmax = torch.maximum(x.max(1)[0], zeros)
        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax).clamp(min=1e-5)
            scale = xmax / self.maxq
            zero = torch.zeros_like(scale)
        else:
            both = (xmin == 0) & (xmax == 0)
            xmin[both] = -1
            xmax[both] = +1
            scale = (xmax - xmin).clamp(min=1e-5) / self.maxq
            zero = torch.round(-xmin / scale)
        if self.mse:
            best = torch.full([x.shape[0]], float("inf"), device=dev)
            for i in range(int(self.maxshrink * self.grid)):
                p = 1 - i / self.grid
                xmin1 = p * xmin
                xmax1 = p * xmax
                if self.sym:
                    scale1 = xmax1 / self.maxq
                    zero1 = torch.zeros_like(scale1)
                else:
                    scale1 = (xmax1 - xmin1) / self.maxq
                    zero1 = torch.round(-xmin1 / scale1)
                q = self._qd(x, scale1.unsqueeze(1), zero1.unsqueeze(1))
                q -= x
                q.abs_()
                q.pow_(self.norm)
                err = torch.sum(q, 1)
                better = err < best
                if torch.any(better):
                    best[better] = err[better]
                    scale[better] = scale1[better]
                    zero[better] = zero1[better]
        self.scale = scale.reshape(-1, 1)
        self.zero = zero.reshape(-1, 1)

    def forward(self, x):
        if self.ready() and self.bits < 16:  # the reference's ready() check: one host sync per call (per column)
            return self._qd(x, self.scale, self.zero).to(x.dtype)
        return x


class NullClock:
    @contextlib.contextmanager
    def phase(self, name):
        yield


class RefGPTQ:
    """One Linear's Hessian and fasterquant, as RSQ's gptq_utils.GPTQ behaves (add_until_fail on)."""

    def __init__(self, layer, quantizer, add_until_fail=True):
        self.layer = layer
        self.dev = layer.weight.device
        W = layer.weight.data.clone()
        self.rows, self.columns = W.shape
        self.H = torch.zeros((self.columns, self.columns), device=self.dev)
        self.nsamples = 0
        self.quantizer = quantizer
        self.add_until_fail = add_until_fail

    def add_batch(self, inp, weighting=None):
        """inp: (b, L, in) (b sequences of this batch), weighting: (b, L) token importances r, or None."""
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        nb = inp.shape[0]
        if inp.dim() == 3:
            inp = inp.reshape(-1, inp.shape[-1])
        inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + nb)
        self.nsamples += nb
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        if weighting is not None:
            w = weighting / weighting.sum(dim=-1, keepdim=True) * weighting.shape[-1]  # mean 1 within each sequence
            inp = inp * w.reshape(-1).to(inp.device) ** 0.5
        self.H += inp.matmul(inp.t())

    def fasterquant(self, clock=NullClock(), blocksize=128, percdamp=0.01, groupsize=-1, actorder=False):
        """Spec §6 (static groups off). Overwrites layer.weight with the dequantized bf16 Q; returns the Losses."""
        W = self.layer.weight.data.clone()
        W = W.float()
        if not self.quantizer.ready():
            with clock.phase("fq_grid"):
                self.quantizer.find_params(W)
        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        if actorder:
            perm = torch.argsort(torch.diag(H), descending=True)
            W = W[:, perm]
            H = H[perm][:, perm]
            invperm = torch.argsort(perm)
        Losses = torch.zeros_like(W)
        Q = torch.zeros_like(W)
        with clock.phase("fq_factor"):
            damp = percdamp * torch.mean(torch.diag(H))
            diag = torch.arange(self.columns, device=self.dev)
            attempts = 49 if self.add_until_fail else 1
            for attempt in range(attempts):
                try:
                    H[diag, diag] += damp
                    H = torch.linalg.cholesky(H)
                    H = torch.cholesky_inverse(H)
                    H = torch.linalg.cholesky(H, upper=True)
                    break
                except RuntimeError:
                    if not self.add_until_fail:
                        raise
            Hinv = H
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                if groupsize != -1 and (i1 + i) % groupsize == 0:
                    with clock.phase("fq_grid"):
                        self.quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)])
                q = self.quantizer.forward(w.unsqueeze(1)).flatten()
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d ** 2
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            Q[:, i1:i2] = Q1
            Losses[:, i1:i2] = Losses1 / 2
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        sync(self.dev)
        if actorder:
            Q = Q[:, invperm]
        self.layer.weight.data = Q.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)
        if torch.any(torch.isnan(self.layer.weight.data)):
            raise ValueError("NaN in weights")
        return Losses

    def requantize_check(self):
        """get_quantize_linear + the reference's assert: re-round the bf16 weight with the last fitted scale/zero.
        Holds only for per-row grids (groupsize −1); the caller asserts only then."""
        Wq = self.layer.weight.data
        qz = self.quantizer
        if qz.sym:
            deq = qz.scale * torch.clamp(torch.round(Wq / qz.scale), -(qz.maxq + 1), qz.maxq)
        else:
            deq = qz.scale * (torch.clamp(torch.round(Wq / qz.scale) + qz.zero, 0, qz.maxq) - qz.zero)
        return bool(torch.all(deq.to(Wq.dtype) == Wq))

    def free(self):
        self.H = None
        gc.collect()
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------------
# Timing

class Clock:
    """Exclusive phase timer: entering a phase pauses the enclosing one; every boundary synchronizes the device."""

    def __init__(self, dev):
        self.dev = dev
        self.acc = defaultdict(float)
        self.stack = []
        self.t = 0.0

    def _now(self):
        sync(self.dev)
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name):
        t = self._now()
        if self.stack:
            self.acc[self.stack[-1]] += t - self.t
        self.stack.append(name)
        self.t = t
        try:
            yield
        finally:
            t = self._now()
            self.acc[self.stack.pop()] += t - self.t
            self.t = t

    def snapshot(self):
        return defaultdict(float, self.acc)


def diff(a, b):
    return {k: b[k] - a.get(k, 0.0) for k in b}


PHASES = [("forward_fp", "forward: FP pass (SDPA), outputs stored"),
          ("forward_grp", "forward: 4 true-sequential passes (eager attention)"),
          ("forward_fin", "forward: quantized layer, next inputs (eager attention)"),
          ("importance", "importance: AttnCon (RMSN + eager attention, Σ heads·queries, min-max)"),
          ("hessian", "Hessian add_batch (7 Hessians, √w-scaled, fp32)"),
          ("fq_factor", "fasterquant: damping + chol → cholesky_inverse → chol"),
          ("fq_grid", "fasterquant: grid fits (whole W + every group; clip search)"),
          ("fq_solve", "fasterquant: column loop, act-order, checks, cleanup"),
          ("rotation", "rotation: norm fusion, W·Q / Qᵀ·W (fp64), exact Hadamards")]
GROUPS = {"forward": ("forward_fp", "forward_grp", "forward_fin"), "fasterquant": ("fq_factor", "fq_grid", "fq_solve")}


def group_sum(d, key):
    return sum(d.get(k, 0.0) for k in GROUPS[key]) if key in GROUPS else d.get(key, 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# The RSQ layer loop

def batches(n, b):
    return [(i, min(i + b, n)) for i in range(0, n, b)]


def forward_and_store(layer, inps, outs, bsz, pos):
    for b0, b1 in batches(inps.shape[0], bsz):
        outs[b0:b1].copy_(layer(inps[b0:b1], pos)[0].reshape_as(outs[b0:b1]), non_blocking=True)


def quantize_layer(layer, inps, outs, pos, a, clock, log):
    """RSQ gptq_fwrd's body for one layer (spec §1 step 5). Returns nothing; outs holds the quantized layer's output."""
    full = layer.linears()
    attn = layer.self_attn
    nseq = inps.shape[0]
    # 5a: FP outputs with the model's default attention
    attn.mode = a.fp_attn
    t0 = clock.snapshot()
    with clock.phase("forward_fp"):
        forward_and_store(layer, inps, outs, a.batch, pos)
    # 5b: AttnCon through the custom (eager) attention, which then stays enabled for the rest of the layer
    attn.mode = "eager"
    with clock.phase("importance"):
        weights = torch.empty(nseq, inps.shape[1], device=inps.device)
        for b0, b1 in batches(nseq, a.batch):
            weights[b0:b1] = attncon(layer, inps[b0:b1], pos, a.r_min, a.r_max)
    t1 = clock.snapshot()
    d = diff(t0, t1)
    log(f"    FP forward ({a.fp_attn}) {d['forward_fp']:.3f} s, AttnCon {d['importance']:.3f} s "
        f"(r in [{weights.min().item():.3g}, {weights.max().item():.3g}])")
    attn.mode = a.calib_attn
    # 5c: true-sequential groups
    current = {}
    for names in SEQUENTIAL:
        g0 = clock.snapshot()
        with clock.phase("hessian"):
            gptq = {n: RefGPTQ(full[n], WeightQuantizer(a.bits, sym=not a.asym, mse=a.clip)) for n in names}

        def hook_for(name):
            def hook(_, inp, out):
                with clock.phase("hessian"):
                    gptq[name].add_batch(inp[0].data, current["w"])
            return hook
        handles = [full[n].register_forward_hook(hook_for(n)) for n in names]
        with clock.phase("forward_grp"):
            for b0, b1 in batches(nseq, a.batch):
                current["w"] = weights[b0:b1]
                layer(inps[b0:b1], pos)
        for h in handles:
            h.remove()
        g1 = clock.snapshot()
        per = []
        for n in names:
            f0 = clock.snapshot()
            with clock.phase("fq_solve"):
                gptq[n].fasterquant(clock, blocksize=a.blocksize, percdamp=a.percdamp, groupsize=a.groupsize,
                                    actorder=a.act_order)
                same = gptq[n].requantize_check()
                if a.groupsize == -1 and not same:
                    raise AssertionError(f"{n}: re-quantized weight differs (the reference asserts here)")
                gptq[n].free()
            per.append(f"{n.split('.')[-1]} {group_sum(diff(f0, clock.snapshot()), 'fasterquant'):.2f}")
        gptq = None
        g2 = clock.snapshot()
        dp, dq = diff(g0, g1), diff(g1, g2)
        log(f"    [{', '.join(n.split('.')[-1] for n in names)}] forward {dp['forward_grp']:.3f} s, Hessians "
            f"{dp['hessian']:.3f} s, fasterquant {group_sum(dq, 'fasterquant'):.3f} s ({', '.join(per)}; grid fits "
            f"{dq.get('fq_grid', 0.0):.3f} s, factor {dq.get('fq_factor', 0.0):.3f} s)")
    # 5d: the quantized layer's outputs, still with the custom attention
    f0 = clock.snapshot()
    with clock.phase("forward_fin"):
        forward_and_store(layer, inps, outs, a.batch, pos)
    log(f"    final forward {diff(f0, clock.snapshot())['forward_fin']:.3f} s")
    attn.mode = a.fp_attn


def run_benchmark(a, s, dev, emit, log):
    dtype = torch.bfloat16
    S, L = a.sequences, a.seq_len
    gen = torch.Generator(device=dev).manual_seed(a.seed)
    clock = Clock(dev)
    pos = torch.arange(L, device=dev).unsqueeze(0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # warm-up (kernels, cuBLAS/cuSOLVER handles, attention backends) on a small problem, untimed
    log("warm-up")
    wl = make_layer(s, dtype, dev, seed=12345)
    rotate_layer(wl, random_hadamard_matrix(s.hidden, gen, dev))
    xw = torch.randn(1, min(L, 256), s.hidden, device=dev, dtype=dtype)
    pw = torch.arange(xw.shape[1], device=dev).unsqueeze(0)
    for mode in ("sdpa", "eager"):
        wl.self_attn.mode = mode
        wl(xw, pw)
    wl.self_attn.mode = "eager"
    attncon(wl, xw, pw, a.r_min, a.r_max)
    tiny = new_linear(256, 64, dtype, dev)
    tiny.weight.data.normal_(0, 0.02, generator=gen)
    g = RefGPTQ(tiny, WeightQuantizer(a.bits, sym=not a.asym, mse=a.clip))
    g.add_batch(torch.randn(2, 64, 256, device=dev, dtype=dtype), torch.rand(2, 64, device=dev) + 0.005)
    g.fasterquant(groupsize=64 if a.groupsize != -1 else -1, actorder=a.act_order)
    del wl, xw, tiny, g
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    sync(dev)

    # model-wide, once: Q, embedding centring + rotation, lm_head fusion + rotation, layer-0 inputs
    log(f"model-wide rotation and inputs (vocab {s.vocab})")
    E = torch.empty(s.vocab, s.hidden, device=dev, dtype=dtype).normal_(0, 0.02, generator=gen)
    head = torch.empty(s.vocab, s.hidden, device=dev, dtype=dtype).normal_(0, 0.02, generator=gen)
    gain_final = torch.ones(s.hidden, device=dev, dtype=dtype)
    ids = torch.randint(0, s.vocab, (S, L), generator=gen, device=dev)
    with clock.phase("once"):
        E64 = E.double()
        E = (E64 - E64.mean(dim=-1, keepdim=True)).to(dtype)  # fuse_layer_norms: centre the embeddings
        del E64
        head = (head.double() * gain_final.double()).to(dtype)  # final norm gain into lm_head
        Q = random_hadamard_matrix(s.hidden, gen, dev)
        E = torch.matmul(E.to(torch.float64), Q).to(dtype)
        head = torch.matmul(head.to(torch.float64), Q).to(dtype)
        if a.input == "embed":
            inps = E[ids]  # the inputs of layer 0 (get_inps), (S, L, hidden) in bf16
        else:
            inps = torch.randn(S, L, s.hidden, device=dev, dtype=dtype, generator=gen)
        outs = torch.zeros_like(inps)
    once = clock.acc["once"]
    del E, head, ids
    peak_once = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else float("nan")
    log(f"    {once:.3f} s" + (f", peak memory {peak_once:.2f} GiB" if dev.type == "cuda" else ""))

    per_layer = []
    peaks = []
    for li in range(a.layers):
        layer = make_layer(s, dtype, dev, seed=1000 + li)  # untimed: the reference loads weights instead
        sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        log(f"layer {li}")
        t0 = clock.snapshot()
        wall0 = time.perf_counter()
        with clock.phase("rotation"):
            rotate_layer(layer, Q)
        log(f"    rotation {clock.acc['rotation'] - t0['rotation']:.3f} s")
        quantize_layer(layer, inps, outs, pos, a, clock, log)
        del layer
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        sync(dev)
        wall = time.perf_counter() - wall0
        d = diff(t0, clock.snapshot())
        d["wall"] = wall
        per_layer.append(d)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else float("nan")
        peaks.append(peak)
        total = sum(d.get(k, 0.0) for k, _ in PHASES)
        log(f"    layer {li}: {total:.3f} s in the phases ({wall:.3f} s wall)"
            + (f", peak memory {peak:.2f} GiB" if dev.type == "cuda" else ""))
        if not torch.isfinite(outs).all():
            raise FloatingPointError(f"layer {li}: non-finite outputs")
        inps, outs = outs, inps

    # report
    n = len(per_layer)
    emit("\n## Per phase (seconds)\n")
    emit("| phase | " + " | ".join(f"layer {i}" for i in range(n)) + " | mean per layer | x 32 layers |")
    emit("|---|" + "---|" * (n + 2))
    for k, label in PHASES:
        vals = [d.get(k, 0.0) for d in per_layer]
        m = statistics.mean(vals)
        emit(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {m:.3f} | {32 * m:.1f} |")
    for key, label in (("forward", "= forward (all passes)"), ("fasterquant", "= fasterquant (7 Linears)")):
        vals = [group_sum(d, key) for d in per_layer]
        m = statistics.mean(vals)
        emit(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {m:.3f} | {32 * m:.1f} |")
    totals = [sum(d.get(k, 0.0) for k, _ in PHASES) for d in per_layer]
    walls = [d["wall"] for d in per_layer]
    mt, mw = statistics.mean(totals), statistics.mean(walls)
    emit("| **total (phases)** | " + " | ".join(f"{v:.3f}" for v in totals) + f" | **{mt:.3f}** | **{32 * mt:.1f}** |")
    emit("| wall per layer | " + " | ".join(f"{v:.3f}" for v in walls) + f" | {mw:.3f} | {32 * mw:.1f} |")
    if dev.type == "cuda":
        emit("| peak memory (GiB) | " + " | ".join(f"{p:.2f}" for p in peaks) + " | | |")
    emit(f"\nModel-wide, once (Q, embedding centring + rotation, lm_head, layer-0 inputs): {once:.3f} s")
    if dev.type == "cuda":
        emit(f"torch.cuda.max_memory_allocated: {max(peaks):.2f} GiB over the layers, {peak_once:.2f} GiB up to the "
             f"end of the model-wide step (fp64 copies of the {s.vocab} x {s.hidden} embedding and lm_head)")
    ext = 32 * mw + once
    emit("\n| run | tokens | s per layer | 32 layers (extrapolated, incl. once) |")
    emit("|---|---|---|---|")
    emit(f"| RSQ reference loop (PyTorch), {s.name} shapes, {n} layer(s) measured | {S} x {L} = {S * L} | "
         f"{mw:.2f} | {ext:.1f} s ({ext / 60:.1f} min) |")


# ---------------------------------------------------------------------------------------------------------------------
# Self-checks (--quick, or --checks)

def plain_layer_fp64(x, W, g_in, g_post, s):
    """An independent fp64 Llama decoder layer (unrotated, gains applied, per-head loops); returns (out, A)."""
    x = x.double()
    b, L, d = x.shape
    hd = s.head_dim

    def norm(v, g):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + s.eps) * g.double()
    h = norm(x, g_in)
    q, k, v = (h @ W[n].double().T for n in ("q", "k", "v"))
    ang = torch.arange(L, dtype=torch.float64, device=x.device)[:, None] * \
        s.theta ** (-torch.arange(0, hd, 2, dtype=torch.float64, device=x.device) / hd)[None, :]
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)

    def rope(t):
        return t * cos + torch.cat((-t[..., hd // 2:], t[..., :hd // 2]), -1) * sin
    allowed = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    A = torch.zeros(b, s.heads, L, L, dtype=torch.float64, device=x.device)
    att = torch.zeros(b, L, s.heads * hd, dtype=torch.float64, device=x.device)
    for hh in range(s.heads):
        g = hh // (s.heads // s.kv_heads)
        qh, kh, vh = rope(q[..., hh * hd:(hh + 1) * hd]), rope(k[..., g * hd:(g + 1) * hd]), v[..., g * hd:(g + 1) * hd]
        sc = (qh @ kh.transpose(1, 2) / math.sqrt(hd)).masked_fill(~allowed, float("-inf"))
        A[:, hh] = torch.softmax(sc, -1)
        att[..., hh * hd:(hh + 1) * hd] = A[:, hh] @ vh
    x = x + att @ W["o"].double().T
    h = norm(x, g_post)
    x = x + (F.silu(h @ W["gate"].double().T) * (h @ W["up"].double().T)) @ W["down"].double().T
    return x, A


def attncon_loop(A, r_min, r_max):
    """s_t = Σ_h Σ_{i ≥ t} A_h[i, t] term by term, then min-max, in Python floats."""
    out = []
    for j in range(A.shape[0]):
        sc = [float(A[j, :, t:, t].sum()) for t in range(A.shape[-1])]
        mn, mx = min(sc), max(sc)
        out.append([r_min + (v - mn) / (mx - mn) * (r_max - r_min) for v in sc])
    return torch.tensor(out, dtype=torch.float64)


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


class IstAsymQuantizer:
    """bench_gptq_reference's grid (fit_asym / quantize) behind the WeightQuantizer interface."""

    def __init__(self, bits):
        self.bits, self.maxq, self.sym = bits, 2 ** bits - 1, False
        self.scale = torch.zeros(1)

    def ready(self):
        return torch.all(self.scale != 0)

    def find_params(self, x):
        self.scale, self.zero = gref.fit_asym(x, self.maxq)

    def forward(self, x):
        return gref.quantize(x, self.scale, self.zero, self.maxq) if self.ready() else x


def run_checks(dev, log):
    torch.manual_seed(0)
    g = torch.Generator(device=dev).manual_seed(7)
    failures = []

    def check(name, ok, detail):
        log(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")
        if not ok:
            failures.append(name)

    log("self-checks")
    # Hadamards
    n = 16
    pc = torch.tensor([[(-1.0) ** bin(i & j).count("1") for j in range(n)] for i in range(n)], dtype=torch.float64)
    check("Sylvester natural order", torch.equal(sylvester(n), pc), "H[i,j] = (-1)^popcount(i&j)")
    x = torch.randn(3, 5, 64, dtype=torch.float64, device=dev, generator=g)
    check("butterfly = H_n", rel(fwht_last(x), x @ sylvester(64).to(dev)) < 1e-14, "n = 64")
    h28 = paley2_hadamard(13)
    check("had28 orthogonal", torch.equal(h28 @ h28.T, 28 * torch.eye(28, dtype=torch.float64))
          and bool(((h28 == 1) | (h28 == -1)).all()), "H Hᵀ = 28 I, entries ±1")
    M = torch.kron(h28, sylvester(32)).to(dev)
    x = torch.randn(6, 896, dtype=torch.float64, device=dev, generator=g)
    check("hadamard_rows = (had28 ⊗ H32)/√n", rel(hadamard_rows(x), x @ M.T / math.sqrt(896)) < 1e-13, "n = 896")
    xb = x.to(torch.bfloat16)
    check("online full Hadamard (bf16 GEMMs)", rel(online_full_had(xb.reshape(2, 3, 896)).reshape(6, 896),
                                                    hadamard_rows(xb.double())) < 1e-2, "vs fp64, n = 896")
    xp = torch.randn(5, 4 * 64, dtype=torch.float64, device=dev, generator=g)
    Mp = torch.kron(sylvester(4), torch.eye(64, dtype=torch.float64)).to(dev) / 2.0
    check("online partial Hadamard (heads)", rel(online_partial_had(xp.to(torch.bfloat16), 4), xp @ Mp.T) < 1e-2,
          "4 heads of 64")
    Q = random_hadamard_matrix(256, g, dev)
    check("random Hadamard Q orthogonal", rel(Q @ Q.T, torch.eye(256, dtype=torch.float64, device=dev)) < 1e-13,
          "Q Qᵀ = I")

    # Layer: rotated module (fp32 and bf16, SDPA and eager) against the plain fp64 layer; AttnCon against a loop
    s = QUICK
    b, L = 3, 64
    Wd = {}
    for nm, (o, i) in {"q": (s.heads * s.head_dim, s.hidden), "k": (s.kv_heads * s.head_dim, s.hidden),
                       "v": (s.kv_heads * s.head_dim, s.hidden), "o": (s.hidden, s.heads * s.head_dim),
                       "gate": (s.inter, s.hidden), "up": (s.inter, s.hidden), "down": (s.hidden, s.inter)}.items():
        Wd[nm] = torch.randn(o, i, device=dev, generator=g) * (1.0 / math.sqrt(i))
    g_in = 1 + 0.2 * torch.randn(s.hidden, device=dev, generator=g)
    g_post = 1 + 0.2 * torch.randn(s.hidden, device=dev, generator=g)
    x = torch.randn(b, L, s.hidden, device=dev, generator=g)
    ref_out, ref_A = plain_layer_fp64(x, Wd, g_in, g_post, s)
    ref_r = attncon_loop(ref_A, 0.005, 1.0)
    Qs = random_hadamard_matrix(s.hidden, g, dev)
    want = ref_out @ Qs  # the rotated layer maps x·Q to out·Q
    pos = torch.arange(L, device=dev).unsqueeze(0)
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    for dtype, tol, rtol in ((torch.float32, 2e-5, 1e-4), (torch.bfloat16, 3e-2, 5e-2)):
        layer = DecoderLayer(s, dtype, dev)
        lin = layer.linears()
        for nm, full in names.items():
            lin[full].weight.data = Wd[nm].to(dtype)
        layer.gain_in, layer.gain_post = g_in.to(dtype), g_post.to(dtype)
        rotate_layer(layer, Qs)
        xr = (x.double() @ Qs).to(dtype)
        outs = {}
        for mode in ("sdpa", "eager"):
            layer.self_attn.mode = mode
            outs[mode] = layer(xr, pos)[0]
            check(f"rotated layer {str(dtype)[6:]} {mode} = plain fp64 layer · Q", rel(outs[mode], want) < tol,
                  f"rel err {rel(outs[mode], want):.2e} (tol {tol:g})")
        check(f"SDPA = eager {str(dtype)[6:]}", rel(outs["sdpa"], outs["eager"]) < tol,
              f"rel err {rel(outs['sdpa'], outs['eager']):.2e}")
        r = attncon(layer, xr, pos, 0.005, 1.0)
        err = (r.double().cpu() - ref_r).abs().max().item()
        check(f"AttnCon {str(dtype)[6:]} = Σ_h Σ_(i≥t) A[i,t] loop", err < rtol,
              f"max |Δr| {err:.2e} (tol {rtol:g}), r range [{r.min().item():.4f}, {r.max().item():.4f}]")
    check("AttnCon range", abs(r.min().item() - 0.005) < 1e-6 and abs(r.max().item() - 1.0) < 1e-6, "[0.005, 1]")

    # Hessian: batched add_batch with r = the project's ReferenceHessian per sequence = the closed form
    S, Lh, din = 5, 32, 48
    X = torch.randn(S, Lh, din, device=dev, generator=g).to(torch.bfloat16)
    r = torch.rand(S, Lh, device=dev, generator=g) * 0.995 + 0.005
    mine = RefGPTQ(new_linear(din, 8, torch.bfloat16, dev), WeightQuantizer(4))
    for b0, b1 in batches(S, 2):
        mine.add_batch(X[b0:b1], r[b0:b1])
    theirs = gref.ReferenceHessian(din, dev)
    closed = torch.zeros(din, din, dtype=torch.float64, device=dev)
    for j in range(S):
        w = r[j] * Lh / r[j].sum()
        theirs.add_batch(X[j], w)
        closed += (X[j].double() * w.double()[:, None]).T @ X[j].double()
    closed *= 2.0 / S
    check("Hessian (batches of 2) = ReferenceHessian per sequence", rel(mine.H, theirs.H) < 1e-5,
          f"rel err {rel(mine.H, theirs.H):.2e}")
    check("Hessian = (2/N) Σ w x xᵀ", rel(mine.H, closed) < 1e-5, f"rel err {rel(mine.H, closed):.2e}")

    # GPTQ: against bench_gptq_reference.gptq_reference; RTN on diagonal H; lower proxy loss than RTN on a real H
    Hr = gref.random_hessian(256, dev, 3)
    W = torch.randn(64, 256, device=dev, generator=g)
    for kw in (dict(), dict(groupsize=64, actorder=True)):
        lin = new_linear(256, 64, torch.float32, dev)
        lin.weight.data = W.clone()
        gq = RefGPTQ(lin, IstAsymQuantizer(4))
        gq.H = Hr.clone()
        gq.fasterquant(**kw)
        Qr, _ = gref.gptq_reference(W, Hr, bits=4, **kw)
        check(f"fasterquant = gptq_reference {kw or 'per row'}", rel(lin.weight.data, Qr) < 5e-3,
              f"rel diff {rel(lin.weight.data, Qr):.1e}")
    dvals = torch.randperm(256, generator=torch.Generator().manual_seed(1)).double() + 1
    for clip in (False, True):
        lin = new_linear(256, 64, torch.float32, dev)
        lin.weight.data = W.clone()
        gq = RefGPTQ(lin, WeightQuantizer(4, sym=True, mse=clip))
        gq.H = torch.diag(dvals.float()).to(dev)
        gq.fasterquant(groupsize=64, actorder=True)
        perm = torch.argsort(dvals.to(dev), descending=True)
        Wp = W[:, perm]
        qz = WeightQuantizer(4, sym=True, mse=clip)
        rtn = torch.empty_like(Wp)
        for c in range(0, 256, 64):
            qz.find_params(Wp[:, c:c + 64])
            rtn[:, c:c + 64] = qz.forward(Wp[:, c:c + 64])
        rtn = rtn[:, torch.argsort(perm)]
        check(f"diagonal H = RTN (sym, g64, act-order, clip {clip})", torch.equal(lin.weight.data, rtn),
              "identical")
        levels = lin.weight.data[:, perm[192:]] / qz.scale  # the last group (in act-order) on its own grid
        on_grid = (levels - torch.round(levels)).abs().max().item() < 1e-4
        check(f"sym 4-bit levels (clip {clip})", on_grid and bool((levels.round() >= -8).all() and
                                                                  (levels.round() <= 7).all()), "integers in [-8, 7]")
    Xc = torch.randn(4096, 256, device=dev, generator=g) @ (torch.eye(256, device=dev) +
                                                           0.3 * torch.randn(256, 256, device=dev, generator=g))
    Hc = 2.0 / 4096 * Xc.T @ Xc
    lin = new_linear(256, 64, torch.float32, dev)
    lin.weight.data = W.clone()
    gq = RefGPTQ(lin, WeightQuantizer(4, sym=True, mse=True))
    gq.H = Hc.clone()
    gq.fasterquant(groupsize=64, actorder=True)
    qz = WeightQuantizer(4, sym=True, mse=True)
    rtn = torch.empty_like(W)
    for c in range(0, 256, 64):
        qz.find_params(W[:, c:c + 64])
        rtn[:, c:c + 64] = qz.forward(W[:, c:c + 64])

    def proxy(Wq):
        D = (Wq - W).double()
        return torch.trace(D @ Hc.double() @ D.T).item()
    check("GPTQ proxy loss < RTN", proxy(lin.weight.data) < proxy(rtn),
          f"{proxy(lin.weight.data):.4g} vs {proxy(rtn):.4g}")
    if failures:
        raise SystemExit(f"self-checks failed: {', '.join(failures)}")
    log("  all self-checks passed")


# ---------------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=None, help="decoder layers to run (default 2)")
    ap.add_argument("--sequences", type=int, default=None, help="calibration sequences S (default 128)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence L (default 2048)")
    ap.add_argument("--batch", type=int, default=None,
                    help="sequences per forward (default 1 = the reference's loop over samples)")
    ap.add_argument("--quick", action="store_true", help="self-checks, then tiny shapes (smoke test)")
    ap.add_argument("--checks", action="store_true", help="run the self-checks before the benchmark")
    ap.add_argument("--out", default="", help="also write the report (markdown) to this file")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (--device cpu)")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--groupsize", type=int, default=128)
    ap.add_argument("--no-act-order", dest="act_order", action="store_false")
    ap.add_argument("--asym", action="store_true", help="asymmetric grid (the RSQ scripts use sym)")
    ap.add_argument("--no-clip", dest="clip", action="store_false",
                    help="no MSE clip search (the RSQ scripts set --w_clip)")
    ap.add_argument("--percdamp", type=float, default=0.01)
    ap.add_argument("--blocksize", type=int, default=128)
    ap.add_argument("--r-min", type=float, default=0.005)
    ap.add_argument("--r-max", type=float, default=1.0)
    ap.add_argument("--fp-attn", default="sdpa", choices=["sdpa", "eager"],
                    help="attention of the first (FP) pass: the model's default, SDPA")
    ap.add_argument("--calib-attn", default="eager", choices=["sdpa", "eager"],
                    help="attention of the group and final passes: the reference's custom eager attention")
    ap.add_argument("--input", default="embed", choices=["embed", "randn"],
                    help="layer-0 input: embeddings of random ids (default) or N(0, 1)")
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    s = QUICK if a.quick else LLAMA3_8B
    for k, full, quick in (("layers", 2, 2), ("sequences", 128, 8), ("seq_len", 2048, 128), ("batch", 1, 4),
                           ("vocab", s.vocab, s.vocab)):
        if getattr(a, k) is None:
            setattr(a, k, quick if a.quick else full)
    s.vocab = a.vocab
    torch.backends.cuda.matmul.allow_tf32 = False  # as RSQ's gptq_utils sets
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu)")
    if dev.type == "cpu" and a.threads:
        torch.set_num_threads(a.threads)
    out = open(a.out, "w") if a.out else None
    t_start = time.perf_counter()

    def emit(line):
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    def log(line):
        print(f"[{time.perf_counter() - t_start:7.1f} s] {line}", flush=True)

    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    emit(f"# RSQ reference layer loop (PyTorch {torch.__version__}), {name}\n")
    emit(f"{s.name} shapes (hidden {s.hidden}, {s.heads}/{s.kv_heads} heads of {s.head_dim}, intermediate {s.inter}, "
         f"RMSNorm eps {s.eps:g}, RoPE theta {s.theta:g}, vocab {s.vocab}); {a.layers} layer(s), {a.sequences} x "
         f"{a.seq_len} calibration tokens ({a.input}), {a.batch} sequence(s) per forward; model bf16, Hessians and "
         f"GPTQ fp32 (TF32 off); {a.bits}-bit {'asym' if a.asym else 'sym'} (RSQ grid), group {a.groupsize}, "
         f"act-order {'on' if a.act_order else 'off'}, clip search {'on' if a.clip else 'off'}, percdamp "
         f"{a.percdamp}, block {a.blocksize}, add_until_fail; AttnCon r in [{a.r_min}, {a.r_max}]; attention: FP pass "
         f"{a.fp_attn}, group/final passes {a.calib_attn}")
    with torch.no_grad():
        if a.quick or a.checks:
            run_checks(dev, log)
        run_benchmark(a, s, dev, emit, log)
    if out:
        out.close()


if __name__ == "__main__":
    sys.exit(main())
