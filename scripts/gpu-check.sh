#!/usr/bin/env bash
# One command that checks a GPU machine end to end in under 10 minutes (docs/cluster.md, "Checking a GPU machine"):
#   1. the smoke run on CUDA in 32-true and in bf16-mixed;
#   2. a short N=128/M=192 teacher on 256x256 crops (CompressAI's q1-q5 width), its batches per second;
#   3. its evaluation on CUDA beside the CPU's (real bitstreams), the same bitstream decoded on the other device;
#   4. energy from NVML (in the CUDA evaluation's results.json);
#   5. DDP on 2 devices where there are 2.
# It ends with one summary table (also OUT/summary.md). Without a CUDA device (or with --cpu) it runs the CPU
# mode: the same steps on the CPU, tiny, saying which CUDA parts it skipped; make test runs that mode.
#   bash scripts/gpu-check.sh [--cpu] [OUT_DIR]      (default OUT_DIR: outputs/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

MODE=auto
if [ "${1:-}" = "--cpu" ]; then MODE=cpu; shift; fi
OUT=${1:-outputs/gpu-check}
if [ "$MODE" = auto ]; then
  MODE=$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi
rm -rf "$OUT" && mkdir -p "$OUT"
GPUS=0
if [ "$MODE" = cuda ]; then
  GPUS=$($PY -c 'import torch; print(torch.cuda.device_count())')
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi
echo "gpu-check: mode $MODE, $GPUS CUDA device(s), outputs in $OUT"

# Sizes: the real check on a GPU, a tiny one on a CPU (the same steps, seconds each).
if [ "$MODE" = cuda ]; then
  ACCEL=gpu; TEACHER_STEPS=300; TEACHER_BATCH=16; EVAL_LIMIT=24; SMOKE_STEPS=20
else
  ACCEL=cpu; TEACHER_STEPS=2; TEACHER_BATCH=2; EVAL_LIMIT=1; SMOKE_STEPS=4
fi

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, record the exit status and the seconds
  local name=$1; shift
  local start=$SECONDS
  echo "-- $name: $*"
  if "$@" > "$OUT/$name.log" 2>&1; then echo 0 > "$OUT/$name.status"; else echo $? > "$OUT/$name.status"; fi
  echo $((SECONDS - start)) > "$OUT/$name.seconds"
  [ "$(cat "$OUT/$name.status")" = 0 ] || { echo "   failed (exit $(cat "$OUT/$name.status")): tail of $OUT/$name.log"; tail -5 "$OUT/$name.log"; }
}

TRAIN="$PY -m lic_kd.train trainer.accelerator=$ACCEL"
for precision in 32-true bf16-mixed; do
  step "smoke-$precision" $TRAIN experiment=smoke steps=$SMOKE_STEPS val_every=$SMOKE_STEPS \
    trainer.precision=$precision hydra.run.dir="$OUT/smoke-$precision"
done

# CompressAI's N=128/M=192 on 256x256 crops at its lr; evaluated on Kodak on the training device.
step teacher $TRAIN role=teacher student.N=128 student.M=192 lmbda=0.0067 steps=$TEACHER_STEPS \
  val_every=$TEACHER_STEPS data.crop_size=256 data.batch_size=$TEACHER_BATCH data.val_batch_size=$TEACHER_BATCH \
  data.eval_limit=$EVAL_LIMIT trainer.precision=$([ "$MODE" = cuda ] && echo bf16-mixed || echo 32-true) \
  hydra.run.dir="$OUT/teacher"
step eval-cpu $PY -m lic_kd.evaluate checkpoint="$OUT/teacher" device=cpu limit=$EVAL_LIMIT hydra.run.dir="$OUT/eval-cpu"
if [ "$MODE" = cuda ]; then
  step eval-cuda $PY -m lic_kd.evaluate checkpoint="$OUT/teacher" device=cuda limit=$EVAL_LIMIT \
    hydra.run.dir="$OUT/eval-cuda"
fi
step cross-device $PY -c '
import json, sys, torch
from lic_kd.data import load_rgb, to_tensor
from lic_kd.evaluation.coding import pad
from lic_kd.evaluation.determinism import decode_determinism
from lic_kd.models.checkpoints import load_net
net, _ = load_net(sys.argv[1])
x = pad(to_tensor(load_rgb("data/kodak/kodim01.png"))[None])
json.dump(decode_determinism(net.eval(), x), open(sys.argv[2], "w"), indent=2)
' "$OUT/teacher" "$OUT/cross-device.json"
if [ "$GPUS" -ge 2 ]; then
  step ddp $TRAIN experiment=smoke trainer=ddp trainer.devices=2 steps=$SMOKE_STEPS val_every=$SMOKE_STEPS \
    hydra.run.dir="$OUT/ddp"
fi

$PY - "$OUT" "$MODE" "$GPUS" <<'EOF'
"""The summary table: one row per check, from the runs' results.json and the step records."""
import json
import sys
from pathlib import Path

out, mode, gpus = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])


def step(name):
    status = out / f"{name}.status"
    if not status.exists():
        return None
    return int(status.read_text()), int((out / f"{name}.seconds").read_text())


def results(name):
    """A step's complete results.json (a failed run's record says so in its step's row, not here)."""
    path = out / name / "results.json"
    record = json.loads(path.read_text()) if path.exists() else None
    return record if record is not None and record.get("status", "complete") == "complete" else None


rows = []


def row(check, name, detail):
    s = step(name)
    state = "skipped" if s is None else ("ok" if s[0] == 0 else f"FAILED (exit {s[0]})")
    rows.append((check, state, "" if s is None else f"{s[1]} s", detail))


for precision in ("32-true", "bf16-mixed"):
    r = results(f"smoke-{precision}")
    detail = f"run.precision={r['run']['precision']}, {r['metrics']['psnr']:.2f} dB" if r else ""
    row(f"smoke run, {precision}", f"smoke-{precision}", detail)
r = results("teacher")
if r:
    seconds = sum(s["seconds"] for s in r["run"]["training"]["segments"])
    steps = r["run"]["steps"]
    detail = (
        f"N=128 M=192, 256x256 crops, batch {r['run']['settings']['data.batch_size']}, {steps} batches: "
        f"{steps / seconds:.2f} batches/s ({r['run']['precision']})"
    )
else:
    detail = ""
row("teacher training", "teacher", detail)
for device in ("cpu", "cuda"):
    r = results(f"eval-{device}")
    if r:
        m = r["metrics"]
        detail = f"{m['n_images']} Kodak images: {m['bpp']:.4f} bpp, {m['psnr']:.2f} dB, decode {m['decode_s']:.3f} s"
    elif device == "cuda" and mode == "cpu":
        detail = "no CUDA device: CPU mode"
    else:
        detail = ""
    row(f"evaluation on {device}", f"eval-{device}", detail)
check = out / "cross-device.json"
if check.exists():
    c = json.loads(check.read_text())["float"]
    detail = f"1 vs 2 CPU threads: {'identical' if c['identical'] else 'differ by %.3g' % c['max_abs_diff']}"
    if "cuda_identical" in c:
        detail += f"; CPU-encoded, CUDA-decoded: {'identical' if c['cuda_identical'] else 'NOT identical'}"
        if not c["cuda_scales_identical"]:
            detail += " (the hyper-synthesis scales differ across devices: use quant=ptq for portable bitstreams)"
    else:
        detail += "; decoding on CUDA: no CUDA device"
else:
    detail = ""
row("bitstream decoded elsewhere", "cross-device", detail)
r = results("eval-cuda")
if r and r.get("energy"):
    e = r["energy"]
    detail = f"{e['source']}: decode {e['decode_j']:.3f} J/image" if e.get("available") else e.get("reason", "")
else:
    detail = "no CUDA device: NVML not read" if mode == "cpu" else "no energy record"
rows.append(("energy (NVML)", "ok" if r and (r.get("energy") or {}).get("available") else "skipped", "", detail))
row("DDP on 2 devices", "ddp", "" if gpus >= 2 else f"needs 2 CUDA devices, {gpus} here")

lines = [f"gpu-check ({mode} mode)", "", "| check | state | time | result |", "|---|---|---|---|"]
lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
failed = [a for a, b, _, _ in rows if b.startswith("FAILED")]
sys.exit(1 if failed else 0)
EOF
