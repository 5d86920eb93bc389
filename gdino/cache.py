"""Reuse Grounding DINO's image and text features across passes, caption chunks and images.

A multi-pass, multi-chunk labeling run calls the detector once per (batch of images, caption). The
Swin backbone's output depends only on the images and BERT's output only on the caption, so:

- between `begin(pixel_values, pixel_mask)` and `end()`, the backbone runs once on the whole batch, on
  first use, and every forward in between (any pass, any chunk, any subset of the images, chosen with
  `rows(...)`) takes its rows of those features;
- a caption (one row of token ids, the same for every image of a forward) is encoded once, on one row,
  and kept in a small LRU table, so it is not encoded again for each image, pass or batch.

The fusion encoder and the decoder depend on both and still run for every query. The cache hooks the
two sub-modules' `forward` on the instance: the weights and their names are untouched.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from transformers.modeling_outputs import BaseModelOutput


class FeatureCache:
    def __init__(self, detector: torch.nn.Module, max_captions: int = 64):
        model = detector.model  # GroundingDinoModel inside GroundingDinoForObjectDetection
        self.backbone, self.text_backbone = model.backbone, model.text_backbone
        self._backbone_forward = self.backbone.forward
        self._text_forward = self.text_backbone.forward
        self.backbone.forward = self._cached_backbone
        self.text_backbone.forward = self._cached_text
        self.max_captions = max_captions
        self.captions: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.features = None
        self.selected: Sequence[int] | None = None
        self.backbone_runs = self.text_runs = 0  # for tests and benchmarks

    def begin(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> None:
        """Until `end`, forwards over these images (or `rows` of them) share one backbone run."""
        self.batch, self.features, self.selected = (pixel_values, pixel_mask), None, None

    def end(self) -> None:
        self.batch = self.features = self.selected = None

    def rows(self, rows: Sequence[int]) -> None:
        """The images (indices into the block's batch) that the next forward is given."""
        self.selected = list(rows)

    def _cached_backbone(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
        if self.batch is None or self.selected is None or len(self.selected) != len(pixel_values):
            self.backbone_runs += 1
            return self._backbone_forward(pixel_values, pixel_mask)
        if self.features is None:
            self.backbone_runs += 1
            self.features = self._backbone_forward(*self.batch)
        rows = torch.tensor(self.selected, device=pixel_values.device)
        maps, positions = self.features
        # fresh lists: the model appends extra levels to them
        return [(f.index_select(0, rows), m.index_select(0, rows)) for f, m in maps], [
            p.index_select(0, rows) for p in positions
        ]

    def _cached_text(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, **kwargs):
        same = all(t is None or (t[:1] == t).all() for t in (input_ids, attention_mask, token_type_ids, position_ids))
        if not same:
            self.text_runs += 1
            return self._text_forward(input_ids, attention_mask, token_type_ids, position_ids, **kwargs)
        key = tuple(input_ids[0].tolist())
        hidden = self.captions.get(key)
        if hidden is None:
            self.text_runs += 1
            first = [None if t is None else t[:1] for t in (input_ids, attention_mask, token_type_ids, position_ids)]
            hidden = self._text_forward(*first, return_dict=True).last_hidden_state
            self.captions[key] = hidden
            while len(self.captions) > self.max_captions:
                self.captions.popitem(last=False)
        else:
            self.captions.move_to_end(key)
        return BaseModelOutput(last_hidden_state=hidden.expand(len(input_ids), *hidden.shape[1:]))
