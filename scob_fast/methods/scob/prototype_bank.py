"""Per-class bank of the K most confident momentum features of distinct images.

Slots of each class are kept sorted by confidence (descending, earlier insertions first among
ties), empty slots hold confidence -inf and image index -1. `update_sequential` is the reference
(one image at a time, the published min-heap semantics: insert while the class has room, else
replace the least confident if strictly beaten; an image already stored is skipped);
`update` is the vectorised equivalent used by the fast engine. Both take an optional `keep` mask:
rows where it is False are not offered to the bank (the public code skips a sample whose momentum
feature is NaN, main.py line 363, which --published-bank reproduces).

The public bank (main.py class IPT) is a min-heap of (confidence, image id) per class, so among equal
confidences it prefers the larger image id where this one keeps the earlier insertion; with float
confidences from a sigmoid such ties do not occur in practice.
"""
from __future__ import annotations

import torch
from torch import nn


class PrototypeBank(nn.Module):
    """The bank's slots are buffers: they follow `.to(device)` and sit in the method's state_dict."""

    def __init__(self, num_classes: int, capacity: int, dim: int, device=None, dtype=torch.float32):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"PrototypeBank: capacity must be >= 1, got {capacity}")
        self.num_classes, self.capacity, self.dim = num_classes, capacity, dim
        self.register_buffer("features", torch.zeros(num_classes, capacity, dim, device=device, dtype=dtype))
        self.register_buffer("confidence", torch.full((num_classes, capacity), float("-inf"), device=device))
        self.register_buffer("image_index", torch.full((num_classes, capacity), -1, dtype=torch.long, device=device))

    def clear(self) -> None:
        self.features.zero_()
        self.confidence.fill_(float("-inf"))
        self.image_index.fill_(-1)

    def _check(self, features, labels, confidence, image_index, keep=None):
        b = features.shape[0]
        if features.shape != (b, self.dim):
            raise ValueError(f"PrototypeBank: features must be [B, {self.dim}], got {tuple(features.shape)}")
        for name, t in (("labels", labels), ("confidence", confidence), ("image_index", image_index), ("keep", keep)):
            if t is not None and t.shape != (b,):
                raise ValueError(f"PrototypeBank: {name} must be [{b}], got {tuple(t.shape)}")

    @torch.no_grad()
    def update_sequential(self, features, labels, confidence, image_index, keep=None) -> None:
        self._check(features, labels, confidence, image_index, keep)
        for b in range(features.shape[0]):
            if keep is not None and not bool(keep[b]):
                continue
            c, conf, img = int(labels[b]), float(confidence[b]), int(image_index[b])
            stored = self.image_index[c]
            if bool((stored == img).any()):
                continue
            filled = int((stored >= 0).sum())
            if filled == self.capacity:
                if not conf > float(self.confidence[c, -1]):
                    continue
                filled -= 1  # the least confident slot (last) is dropped
            # insert after every slot whose confidence is >= conf (earlier insertions win ties)
            position = int((self.confidence[c, :filled] >= conf).sum())
            self.features[c, position + 1:filled + 1] = self.features[c, position:filled].clone()
            self.confidence[c, position + 1:filled + 1] = self.confidence[c, position:filled].clone()
            self.image_index[c, position + 1:filled + 1] = self.image_index[c, position:filled].clone()
            self.features[c, position] = features[b].to(self.features.dtype)
            self.confidence[c, position] = conf
            self.image_index[c, position] = img

    @torch.no_grad()
    def update(self, features, labels, confidence, image_index, keep=None) -> None:
        self._check(features, labels, confidence, image_index, keep)
        b, q, device = features.shape[0], self.capacity, self.features.device
        labels = labels.to(device=device, dtype=torch.long)
        image_index = image_index.to(device=device, dtype=torch.long)
        confidence = confidence.to(device=device, dtype=self.confidence.dtype)
        # Skip images already stored in their class, and repeats of an (image, class) within the batch.
        offered = (torch.ones(b, dtype=torch.bool, device=device) if keep is None
                   else keep.to(device=device, dtype=torch.bool))
        already = (self.image_index[labels] == image_index[:, None]).any(dim=1)
        same = (labels[:, None] == labels[None, :]) & (image_index[:, None] == image_index[None, :]) & offered[None, :]
        earlier_repeat = torch.tril(same, diagonal=-1).any(dim=1)
        valid = offered & ~(already | earlier_repeat)
        new_conf = torch.full((self.num_classes, b), float("-inf"), device=device)
        columns = torch.arange(b, device=device)
        new_conf[labels[valid], columns[valid]] = confidence[valid]
        all_conf = torch.cat([self.confidence, new_conf], dim=1)              # [C, Q + B]
        # Stable descending sort keeps stored slots (and earlier batch items) ahead on ties, which is
        # what strict-improvement replacement in the sequential version does.
        order = torch.sort(all_conf, dim=1, descending=True, stable=True).indices[:, :q]
        new_features = features.to(self.features.dtype)[None].expand(self.num_classes, b, self.dim)
        all_features = torch.cat([self.features, new_features], dim=1)
        all_index = torch.cat([self.image_index, image_index[None].expand(self.num_classes, b)], dim=1)
        self.confidence = torch.gather(all_conf, 1, order)
        self.image_index = torch.gather(all_index, 1, order)
        self.features = torch.gather(all_features, 1, order[..., None].expand(-1, -1, self.dim))
        self.image_index[torch.isinf(self.confidence)] = -1

    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The most confident stored feature per class [C, D] and whether the class has one [C]."""
        return self.features[:, 0], self.image_index[:, 0] >= 0
