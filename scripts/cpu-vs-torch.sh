#!/usr/bin/env bash
# The native CPU training step against PyTorch + PEFT, pinned to a few cores of a machine
# that has no Rust toolchain (a quiet, dedicated machine gives steadier ratios than the
# shared development VM `cargo xtask bench --vs-torch` runs on).
#
#   TUNELAB_BINS="path/to/tunelab [path/to/another-tunelab ...]" PYTHON=python3 \
#     CORES=0,1 ROUNDS=3 scripts/cpu-vs-torch.sh
#
# Needs the MiniLM model in assets/models/all-MiniLM-L6-v2 (`tunelab setup` fetches it) and a
# python with torch, transformers and peft. Each round runs every binary, then PyTorch, each
# pinned with taskset to CORES (thread count = number of cores); every run writes JSON lines
# to $OUT_DIR/round<r>-<name>.jsonl, and the end prints, per method and binary, each round's
# ours / PyTorch ratio (that round's PyTorch run) and their median.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT_DIR:-target/cpu-vs-torch}
CORES=${CORES:-0,1}
ROUNDS=${ROUNDS:-3}
BATCH=${BATCH:-8}
SEQ=${SEQ:-128}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-2}
METHODS=${METHODS:-full,bitfit,lora,prompt}
PYTHON=${PYTHON:-python3}
MODEL=assets/models/all-MiniLM-L6-v2
read -r -a BINS <<<"${TUNELAB_BINS:-target/release/tunelab}"
threads=$(awk -F, '{print NF}' <<<"$CORES")
mkdir -p "$OUT_DIR"

lscpu | grep -E '^(Model name|Thread|Core|L2|L3)' || true
echo "cores $CORES ($threads threads), $ROUNDS rounds, batch $BATCH x $SEQ, $STEPS steps"

for r in $(seq 1 "$ROUNDS"); do
  for bin in "${BINS[@]}"; do
    name=$(basename "$bin")
    taskset -c "$CORES" "$bin" bench --assets assets --methods "$METHODS" --batch "$BATCH" \
      --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --json-out "$OUT_DIR/round$r-$name.jsonl"
  done
  HF_HUB_OFFLINE=1 taskset -c "$CORES" "$PYTHON" tests/bench/torch_step.py "$MODEL" "$threads" \
    "$BATCH" "$SEQ" "$STEPS" "$WARMUP" "$METHODS" | tee "$OUT_DIR/round$r-torch.jsonl"
done

"$PYTHON" - "$OUT_DIR" "$ROUNDS" "${BINS[@]}" <<'EOF'
import json, os, statistics, sys
out, rounds, bins = sys.argv[1], int(sys.argv[2]), [os.path.basename(b) for b in sys.argv[3:]]
def load(r, name):
    rows = {}
    for line in open(f"{out}/round{r}-{name}.jsonl"):
        if line.startswith("{"):
            v = json.loads(line)
            if "method" in v:
                rows[v["method"]] = v["median_ms"]
    return rows
torch = [load(r, "torch") for r in range(1, rounds + 1)]
print("| method | build | ours median ms | PyTorch median ms | ours / PyTorch | per round |")
print("|---|---|---:|---:|---:|---|")
for m in torch[0]:
    for name in bins:
        ours = [load(r, name).get(m) for r in range(1, rounds + 1)]
        ratios = [o / t[m] for o, t in zip(ours, torch)]
        print(f"| {m} | {name} | {statistics.median(ours):.0f} | "
              f"{statistics.median(t[m] for t in torch):.0f} | {statistics.median(ratios):.2f}x | "
              + ", ".join(f"{x:.2f}" for x in ratios) + " |")
EOF
