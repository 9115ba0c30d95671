#!/usr/bin/env python3
"""PyTorch + PEFT baseline for `cargo xtask bench --vs-torch`: the same training step as
`tunelab bench` (MiniLM, batch 8 x 128, AdamW, clipping at 1.0) per method, on the CPU with
the same thread count. Prints one JSON line per method."""
import json
import statistics
import sys
import time

import torch
from peft import IA3Config, LoraConfig, PromptTuningConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification

model_dir, threads = sys.argv[1], int(sys.argv[2])
batch, seq, steps, warmup = (int(x) for x in sys.argv[3:7])
methods = sys.argv[7].split(",")
torch.set_num_threads(threads)


def build(method):
    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2,
                                                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if method == "bitfit":
        for n, p in m.named_parameters():
            p.requires_grad = n.endswith(".bias") or n.startswith("classifier.")
    elif method == "lora":
        m = get_peft_model(m, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"]))
    elif method == "prompt":
        m = get_peft_model(m, PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=20))
    elif method == "ia3":
        m = get_peft_model(m, IA3Config(task_type=TaskType.SEQ_CLS, target_modules=["key", "value", "output.dense"],
                                        feedforward_modules=["output.dense"]))
    elif method != "full":
        sys.exit(f"unknown method {method}")
    return m.train()


for method in methods:
    model = build(method)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(42)
    ids = torch.randint(1000, 30522, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    labels = torch.arange(batch) % 2
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"method": method, "trainable": sum(p.numel() for p in params),
                      "median_ms": statistics.median(times), "min_ms": min(times),
                      "torch": torch.__version__, "threads": threads}), flush=True)
