"""`python -m lic_kd.teachers.export RUN_DIR_OR_CKPT OUT.pth.tar`: a trained network in CompressAI's own format.

The file holds the network's state dict alone (no `net.` prefix, no optimizer), with the CDF tables updated,
and is renamed `<stem>-<sha256[:8]>.pth.tar` as CompressAI's `update_model` names its files, so that
`python -m compressai.utils.eval_model checkpoint IMAGES -a ARCH -p FILE` reads it."""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path

import torch
from torch import nn

from lic_kd.errors import ConfigError, run_cli
from lic_kd.evaluation.coding import prepare_for_coding
from lic_kd.io import atomic_path
from lic_kd.models.checkpoints import load_net

# lic_kd model class -> CompressAI's architecture name (eval_model's -a)
COMPRESSAI_NAMES = {
    "FactorizedPrior": "bmshj2018-factorized",
    "ScaleHyperprior": "bmshj2018-hyperprior",
    "MeanScaleHyperprior": "mbt2018-mean",
    "JointAutoregressiveHierarchicalPriors": "mbt2018",
}


def export_compressai(net: nn.Module, out: Path) -> tuple[Path, str]:
    """Write `net` as CompressAI does; returns the final path (named with its sha256 prefix) and its sha256."""

    out = Path(out)
    stem = next((out.name[: -len(s)] for s in (".pth.tar", ".pth", ".tar") if out.name.endswith(s)), out.name)
    buffer = io.BytesIO()
    torch.save(prepare_for_coding(net).state_dict(), buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    final = out.parent / f"{stem}-{digest[:8]}.pth.tar"  # named by its content, as CompressAI names its files
    with atomic_path(final) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return final, digest


def main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(
        prog="python -m lic_kd.teachers.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="lic_kd run directory or .ckpt (or a ladder dir with --lmbda)")
    parser.add_argument(
        "out", type=Path, help="output file; its name gets the sha256 prefix, as CompressAI names files"
    )
    parser.add_argument("--lmbda", type=float, default=None, help="the run of a sweep dir or the rung of a ladder")
    args = parser.parse_args(argv)
    net, meta = load_net(args.checkpoint, lmbda=args.lmbda)
    if meta.get("quant"):
        raise ConfigError(
            f"{args.checkpoint} is a fixed-point run (quant.mode={meta['quant']['mode']}): its input "
            "quantizers have no CompressAI equivalent, so eval_model could not reproduce it"
        )
    path, _ = export_compressai(net, args.out)
    arch = COMPRESSAI_NAMES.get(type(net).__name__, type(net).__name__)
    print(f"{path}\nread it with: python -m compressai.utils.eval_model checkpoint IMAGES -a {arch} -p {path}")


if __name__ == "__main__":
    run_cli(main)
