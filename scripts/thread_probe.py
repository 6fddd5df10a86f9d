"""Images/s of the demo backbone alone (EfficientNet-Lite0, 128 px, batch 16, 8 calls after one warm-up),
to compare thread settings on a given machine, e.g.

    for cfg in "OMP_NUM_THREADS=1" "OMP_NUM_THREADS=2 OMP_WAIT_POLICY=ACTIVE" "OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE"; do
        env $cfg .venv/bin/python scripts/thread_probe.py; done
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from scob_fast.models.backbone import build_backbone  # noqa: E402

backbone = build_backbone("efficientnet_lite0", pretrained=True).use_channels_last()
x = torch.randn(16, 3, 128, 128)
with torch.no_grad():
    backbone(x)
    start = time.perf_counter()
    for _ in range(8):
        backbone(x)
    elapsed = time.perf_counter() - start
print(f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} "
      f"{8 * 16 / elapsed:.1f} img/s")
