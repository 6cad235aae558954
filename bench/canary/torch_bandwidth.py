"""The reference for the canary's CUDA bandwidth figures: torch on the same GPU, in the same
command. H2D: copies of a pinned 256 MiB host tensor to the GPU; D2H back; D2D: a device copy
of the same size (bytes copied once per copy). Each is timed with CUDA events, one warm-up, then
the best of 10, as the canary's cuda step measures. Prints one JSON object."""
import json
import sys

import torch

size = int(sys.argv[1]) if len(sys.argv) > 1 else 256 << 20
repeats = 10
n = size // 4
host = torch.empty(n, dtype=torch.float32).pin_memory()
host.fill_(1.0)
dev = torch.empty(n, dtype=torch.float32, device="cuda")
dev2 = torch.empty(n, dtype=torch.float32, device="cuda")


def best(copy):
    copy()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        copy()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return size / min(times)


h2d = best(lambda: dev.copy_(host, non_blocking=True))
d2h = best(lambda: host.copy_(dev, non_blocking=True))
d2d = best(lambda: dev2.copy_(dev))
print(json.dumps({
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name(0),
    "bytes": size,
    "h2d_bytes_per_second": h2d,
    "d2h_bytes_per_second": d2h,
    "d2d_bytes_per_second": d2d,
}))
