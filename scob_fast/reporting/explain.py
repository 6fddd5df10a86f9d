"""What a trained model looks at: Grad-CAM++ of chosen classes on the backbone's last feature level,
and for a method whose attention is masked by CAM keep masks (Scob) the kept tokens of both levels.

    maps = explain(method, images, classes)    # images [B, 3, S, S] as the loader gives them, classes [B, K]
    maps["cam"]         float [B, K, h, w] in [0, 1]
    maps["keep_low"]    bool [B, K, H_low, W_low]   (only for CAM-masked methods)
    maps["keep_high"]   bool [B, K, H_high, W_high]

Dispatch (no method is named here): a method that defines `explain(images, classes) -> dict` is
asked directly; otherwise the CAM is computed from the method's own prediction path
(`predict_from_features`, with its no-grad decorator removed) differentiated with respect to the
last level, with scob_fast.methods.scob.cam.grad_cam_plus_plus; a method whose config has
`cam_threshold` (it masks its attention with CAM keep masks) also gets them from `cam_keep_masks` at
that threshold, exactly as it computes them in training (there for its observed class, here for
each class asked).
"""
from __future__ import annotations

import inspect

import torch

from scob_fast.methods.scob.cam import cam_keep_masks, grad_cam_plus_plus


def cam_threshold(method) -> float | None:
    """The keep threshold of a method that masks its attention with CAM keep masks, else None."""
    value = getattr(getattr(method, "config", None), "cam_threshold", None)
    return None if value is None else float(value)


def _differentiable_predict(method):
    function = inspect.unwrap(type(method).predict_from_features)
    return lambda f_low, f_high: function(method, f_low, f_high)


def grad_cam_maps(method, images: torch.Tensor, classes: torch.Tensor):
    """(cam [B, K, h, w], low grid (H, W), high grid (h, w)): Grad-CAM++ of each class column of
    `classes` on the last feature level, in eval mode and float32."""
    if classes.dim() != 2 or classes.shape[0] != images.shape[0]:
        raise ValueError(f"classes must be [B, K] with B = {images.shape[0]}, got {tuple(classes.shape)}")
    predict = _differentiable_predict(method)
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            f_low, f_high = method.backbone(images)
        f_low = f_low.detach().float()
        f_high = f_high.detach().float().contiguous().requires_grad_(True)
        cams = []
        with torch.enable_grad():
            logits = predict(f_low, f_high).float()
            if not logits.requires_grad:
                raise RuntimeError(f"method {method.name}: its prediction does not depend differentiably on the "
                                   "last feature level, so Grad-CAM++ cannot be computed")
            classes = classes.to(logits.device)
            for j in range(classes.shape[1]):
                score = logits.gather(1, classes[:, j:j + 1]).sum()
                gradients, = torch.autograd.grad(score, f_high, retain_graph=j + 1 < classes.shape[1])
                cams.append(grad_cam_plus_plus(f_high.detach(), gradients))
    finally:
        method.train(was_training)
    return torch.stack(cams, dim=1), tuple(f_low.shape[-2:]), tuple(f_high.shape[-2:])


def explain(method, images: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
    own = getattr(method, "explain", None)
    if callable(own):
        return own(images, classes)
    cams, low_grid, high_grid = grad_cam_maps(method, images, classes)
    out = {"cam": cams}
    threshold = cam_threshold(method)
    if threshold is not None:
        b, k = cams.shape[:2]
        keep_low, keep_high = cam_keep_masks(cams.flatten(0, 1), tuple(images.shape[-2:]), [low_grid, high_grid],
                                             threshold)
        out["keep_low"] = keep_low.view(b, k, *low_grid)
        out["keep_high"] = keep_high.view(b, k, *high_grid)
    return out
