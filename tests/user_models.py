"""Models written the way users write them: their own classes around layers shaped like upstream
``pom``'s (same constructors, attributes and parameter names), in plain PyTorch. pom-deploy
has no export config for any of them. An importable module, so that pickled copies load."""

import torch
import torch.nn as nn
import torch.nn.functional as F


def pom_activation(x):
    """Upstream v2's activation, written as upstream writes it: an int upper bound."""
    return torch.clamp(F.leaky_relu(x, 0.01), min=-0.1, max=6)


class PoM(nn.Module):
    """Upstream v2 generation: ``PoM(dim, degree, expand, n_groups, n_sel_heads, bias=False)``
    (one group, one selection head here), ``mask="causal"`` for a causal LM."""

    def __init__(self, dim, degree, expand, n_groups=1, n_sel_heads=1, bias=False):
        super().__init__()
        self.dim, self.order, self.order_expand, self.n_groups, self.n_sel_heads = dim, degree, expand, n_groups, n_sel_heads
        width = expand * dim
        self.qc_proj = nn.Linear(dim, 2 * width, bias=False)
        self.se_bias = nn.Parameter(0.1 * torch.randn(width))
        self.po_coeff = nn.Parameter(torch.rand(width, degree) - 0.5)
        self.ag_proj = nn.Linear(width, dim, bias=bias)

    def forward(self, xq, xc=None, mask=None):
        xc = xq if xc is None else xc
        width = self.order_expand * self.dim
        h = pom_activation(xc @ self.qc_proj.weight[:width].t())
        s = F.hardsigmoid(xq @ self.qc_proj.weight[width:].t() + self.se_bias)
        features = sum(self.po_coeff[:, k] * h ** (k + 1) for k in range(self.order))
        if mask == "causal":
            context = features.cumsum(1) / torch.arange(1, features.shape[1] + 1).view(1, -1, 1)
        else:
            context = features.mean(1, keepdim=True)
        return self.ag_proj(s * context)


class PoMv1(nn.Module):
    """Upstream v1 generation: ``PoM(dim, degree, expand, bias=True)``."""

    def __init__(self, dim, degree, expand, bias=True):
        super().__init__()
        self.dim, self.order, self.order_expand = dim, degree, expand
        width = degree * expand * dim
        self.po_proj = nn.Linear(dim, width, bias=bias)
        self.se_proj = nn.Linear(dim, width, bias=bias)
        self.ag_proj = nn.Linear(width, dim, bias=bias)

    def forward(self, xq, xc=None, mask=None):
        xc = xq if xc is None else xc
        chunks = list(F.gelu(self.po_proj(xc)).chunk(self.order, dim=-1))
        for k in range(1, self.order):
            chunks[k] = chunks[k] * chunks[k - 1]
        context = torch.cat(chunks, dim=-1).mean(1, keepdim=True)
        return self.ag_proj(torch.sigmoid(self.se_proj(xq)) * context)


class Block(nn.Module):
    def __init__(self, mixer, dim):
        super().__init__()
        self.norm, self.mixer = nn.LayerNorm(dim), mixer
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, causal=False):
        x = x + self.mixer(self.norm(x), mask="causal" if causal else None)
        return x + self.mlp(x)


class TokenLM(nn.Module):
    """Causal token LM: int64 ids -> nn.Embedding -> PoM blocks (mask="causal") -> logits."""

    def __init__(self, vocab=50, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([Block(PoM(dim, 2, 2), dim), Block(PoM(dim, 3, 1), dim)])
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h, causal=True)
        return self.head(h)


class ImageClassifier(nn.Module):
    """(B, 3, H, W) -> Conv2d patches -> PoM block -> mean pool -> logits."""

    def __init__(self, dim=16, patch=4, classes=10):
        super().__init__()
        self.patches = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.block = Block(PoM(dim, 2, 2), dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, image):
        x = self.patches(image).flatten(2).transpose(1, 2)
        return self.head(self.block(x).mean(dim=1))


class CondNet(nn.Module):
    """Two inputs: tokens and an adaLN-style conditioning vector, ``forward(x, cond)``."""

    def __init__(self, in_dim=12, cond_dim=8, dim=16):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.modulation = nn.Linear(cond_dim, 2 * dim)
        self.block = Block(PoMv1(dim, 2, 1), dim)

    def forward(self, x, cond):
        scale, shift = self.modulation(cond).unsqueeze(1).chunk(2, dim=-1)
        return self.block(self.proj(x) * (1 + scale) + shift)


class ScaledNet(nn.Module):
    """A second input that only scales: no layer tells its shape (the reader cannot decide)."""

    def __init__(self, dim=8):
        super().__init__()
        self.mixer = PoM(dim, 2, 1)

    def forward(self, x, gain):
        return self.mixer(x) * gain


class ContextNet(nn.Module):
    """A second input that is a token sequence, not a vector: read as (batch, features), wrongly."""

    def __init__(self, dim=8):
        super().__init__()
        self.proj, self.mixer = nn.Linear(dim, dim), PoM(dim, 2, 1)

    def forward(self, x, context):
        return self.mixer(x + self.proj(context).flatten(1).unflatten(1, x.shape[1:]))
