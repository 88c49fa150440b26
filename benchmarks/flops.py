"""What a matmul can do on this device and what a model's forward costs: the yardsticks of the speed benchmarks."""
from __future__ import annotations

import time

import torch


def non_embedding_params(model) -> int:
    """Parameters minus the input embedding and an untied LM head (Kaplan et al.'s N)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    return total - embed.numel() - (0 if head is embed else head.numel())


def matmul_flops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.5, tries: int = 3,
                 device: str = "cpu") -> float:
    """Best FLOP/s of an (m x k) . (k x n) torch.matmul in ``dtype`` on ``device``, now (2 m k n FLOPs
    per product), over ``tries`` timings of about ``seconds`` each (a GPU's queue drained before each clock)."""
    a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)

    def clock() -> float:
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter()

    torch.matmul(a, b)
    start = clock()
    torch.matmul(a, b)
    reps = max(1, int(seconds / max(clock() - start, 1e-6)))
    best = 0.0
    for _ in range(tries):
        start = clock()
        for _ in range(reps):
            torch.matmul(a, b)
        best = max(best, 2 * m * k * n * reps / (clock() - start))
    return best
