#!/usr/bin/env python3
"""Loads a Tunelab export with Hugging Face PEFT / transformers and checks its logits.

usage: check_export.py EXPORT_DIR BASE_MODEL_DIR PREDICTIONS.jsonl

EXPORT_DIR is a run's `final/` (LoRA or prompt tuning: PEFT format; full: a transformers
model folder). PREDICTIONS.jsonl is `tunelab predict --model-dir EXPORT_DIR ...` output; each
line's `logits` must match what PyTorch computes for its `text` within 1e-4; for a causal-LM
export (GPT-2), the probabilities of its five `next_ids` after the text.
Run by `cargo xtask results` (when the torch venv exists) or by hand.
"""
import json
import pathlib
import sys

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

export, base, preds = (pathlib.Path(a) for a in sys.argv[1:4])
manifest = json.loads((export / "tunelab_export.json").read_text())
method = manifest["method"]["method"]
labels = manifest["labels"]["names"]
task = manifest["task"]
if task not in ("classification", "causal-lm"):
    sys.exit(f"only classification and causal-LM exports are checked here (got {task})")
causal = task == "causal-lm"

tok = AutoTokenizer.from_pretrained(base)
auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
if method == "full":
    model = auto.from_pretrained(export)
else:
    from peft import PeftModel

    model = auto.from_pretrained(base) if causal else auto.from_pretrained(base, num_labels=len(labels))
    model = PeftModel.from_pretrained(model, export)
model.eval()

worst = 0.0
rows = [json.loads(l) for l in preds.read_text().splitlines() if l.strip()]
for row in rows:
    enc = tok(row["text"], return_tensors="pt", truncation=True, max_length=manifest["max_len"])
    with torch.no_grad():
        logits = model(**enc).logits[0]
    if causal:
        probs = torch.softmax(logits[-1], -1)
        ours = [p for _, p in row["next"]]
        diff = max(abs(probs[i].item() - p) for i, p in zip(row["next_ids"], ours))
    else:
        diff = max(abs(a - b) for a, b in zip(logits.tolist(), row["logits"]))
    worst = max(worst, diff)
print(f"{export}: {method} loaded by {'transformers' if method == 'full' else 'PeftModel.from_pretrained'}; "
      f"{len(rows)} texts, max |logit difference| {worst:.2e}")
sys.exit(0 if worst < 1e-4 else 1)
