"""The reason for fixed point: is the decoded image the same on 1 and 2 threads (and on a GPU)?"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lic_kd.evaluation.coding import prepare_for_coding
from lic_kd.frugal.quant import float_twin


def decode_determinism(net: nn.Module, x_padded: torch.Tensor) -> dict[str, Any]:
    """Code `x_padded` once on the CPU, decode the bitstream with 1 and with 2 CPU threads (and on the GPU
    where there is one), and compare what the hyper-synthesis predicted (the scales that drive the entropy
    decoder) and the decoded images, for the fixed-point network and for its float twin: identical, or the
    largest difference."""

    threads = torch.get_num_threads()
    result: dict[str, Any] = {"threads": [1, 2], "image_size": list(x_padded.shape[-2:])}
    try:
        for name, model in (("fixed_point", net), ("float", float_twin(net))):
            coder = prepare_for_coding(model).cpu()
            with torch.inference_mode():
                encoded = coder.compress(x_padded.cpu())
            images, scales = [], []
            hook = (
                coder.h_s.register_forward_hook(lambda m, i, out: scales.append(out)) if hasattr(coder, "h_s") else None
            )
            for n in (1, 2):
                torch.set_num_threads(n)
                with torch.inference_mode():
                    images.append(coder.decompress(encoded["strings"], encoded["shape"])["x_hat"])
            result[name] = {
                "identical": bool(torch.equal(*images)),
                "max_abs_diff": float((images[0] - images[1]).abs().max()),
                "scales_identical": bool(torch.equal(*scales[:2])) if scales else None,
            }
            if torch.cuda.is_available():  # the same bitstream decoded on the GPU, against the CPU's decode
                with torch.inference_mode():
                    gpu = coder.cuda().decompress(encoded["strings"], encoded["shape"])["x_hat"].cpu()
                result[name]["cuda_identical"] = bool(torch.equal(gpu, images[0]))
                result[name]["cuda_scales_identical"] = (
                    bool(torch.equal(scales[2].cpu(), scales[0])) if scales else None
                )
            if hook is not None:
                hook.remove()
    finally:
        torch.set_num_threads(threads)
    return result


def determinism_summary(check: dict[str, Any]) -> str:
    """One line: for each network, identical images or the largest difference."""
    parts = []
    for name, r in check.items():
        if isinstance(r, dict):
            scales = (
                ""
                if r.get("scales_identical") is None
                else f"scales {'identical' if r['scales_identical'] else 'differ'}, "
            )
            parts.append(
                f"{name}: {scales}images "
                + ("identical" if r["identical"] else f"differ by up to {r['max_abs_diff']:.3g}")
            )
    return ", ".join(parts)
