"""Segmenter (Strudel et al., ICCV 2021), the baseline MLSeg builds on: a ViT's patch tokens classified by a
mask-transformer decoder over all K class embeddings."""

from __future__ import annotations

from segcentroids.methods.base import Baseline
from segcentroids.nn.multilabel import SelectedLabelClassifier


class Segmenter(Baseline):
    """Segmenter (Strudel et al. 2021): the SegModel's features (a ViT with arch `identity`) classified by the
    mask-transformer decoder over all K learnable class embeddings, with the per-class LayerNorm on the scores."""

    def __init__(self, embed_dim: int | None = None, num_layers: int = 2, num_heads: int = 12,
                 mlp_ratio: float = 4.0, decoder_dropout: float = 0.1, **kwargs) -> None:
        """
        Args:
            embed_dim: width of the decoder tokens (None: the SegModel's `out_channels`, 768 for ViT-B).
            num_layers, num_heads, mlp_ratio, decoder_dropout: the decoder's transformer blocks (paper: 2, 12, 4, 0.1).
        """
        super().__init__(**kwargs)

    def build_classifier(self) -> SelectedLabelClassifier:
        """The mask-transformer decoder over all K class embeddings."""
        channels, args = self.segmodel.out_channels, self.hparams
        return SelectedLabelClassifier(
            channels, self.num_classes, self.num_classes, "mask_transformer", "layernorm",
            embed_dim=args.embed_dim or channels, class_embed=True, num_layers=args.num_layers,
            num_heads=args.num_heads, mlp_ratio=args.mlp_ratio, dropout=args.decoder_dropout,
        )
