"""The Perceiver resampler each stream uses: diffusers' IP-Adapter-Plus projection, named here.

It compresses ``T`` encoder tokens (1024 DINOv2 tokens in the paper) into ``num_tokens`` (32) tokens
of the UNet's cross-attention width (768 for SD1.5). The paper does not publish its depth or
heads; the defaults are IP-Adapter-Plus's SD1.5 values, which diffusers' IP-Adapter weight
converter also requires (depth 4, dim_head 64, ffn ratio 4) for the export to load.
"""

from __future__ import annotations

from diffusers.models.embeddings import IPAdapterPlusImageProjection

from metamergen.defaults import NUM_TOKENS

__all__ = ["build_resampler"]


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
) -> IPAdapterPlusImageProjection:
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
    return IPAdapterPlusImageProjection(
        embed_dims=image_embed_dim,
        output_dims=cross_attention_dim,
        hidden_dims=hidden_dim,
        depth=depth,
        dim_head=dim_head,
        heads=heads,
        num_queries=num_tokens,
        ffn_ratio=ffn_ratio,
    )
