"""The Perceiver resampler each stream uses: diffusers' IP-Adapter-Plus projection, named here.

It compresses ``T`` encoder tokens (1024 DINOv2 tokens in the paper) into ``num_tokens`` (32) tokens
of the UNet's cross-attention width (768 for SD1.5). The paper does not publish its depth or
heads; the defaults are IP-Adapter-Plus's SD1.5 values, which diffusers' IP-Adapter weight
converter also requires (depth 4, dim_head 64, ffn ratio 4) for the export to load.

Each resampler layer's learned queries attend over the encoder tokens *and* the queries. The
foveal stream's tokens are zeros outside the fovea, so with 1-10 fixations almost every key is the
same "empty" vector and the few fixated tokens get a tiny share of the attention. With
``key_mask`` (see :class:`~metamergen.adapters.MetamerGenAdapters`' ``mask_empty_tokens``) the
empty tokens are left out of the keys instead; the queries themselves are always attended to, so
an all-empty input (a dropped stream) is well defined.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import IPAdapterPlusImageProjection

from metamergen.defaults import NUM_TOKENS

__all__ = ["MaskedResampler", "build_resampler"]


class MaskedResampler(IPAdapterPlusImageProjection):
    """diffusers' IP-Adapter-Plus projection with an optional key mask over the input tokens.

    The weights and their names are diffusers' own, so saved adapters and the IP-Adapter export are
    unchanged; ``forward(x)`` without a mask is exactly the parent's.
    """

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, image_embed_dim)`` tokens -> ``(B, num_tokens, cross_attention_dim)``.

        Parameters
        ----------
        x
            Encoder tokens.
        key_mask
            ``(B, T)`` bool, True for tokens the queries may attend to; None = all of them.
        """
        if key_mask is None:
            return super().forward(x)
        batch, n_tokens = x.shape[0], x.shape[1]
        latents = self.latents.repeat(batch, 1, 1)
        x = self.proj_in(x)
        # additive bias over the keys [tokens; queries]: the queries are always kept, so no row is empty
        bias = torch.zeros(batch, 1, n_tokens + latents.shape[1], device=x.device, dtype=x.dtype)
        bias[:, 0, :n_tokens].masked_fill_(~key_mask.to(device=x.device, dtype=torch.bool), torch.finfo(x.dtype).min)
        for block in self.layers:  # the parent block's forward, plus the mask (diffusers' block takes none)
            residual = latents
            queries = block.ln1(latents)
            keys = torch.cat([block.ln0(x), queries], dim=-2)
            latents = block.attn(queries, keys, attention_mask=bias) + residual
            latents = block.ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def build_resampler(
    *,
    image_embed_dim: int = 768,
    cross_attention_dim: int = 768,
    num_tokens: int = NUM_TOKENS,
    hidden_dim: int = 768,
    depth: int = 4,
    heads: int = 12,
    dim_head: int = 64,
    ffn_ratio: float = 4.0,
) -> MaskedResampler:
    """One stream's resampler: ``(B, T, image_embed_dim)`` -> ``(B, num_tokens, cross_attention_dim)``.

    Parameters
    ----------
    image_embed_dim
        Width of the encoder's tokens (768 for DINOv2-Base).
    cross_attention_dim
        Output width: the UNet's cross-attention width (768 for SD1.5).
    num_tokens
        Learned queries, i.e. output tokens (32 in the paper).
    hidden_dim, depth, heads, dim_head, ffn_ratio
        Perceiver shape (IP-Adapter-Plus: 768, 4, 12, 64, 4).
    """
    return MaskedResampler(
        embed_dims=image_embed_dim,
        output_dims=cross_attention_dim,
        hidden_dims=hidden_dim,
        depth=depth,
        dim_head=dim_head,
        heads=heads,
        num_queries=num_tokens,
        ffn_ratio=ffn_ratio,
    )
