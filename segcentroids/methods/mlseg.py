"""MLSeg (He et al.): multi-label image classification + selected-label pixel classification (its Segmenter
baseline: `segcentroids.methods.segmenter`).

Joint multi-task scheme (Sec. 3.3): a multi-label head xi on the shared features predicts which classes are present
(Eq. 1, trained with the asymmetric loss); the top-kappa classes are selected (Eq. 2); the pixel classifier psi only
chooses among them, with a temperature per rank (Eq. 3). Outputs are K-channel logits with the unselected classes far
below the selected ones, so the shared inference, metrics and prediction path are unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from segcentroids.inference import infer
from segcentroids.losses.asymmetric import AsymmetricLoss
from segcentroids.methods.base import Baseline, MethodScores, ParamGroupRule
from segcentroids.methods.multilabel_classifier import load_selector
from segcentroids.metrics import MultilabelMAP
from segcentroids.nn.multilabel import MultiLabelHead, SelectedLabelClassifier
from segcentroids.ops.selection import (
    labels_to_ranks,
    multi_hot_labels,
    scatter_to_classes,
    select_top_labels,
    suppress_classes,
)


class MLSeg(Baseline):
    """MLSeg joint multi-task scheme on any SegModel.

    Loss: `ce` (cross-entropy over the selected labels, ground truth re-indexed to ranks, unselected classes
    ignored) + `multilabel_weight * multilabel` (asymmetric loss on the image-level labels).

    Table 1 switches: `multi_task` (MT: the multi-label head and its loss), `label_selection` (LS: sort and keep
    the top-kappa classes; off = all K classes in class order), `rank_temperature` (RA: `layernorm`, RA off:
    `shared`, the same standardisation with one weight and bias; or Eq. 3's `per_rank`, RA off: `shared_scale`).
    Oracle options (Fig. 3): `oracle_train` / `oracle_eval` restrict the pixel classifier to the classes present in
    the ground truth during training / validation and test (under every inference mode).
    """

    def __init__(
        self,
        kappa: int = 50,
        multilabel_weight: float = 10.0,
        multi_task: bool = True,
        label_selection: bool = True,
        multilabel_head: Literal["tran_enc", "tran_dec", "gap_linear"] = "tran_enc",
        classifier: Literal["mask_transformer", "linear"] = "mask_transformer",
        rank_temperature: Literal["layernorm", "shared", "per_rank", "shared_scale"] = "layernorm",
        multilabel_input: Literal["decoder", "encoder_last"] = "decoder",
        oracle_train: bool = False,
        oracle_eval: bool = False,
        embed_dim: int | None = None,
        num_layers: int = 2,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        pool_size: int = 8,
        decoder_dropout: float = 0.1,
        gamma_neg: float = 2.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        temperature_init: float = 0.1,
        multilabel_decay_mult: float = 100.0,
        selector_ckpt: str | None = None,
        **kwargs,
    ) -> None:
        """
        Args:
            kappa: number of selected classes (paper: 50 ADE20K / COCO-Stuff, 25 Pascal-Context); clamped to K.
            multilabel_weight: weight of the asymmetric multi-label loss (paper: 10 ADE20K / COCO-Stuff, 5
                Pascal-Context).
            multi_task: MT, the multi-label head xi and its loss. Off: psi uses its own class embeddings.
            label_selection: LS, pixel classification over the top-kappa classes in rank order (needs MT).
            multilabel_head: xi, `tran_enc` | `tran_dec` | `gap_linear` (Table 6).
            classifier: psi, `mask_transformer` (Segmenter) | `linear` (DeepLabV3-style models).
            rank_temperature: `layernorm` (authors' code: per-pixel standardisation, per-rank weight and bias) |
                `shared` (RA off: the same standardisation, one weight and bias for every rank) | `per_rank`
                (Eq. 3: score / tau_k) | `shared_scale` (RA off of `per_rank`: score / tau, one tau).
            multilabel_input: what xi reads: `decoder` (the SegModel's decoder output, also psi's input; Segmenter)
                or `encoder_last` (the backbone's last stage, as the authors' DeepLabV3 code does).
            oracle_train, oracle_eval: restrict psi to the ground-truth classes in training / evaluation.
            embed_dim: token width of xi and the mask transformer (None: the SegModel's `out_channels`).
            num_layers, num_heads, mlp_ratio, decoder_dropout: psi's transformer blocks (mask_transformer); heads
                and ratio also size xi's block(s). `decoder_dropout` is the dropout of the linear psi too.
            pool_size: side of the pooled grid xi reads (authors: 8).
            gamma_neg, gamma_pos, clip: the asymmetric loss (authors' ADE20K config: 2, 0, 0.05).
            temperature_init: initial tau of the `per_rank` / `shared` temperatures.
            multilabel_decay_mult: weight-decay multiplier on xi's parameters (authors: 100).
            selector_ckpt: independent single-task scheme (Tables 2-3): a `MultiLabelClassifier` checkpoint whose
                frozen scores on the same images replace xi's for the selection (Eq. 2) in training and
                evaluation; needs `multi_task=False` (no xi, no multi-label loss). Held as `selector` (frozen,
                eval mode, in no optimiser group; its weights are saved in this model's checkpoints, and the file
                is read again whenever the model is built).
        """
        super().__init__(**kwargs)
        if kappa < 1:
            raise ValueError(f"kappa must be >= 1, got {kappa}")
        if multilabel_weight < 0:
            raise ValueError(f"multilabel_weight must be >= 0, got {multilabel_weight}")
        if selector_ckpt is not None and multi_task:
            raise ValueError("selector_ckpt: the frozen classifier replaces the multi-label head xi (independent "
                             "scheme): set multi_task=False")
        if label_selection and not multi_task and selector_ckpt is None:
            raise ValueError("label_selection=True ranks classes by the multi-label scores: it needs multi_task=True "
                             "or a selector_ckpt")
        self.kappa = min(kappa, self.num_classes)
        self.label_selection = label_selection
        self.oracle_train = oracle_train
        self.oracle_eval = oracle_eval
        if multilabel_input not in ("decoder", "encoder_last"):
            raise ValueError(f"multilabel_input must be 'decoder' or 'encoder_last', got {multilabel_input!r}")
        self.multilabel_input = multilabel_input
        channels = self.segmodel.out_channels
        multilabel_channels = channels if multilabel_input == "decoder" else self.segmodel.encoder_channels[-1]
        embed_dim = embed_dim or channels
        self.multilabel_head = (
            MultiLabelHead(multilabel_channels, self.num_classes, embed_dim, multilabel_head, pool_size, num_heads,
                           mlp_ratio, class_tokens=classifier == "mask_transformer")
            if multi_task else None
        )
        self.selected_classifier = SelectedLabelClassifier(
            channels, self.num_classes, self.kappa if label_selection else self.num_classes, classifier,
            rank_temperature, embed_dim=embed_dim, class_embed=not multi_task, num_layers=num_layers,
            num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=decoder_dropout, temperature_init=temperature_init,
        )
        self.multilabel_loss = AsymmetricLoss(gamma_neg, gamma_pos, clip)
        self.loss_weights["multilabel"] = multilabel_weight
        self.param_group_rules += [
            ParamGroupRule("multilabel_head", decay_mult=multilabel_decay_mult),
            ParamGroupRule("selected_classifier.temperature", decay_mult=0.0),
        ]
        # independent scheme: the frozen classifier's scores select the classes (multilabel_decay_mult is unused)
        self.selector = load_selector(selector_ckpt, self.num_classes) if selector_ckpt is not None else None
        self.multilabel_metrics = nn.ModuleDict({
            split: nn.ModuleDict({
                "mAP": MultilabelMAP(self.num_classes),
                "recall_at_kappa": MeanMetric(),
                "pixel_recall_at_kappa": MeanMetric(),
            }) for split in ("val", "test")
        }) if multi_task or self.selector is not None else None

    # ----------------------------------------------------------------------------------------------- the model
    def select_and_classify(self, features: Tensor, oracle_targets: Tensor | None = None,
                            multilabel_features: Tensor | None = None, selector_scores: Tensor | None = None
                            ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Rank logits `[B, k, h, w]`, the selected classes `[B, k]` (None: all K in class order) and the
        multi-label logits `[B, K]` (None without MT). `oracle_targets [B, K]` (multi-hot) keep only those classes.
        xi reads `multilabel_features` (default: `features`, psi's input). `selector_scores [B, K]`: the frozen
        selector's logits (independent scheme), used in place of xi's."""
        scores, class_tokens, selected = selector_scores, None, None
        if self.multilabel_head is not None:
            scores, class_tokens = self.multilabel_outputs(features if multilabel_features is None
                                                           else multilabel_features)
        if self.label_selection:
            if scores is None:  # a selector without its scores (the images) given
                raise ValueError("MLSeg with selector_ckpt selects by the selector's scores of the images: call "
                                 "head_outputs(extract_features(images)) (or forward), not classify(features)")
            ranking = scores.float()
            if oracle_targets is not None:  # ground-truth classes first, each group by predicted score
                ranking = oracle_targets + ranking.sigmoid()
            selected = select_top_labels(ranking, self.kappa)  # Eq. 2
        rank_logits = self.selected_classifier(features, selected, class_tokens)  # Eq. 3 (before the softmax)
        if oracle_targets is not None:
            keep = oracle_targets if selected is None else oracle_targets.gather(1, selected)
            rank_logits = suppress_classes(rank_logits, keep > 0)
        return rank_logits, selected, scores

    def multilabel_outputs(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """xi on the features: multi-label logits `[B, K]` and class tokens (hook: `MLSegVideo` shares them within
        a clip)."""
        return self.multilabel_head(features)

    def extract_features(self, images: Tensor) -> dict:
        """The SegModel's features and, with a selector, its logits on the same images (`selector_logits`)."""
        features = super().extract_features(images)
        if self.selector is not None:
            features = {**features, "selector_logits": self.selector(images)}
        return features

    def build_classifier(self) -> None:
        """None: the selected-label classifier psi (`selected_classifier`) replaces the plain classifier."""
        return None

    def _class_logits(self, rank_logits: Tensor, selected: Tensor | None) -> Tensor:
        return rank_logits if selected is None else scatter_to_classes(rank_logits, selected, self.num_classes)

    def classify(self, features: Tensor) -> Tensor:
        """K-channel logits; unselected classes sit far below every selected one (xi reading the decoder)."""
        if self.multilabel_head is not None and self.multilabel_input != "decoder":
            raise ValueError("MLSeg.classify(decoder) has no encoder features for xi (multilabel_input="
                             f"{self.multilabel_input!r}): use head_outputs(segmodel(images))")
        rank_logits, selected, _ = self.select_and_classify(features)
        return self._class_logits(rank_logits, selected)

    def head_outputs(self, features: dict, labels: Tensor | None = None) -> dict[str, Tensor]:
        """`logits` over K classes (unselected classes far below every selected one), the `rank_logits` psi
        scored, the `selected` classes and the `multilabel_logits` (with MT). With labels and an oracle switched on
        for the current mode, psi keeps only the ground-truth classes."""
        oracle = self.oracle_train if self.training else self.oracle_eval
        targets = multi_hot_labels(labels, self.num_classes, self.ignore_index) if oracle and labels is not None \
            else None
        return self._head_outputs(features, targets)

    def _multilabel_features(self, features: dict) -> Tensor:
        """What xi reads: the decoder output or the backbone's last stage (`multilabel_input`)."""
        return features["decoder"] if self.multilabel_input == "decoder" else features["encoder"][-1]

    def _head_outputs(self, features: dict, oracle_targets: Tensor | None) -> dict[str, Tensor]:
        """`head_outputs` with psi restricted to the classes of `oracle_targets [B, K]` (multi-hot; None: no
        oracle)."""
        # xi's own input only when it is not psi's (a subclass overriding select_and_classify(features, oracle)
        # keeps working with the default `decoder`)
        extra = {} if self.multilabel_input == "decoder" else {"multilabel_features": features["encoder"][-1]}
        rank_logits, selected, scores = self.select_and_classify(features["decoder"], oracle_targets,
                                                                 selector_scores=features.get("selector_logits"),
                                                                 **extra)
        outputs = {"decoder": features["decoder"], "rank_logits": rank_logits,
                   "logits": self._class_logits(rank_logits, selected)}
        if selected is not None:
            outputs["selected"] = selected
        if scores is not None:
            outputs["multilabel_logits"] = scores
        return outputs

    def multilabel_scores(self, images: Tensor) -> Tensor:
        """Multi-label logits `[B, K]` of xi (needs `multi_task`), or of the frozen selector."""
        if self.selector is not None:
            return self.selector(images)
        if self.multilabel_head is None:
            raise ValueError("multilabel_scores needs multi_task=True")
        return self.multilabel_outputs(self._multilabel_features(self.segmodel(images)))[0]

    def method_losses(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """`ce` over the selected labels (ground truth re-indexed to ranks, unselected classes ignored) and the
        asymmetric `multilabel` loss on the image-level labels (with MT)."""
        selected = outputs.get("selected")
        rank_labels = labels if selected is None else labels_to_ranks(labels, selected, self.num_classes,
                                                                       self.ignore_index)
        losses = {"ce": self.seg_loss(outputs["rank_logits"], rank_labels)}
        if "multilabel_logits" in outputs and self.multilabel_head is not None:  # not the frozen selector's
            targets = multi_hot_labels(labels, self.num_classes, self.ignore_index)
            losses["multilabel"] = self.multilabel_loss(outputs["multilabel_logits"], targets)
        return losses

    # --------------------------------------------------------------------------------------------- evaluation
    def predict_labels(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """`predict`: with one plain whole-image forward and label selection, the kappa rank maps are resized and
        each pixel's best rank mapped to its class (no K-class logits at the image size); else the Baseline's."""
        if not (self.label_selection and self.inference.mode == "whole" and not self.inference.augmented):
            return super().predict_labels(images, size)
        selections: list[Tensor] = []

        def rank_logits(chunk: Tensor) -> Tensor:
            outputs = self._head_outputs(self.extract_features(chunk), None)
            selections.append(outputs["selected"])
            return outputs["rank_logits"]

        best_rank = infer(rank_logits, images, size, self.inference).argmax(dim=1)
        return torch.cat(selections).gather(1, best_rank.flatten(1)).view_as(best_rank)

    def evaluation_outputs(self, images: Tensor, labels: Tensor, split: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Predictions under the test-time protocol and, with MT, the batch's `multilabel_logits`: those of the
        inference forward when it is one plain whole-image forward per image, else of one more forward. With
        `oracle_eval` every input of the protocol (whole image, slide window, scaled or flipped view) keeps the
        classes of its own image's ground truth: `infer` tells which image each input row comes from.

        One plain whole-image forward with label selection resizes only the kappa rank maps to the label size and
        maps each pixel's best rank to its class (the K-class logits at the label size are never made); any other
        protocol averages K-class logits, whose argmax is the same class where both apply."""
        scores: list[Tensor] = []
        selections: list[Tensor] = []
        targets = multi_hot_labels(labels, self.num_classes, self.ignore_index) if self.oracle_eval else None
        one_forward = self.inference.mode == "whole" and not self.inference.augmented
        in_ranks = one_forward and self.label_selection

        def logits_of(chunk: Tensor, image_ids: Tensor | None = None) -> Tensor:
            oracle = None if targets is None else targets[image_ids]
            outputs = self._head_outputs(self.extract_features(chunk), oracle)
            if "multilabel_logits" in outputs:
                scores.append(outputs["multilabel_logits"])
            if in_ranks:
                selections.append(outputs["selected"])
                return outputs["rank_logits"]
            return outputs["logits"]

        logits = infer(logits_of, images, tuple(labels.shape[-2:]), self.inference, with_image_ids=self.oracle_eval)
        preds = logits.argmax(dim=1)
        if in_ranks:  # best rank -> its class
            preds = torch.cat(selections).gather(1, preds.flatten(1)).view_as(preds)
        if self.multilabel_metrics is None:
            return preds, {}
        multilabel = torch.cat(scores) if one_forward else self.multilabel_scores(images)
        return preds, {"multilabel_logits": multilabel.float()}

    def update_method_metrics(self, split: str, labels: Tensor, outputs: dict[str, Tensor]) -> None:
        """Multi-label mAP, recall of the ground-truth classes within the top-kappa (per class occurrence) and
        the fraction of labelled pixels whose class is selected."""
        if self.multilabel_metrics is None:
            return
        scores = outputs["multilabel_logits"]
        targets = multi_hot_labels(labels, self.num_classes, self.ignore_index)
        selected = select_top_labels(scores, self.kappa)
        hits = targets.gather(1, selected).sum(dim=1)
        present = targets.sum(dim=1)
        valid = (labels != self.ignore_index).flatten(1).sum(dim=1).float()
        kept = (labels_to_ranks(labels, selected, self.num_classes, self.ignore_index) != self.ignore_index)
        metrics = self.multilabel_metrics[split]
        metrics["mAP"].update(scores, targets)
        metrics["recall_at_kappa"].update(hits / present.clamp_min(1), present)
        metrics["pixel_recall_at_kappa"].update(kept.flatten(1).sum(dim=1) / valid.clamp_min(1), valid)

    def method_scores(self, split: str) -> MethodScores | None:
        """`multilabel_mAP` over the classes present in the split, `recall_at_kappa`, `pixel_recall_at_kappa` (%)."""
        if self.multilabel_metrics is None:
            return None
        metrics = self.multilabel_metrics[split]
        if metrics["recall_at_kappa"].update_count == 0:  # nothing evaluated (e.g. no validation batch)
            return None
        scalars = {"multilabel_mAP": metrics["mAP"].compute()}  # over the classes present in the split
        for name in ("recall_at_kappa", "pixel_recall_at_kappa"):
            scalars[name] = metrics[name].compute() * 100
        for metric in metrics.values():
            metric.reset()
        return MethodScores(scalars)
