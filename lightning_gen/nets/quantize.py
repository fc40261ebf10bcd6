"""Vector quantisation with a codebook learned by exponential moving averages (van den Oord et al. 2017,
"Neural Discrete Representation Learning", appendix A.1; Razavi et al. 2019, VQ-VAE-2).

Nearest-code quantisation of an encoder output z_e in R^D against the codebook e_1 .. e_K:

    k = argmin_j ||z_e - e_j||^2,        z_q = e_k

argmin has no gradient, so the decoder reads the straight-through estimate (``straight_through``)

    z_e + sg[z_q - z_e]        (forward: z_q; backward: dL/dz_e = dL/dz_q, the identity)

and the encoder is held near its codes by the commitment term beta ||z_e - sg[z_q]||^2 (the model's).

The codebook gets no gradient. Each code moves to the running mean of the encoder outputs assigned to it,
an online k-means step: with n_i assignments to code i in the batch and s_i the sum of those z_e,

    N_i <- gamma N_i + (1 - gamma) n_i          (``ema_counts``: a running count of assignments)
    m_i <- gamma m_i + (1 - gamma) s_i          (``ema_sums``: their running sum)
    e_i  = m_i / N~_i,   N~_i = (N_i + eps) / (n + K eps) * n,   n = sum_i N_i

N~ is N Laplace-smoothed (the sum n is kept), so that a code nobody chose lately divides by no zero.

Why EMA rather than the paper's codebook loss ||sg[z_e] - e||^2: there is no codebook-loss weight or
codebook learning rate to tune (the update is the k-means mean, whatever the optimizer does); the codes
move smoothly at a rate set by gamma, not by Adam's normalised steps, which van den Oord et al. and Razavi
et al. report trains faster and more stably; and a code's update does not depend on the size of its
gradient, so fewer codes fall behind and die.

Starting values: N_i = 1 and m_i = e_i, so that e = m / N~ holds from the first batch. (Starting from N = 0
would divide an unused code's decayed m_i by N~ ~ eps and throw it far from the data.)

A code that wins no vector for many batches is dead: it no longer learns and wastes a slot.
``revive`` resets such codes to encoder outputs of the current batch (see ``EMAVectorQuantizer.revive``).
A code never chosen at all counts as dead from the start, so the first training batch replaces every
random initial code that no vector picked by an encoder output: a data-dependent initialisation by the
same rule (the random N(0, I) codes sit far from a fresh encoder's outputs, which would otherwise all
pick one code for the first ``after`` batches).

Under DDP (``torch.distributed`` initialised) the per-code counts n_i and sums s_i are all-reduced before the
update and revived codes are broadcast from rank 0, so every process keeps the same codebook.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gen.errors import check_range
from lightning_gen.losses.precision import float32_region

NEVER_USED = 2**62  # ``unused_batches`` of a code that no vector has chosen yet: more than any ``after``


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def straight_through(z_e: Tensor, z_q: Tensor) -> Tensor:
    """z_q in the forward pass, the identity to z_e in the backward pass: z_e + sg[z_q - z_e]."""
    return z_e + (z_q - z_e).detach()


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the code usage ``counts`` ``[K]``: K when every code is used equally, 1 for one code."""
    p = counts.float() / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())


class EMAVectorQuantizer(nn.Module):
    """A codebook of ``num_codes`` vectors of ``code_dim``, updated by EMA (``update``), never by gradients.

    Buffers (in the state dict, so checkpoints carry them): ``codebook`` ``[K, D]``, ``ema_counts`` ``[K]``
    and ``ema_sums`` ``[K, D]`` (the EMA statistics), ``unused_batches`` ``[K]`` (training batches since each
    code was last chosen). The quantiser itself never updates them in ``forward``: the model calls
    ``update`` (and ``revive``) from its training step only, so evaluation leaves the codebook as it is.

    Args:
        decay: gamma of the moving averages (0.99: a memory of about 100 batches).
        epsilon: the Laplace smoothing of the counts.
    """

    def __init__(self, num_codes: int, code_dim: int, decay: float = 0.99, epsilon: float = 1e-5):
        super().__init__()
        check_range(at_least=1, num_codes=num_codes, code_dim=code_dim)
        check_range(at_least=0, below=1, decay=decay)
        check_range(above=0, epsilon=epsilon)
        self.num_codes, self.code_dim, self.decay, self.epsilon = num_codes, code_dim, decay, epsilon
        codebook = torch.randn(num_codes, code_dim)
        self.register_buffer("codebook", codebook)  # (K, D)
        self.register_buffer("ema_counts", torch.ones(num_codes))  # (K,)
        self.register_buffer("ema_sums", codebook.clone())  # (K, D)
        # (K,): a code no vector has chosen yet counts as unused for ever (see ``revive``)
        self.register_buffer("unused_batches", torch.full((num_codes,), NEVER_USED, dtype=torch.long))

    @float32_region
    def nearest(self, z: Tensor) -> Tensor:
        """Indices of the nearest codes, ``[N, h, w]`` long, for vectors ``z`` ``[N, D, h, w]``."""
        flat = z.movedim(1, -1).reshape(-1, self.code_dim)  # (N*h*w, D)
        codebook = self.codebook.to(flat.dtype)  # float32 (or float64): the region casts 16-bit z up
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every code, so it is left out
        distances = (codebook * codebook).sum(1) - 2 * flat @ codebook.T  # (N*h*w, K)
        return distances.argmin(1).view(z.shape[0], *z.shape[2:])

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors ``[N, D, h, w]`` of indices ``[N, h, w]``."""
        return F.embedding(indices, self.codebook).movedim(-1, 1)

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codes of ``z_e`` ``[N, D, h, w]``: (indices ``[N, h, w]``, z_q ``[N, D, h, w]``, no gradient)."""
        indices = self.nearest(z_e)
        return indices, self.lookup(indices)

    @torch.no_grad()
    def update(self, z_e: Tensor, indices: Tensor) -> Tensor:
        """One EMA step of the codebook towards the means of the vectors assigned to each code (the module
        docstring's equations). ``z_e`` ``[N, D, h, w]``, ``indices`` ``[N, h, w]`` its nearest codes.
        Returns the batch's counts n_i ``[K]`` (over every process under DDP)."""
        flat = z_e.movedim(1, -1).reshape(-1, self.code_dim).to(self.ema_sums.dtype)  # (M, D)
        indices = indices.reshape(-1)  # (M,)
        counts = torch.bincount(indices, minlength=self.num_codes).to(self.ema_counts.dtype)  # n_i, (K,)
        sums = torch.zeros_like(self.ema_sums).index_add_(0, indices, flat)  # s_i, (K, D)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_counts.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sums.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_counts.sum()
        smoothed = (self.ema_counts + self.epsilon) / (total + self.num_codes * self.epsilon) * total  # N~_i
        self.codebook.copy_(self.ema_sums / smoothed.unsqueeze(1))
        self.unused_batches.add_(1).masked_fill_(counts > 0, 0)
        return counts

    def dead_codes(self, after: int) -> Tensor:
        """Indices of the codes chosen by no vector in the last ``after`` training batches."""
        return (self.unused_batches >= after).nonzero().squeeze(1)

    @torch.no_grad()
    def revive(self, z_e: Tensor, after: int, generator: torch.Generator | None = None) -> int:
        """Reset every code unused for ``after`` batches to an encoder output of the current batch.

        The rule: each dead code becomes a distinct vector of ``z_e`` ``[N, D, h, w]`` drawn uniformly with
        ``generator`` (with replacement only if the batch has fewer vectors than dead codes); its EMA sum
        becomes that vector and its EMA count 1, so that e = m / N~ is the vector, and its unused counter
        restarts. Sitting on the data, it wins the vectors nearest to it and learns again. Under DDP the
        chosen vectors are rank 0's (broadcast), so the codebooks stay equal. Returns how many were reset.
        """
        dead = self.dead_codes(after)
        if len(dead) == 0:
            return 0
        flat = z_e.movedim(1, -1).reshape(-1, self.code_dim).to(self.codebook.dtype)  # (M, D)
        if len(flat) >= len(dead):
            rows = torch.randperm(len(flat), generator=generator, device=flat.device)[: len(dead)]
        else:
            rows = torch.randint(len(flat), (len(dead),), generator=generator, device=flat.device)
        vectors = flat[rows].contiguous()  # (dead, D)
        if _distributed():
            dist.broadcast(vectors, src=0)
        self.codebook[dead] = vectors
        self.ema_sums[dead] = vectors
        self.ema_counts[dead] = 1.0
        self.unused_batches[dead] = 0
        return len(dead)
