#!/usr/bin/env bash
# The WebGPU backend against candle-CUDA on the same NVIDIA GPU.
#
# On a machine with an NVIDIA GPU, its Vulkan driver and CUDA: builds `tunelab` twice (the
# default build, whose `--device wgpu` / `bench --wgpu` use Vulkan; and `--features cuda`)
# and runs, side by side:
#   - WGSL matmul GFLOP/s at square and transformer shapes (bench --wgpu), and cuBLAS fp32
#     (candle's CUDA matmul, TF32 off) at the same shapes (bench --device cuda --matmul);
#   - the training step of every PEFT method on the MiniLM shape on wgpu and on candle-CUDA;
#   - the GPU time per WGSL kernel of each wgpu step (timestamp queries, bench --profile).
# Results go to stdout and to $OUT_DIR (default target/device-bench) as JSON lines.
#
# Machines without a Rust toolchain can run prebuilt binaries instead:
#   TUNELAB_BIN=path/to/tunelab TUNELAB_CUDA_BIN=path/to/tunelab-cuda scripts/device-bench.sh
# (build the CUDA one where nvcc exists: `cargo xtask check-cuda` sets up nvcc from PyPI).
#
# Targets (WebGPU issue): WGSL matmul >= 60% of cuBLAS fp32; a LoRA step on wgpu <= 1.5x the
# candle-CUDA step.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT_DIR:-target/device-bench}
BATCH=${BATCH:-8}
SEQ=${SEQ:-128}
STEPS=${STEPS:-10}
METHODS=${METHODS:-full,bitfit,lora,prompt}
mkdir -p "$OUT_DIR"

if [[ -z "${TUNELAB_BIN:-}" ]]; then
  cargo build --release -p tunelab-cli
  TUNELAB_BIN=target/release/tunelab
fi
if [[ -z "${TUNELAB_CUDA_BIN:-}" ]] && command -v nvcc >/dev/null; then
  cargo build --release -p tunelab-cli --features cuda --target-dir target/cuda
  TUNELAB_CUDA_BIN=target/cuda/release/tunelab
fi

command -v nvidia-smi >/dev/null && nvidia-smi -L || true

echo "== wgpu (Vulkan): training steps and matmul"
WGPU_BACKEND=${WGPU_BACKEND:-vulkan} "$TUNELAB_BIN" bench --wgpu --wgpu-only --profile \
  --methods "$METHODS" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" \
  --json-out "$OUT_DIR/wgpu.jsonl"

if [[ -n "${TUNELAB_CUDA_BIN:-}" ]]; then
  echo "== candle-CUDA: training steps and cuBLAS fp32 matmul"
  "$TUNELAB_CUDA_BIN" bench --device cuda --matmul --methods "$METHODS" \
    --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --json-out "$OUT_DIR/cuda.jsonl"
else
  echo "== candle-CUDA skipped: no nvcc and no TUNELAB_CUDA_BIN"
fi
