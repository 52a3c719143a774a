# SPDX-License-Identifier: MIT
"""The PyTorch baseline of the CUDA benchmark: the reference GPTQ loop of rsq-method.md §6 (fp32, TF32 off, block 128,
4-bit asymmetric "ist" grid), written from the spec's description, and the reference's Hessian accumulation
(running average per sequence, one Hessian per linear layer as the reference hooks them). Timed on the GPU of the run,
and optionally on 2 CPU threads (--cpu) for the CPU side-by-side comparison.

usage: python3 bench_gptq_reference.py [--device cuda|cpu] [--threads 2] [--tokens 262144] [--reps 1] [--quick]
                                       [--out results.md]
"""
import argparse
import math
import statistics
import sys
import time

import torch


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def fit_asym(x, maxq):
    """Per-row asymmetric grid (spec §7, ist convention): range containing 0, (-1, 1) for all-zero rows."""
    xmin = torch.clamp(x.min(dim=1).values, max=0)
    xmax = torch.clamp(x.max(dim=1).values, min=0)
    both = (xmin == 0) & (xmax == 0)
    xmin[both] = -1
    xmax[both] = 1
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def gptq_reference(W, H, bits=4, blocksize=128, percdamp=0.01, groupsize=-1, actorder=False):
    """Spec §6 steps 1-8, literally: factor (chol, cholesky_inverse, chol upper) then the column loop."""
    W = W.clone().float()
    H = H.clone()
    rows, cols = W.shape
    maxq = 2 ** bits - 1
    scale, zero = fit_asym(W, maxq)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    Losses = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(cols, device=W.device)
    H[idx, idx] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
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
                scale, zero = fit_asym(W[:, (i1 + i):(i1 + i + groupsize)], maxq)
            q = quantize(w.unsqueeze(1), scale, zero, maxq).flatten()
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, invperm]
    return Q, Losses.sum().item()


def random_hessian(cols, dev, seed):
    g = torch.Generator(device=dev).manual_seed(seed)
    tokens = max(8192, 2 * cols)
    X = torch.randn(tokens, cols, device=dev, generator=g)
    X[:, ::7] *= 4
    return 2.0 / tokens * (X.t() @ X)


class ReferenceHessian:
    """The reference's add_batch: running average over sequences, inputs scaled by sqrt(2/n)·sqrt(w)."""

    def __init__(self, cols, dev):
        self.H = torch.zeros(cols, cols, device=dev)
        self.nsamples = 0

    def add_batch(self, inp, weight=None):
        tmp = 1
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        if weight is not None:
            inp = inp * weight.sqrt().unsqueeze(1)
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.t().matmul(inp)


def timed(dev, fn, reps):
    times = []
    out = None
    for _ in range(reps):
        sync(dev)
        t0 = time.perf_counter()
        out = fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=262144)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-layer", action="store_true")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    if dev.type == "cpu":
        torch.set_num_threads(a.threads)
    out = open(a.out, "w") if a.out else None

    def emit(s):
        print(s, flush=True)
        if out:
            out.write(s + "\n")

    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"CPU, {a.threads} threads"
    emit(f"# PyTorch reference loop (spec §6), torch {torch.__version__}, {name}, fp32, TF32 off\n")
    if dev.type == "cuda":
        shapes = [("q/o 4096x4096", 4096, 4096), ("k/v 1024x4096", 1024, 4096),
                  ("gate/up 14336x4096", 14336, 4096), ("down 4096x14336", 4096, 14336)]
    else:  # CPU side-by-side: the same shapes scaled to 1024-4096 columns
        shapes = [("1024x1024", 1024, 1024), ("4096x1024", 4096, 1024), ("1024x4096", 1024, 4096)]
    if a.quick:
        shapes = shapes[:2]
    configs = [("per row", dict()), ("g128 act", dict(groupsize=128, actorder=True))]
    hs = {}
    # warm-up (kernels, cuBLAS/cuSOLVER handles)
    Hw = random_hessian(256, dev, 0)
    gptq_reference(torch.randn(64, 256, device=dev), Hw)
    emit("| weight | config | seconds (factor + solve, as fasterquant) | loss |")
    emit("|---|---|---|---|")
    for nm, rows, cols in shapes:
        if cols not in hs:
            hs[cols] = random_hessian(cols, dev, cols)
        W = torch.randn(rows, cols, device=dev, generator=torch.Generator(device=dev).manual_seed(rows + cols))
        for cn, kw in configs:
            t, (Q, loss) = timed(dev, lambda: gptq_reference(W, hs[cols], **kw), a.reps)
            emit(f"| {nm} | {cn} | {t:.3f} | {loss:.4g} |")
    if dev.type == "cuda" and not a.quick and not a.no_layer:
        emit("\n## Decoder layer (7 linears, one factorization each, as fasterquant), H given\n")
        layer = [("q", 4096, 4096, 0), ("k", 1024, 4096, 0), ("v", 1024, 4096, 0), ("o", 4096, 4096, 1),
                 ("gate", 14336, 4096, 2), ("up", 14336, 4096, 2), ("down", 4096, 14336, 3)]
        H = [random_hessian(14336 if k == 3 else 4096, dev, 300 + k) for k in range(4)]
        Ws = [torch.randn(r, c, device=dev) for _, r, c, _ in layer]
        emit("| config | seconds per layer |")
        emit("|---|---|")
        for cn, kw in configs:
            def run():
                for i, (_, r, c, k) in enumerate(layer):
                    gptq_reference(Ws[i], H[k], **kw)
            t, _ = timed(dev, run, a.reps)
            emit(f"| {cn} | {t:.3f} |")
        del Ws, H
        emit(f"\n## Hessians of one decoder layer from N = {a.tokens} tokens (7 Hessians, as the reference hooks)\n")
        L = 4096
        seqs = a.tokens // L
        x4 = torch.randn(L, 4096, device=dev)
        x14 = torch.randn(L, 14336, device=dev)
        r = torch.rand(L, device=dev) * 0.995 + 0.005
        w = r * L / r.sum()

        def hessians():
            for k in range(7):
                x = x14 if k == 6 else x4
                acc = ReferenceHessian(x.shape[1], dev)
                for _ in range(seqs):
                    acc.add_batch(x, w)
            return acc.H
        t, _ = timed(dev, hessians, 1)
        emit(f"| Hessians (7) | {t:.3f} s |")
    if out:
        out.close()


if __name__ == "__main__":
    sys.exit(main())
