//! `cargo xtask results`: the fine-tuning results in `docs/results.md`.
//!
//! Runs `tunelab train` on the sample datasets — all-MiniLM-L6-v2 with full fine-tuning,
//! BitFit, LoRA and prompt tuning on sentiment, topic and NER, MiniLM masked-LM continued
//! pretraining, and a small BERT pretrained from scratch on Brown text — then collects each
//! run's `summary.json` into a table. With the PyTorch venv of `cargo xtask fixtures`
//! present, it also loads the LoRA, prompt-tuning and full exports in Python
//! (`tests/peft/check_export.py`: `PeftModel.from_pretrained` / `from_pretrained`) and
//! compares their logits with `tunelab predict`'s.
//!
//! Step budgets are small so the whole table takes well under an hour on 2 CPU cores; they
//! are written next to each result.

use crate::sh::{self, cmd, root};
use anyhow::Context as _;
use std::fmt::Write as _;

struct Run {
    task: &'static str,
    method: &'static str,
    extra: &'static [&'static str],
}

const RUNS: &[Run] = &[
    Run {
        task: "sentiment",
        method: "full",
        extra: &[],
    },
    Run {
        task: "sentiment",
        method: "bitfit",
        extra: &[],
    },
    Run {
        task: "sentiment",
        method: "lora",
        extra: &[],
    },
    Run {
        task: "sentiment",
        method: "prompt",
        extra: &[],
    },
    Run {
        task: "topic",
        method: "full",
        extra: &["--max-len", "64"],
    },
    Run {
        task: "topic",
        method: "bitfit",
        extra: &["--max-len", "64"],
    },
    Run {
        task: "topic",
        method: "lora",
        extra: &["--max-len", "64"],
    },
    Run {
        task: "topic",
        method: "prompt",
        extra: &["--max-len", "64"],
    },
    Run {
        task: "ner",
        method: "full",
        extra: &[],
    },
    Run {
        task: "ner",
        method: "bitfit",
        extra: &[],
    },
    Run {
        task: "ner",
        method: "lora",
        extra: &[],
    },
    Run {
        task: "ner",
        method: "prompt",
        extra: &[],
    },
    Run {
        task: "mlm",
        method: "lora",
        extra: &["--max-len", "64", "--max-steps", "60"],
    },
    Run {
        task: "mlm",
        method: "full",
        extra: &[
            "--from-scratch",
            "--max-len",
            "64",
            "--max-steps",
            "300",
            "--lr",
            "1e-3",
        ],
    },
];

const STEPS: &str = "120";

/// How to read the numbers (kept with the table when it is regenerated).
const NOTES: &str = r#"
## Reading the table

- These runs shared the 2-core machine with builds and tests, so wall times and tokens/s are
  pessimistic and only roughly comparable between rows.
- NER: after one epoch (120 steps) full fine-tuning, BitFit and LoRA still tag every token
  `O` — entity F1 0, token accuracy equal to the share of `O` tokens. WNUT-16's entities are
  rare (about 5% of tokens) and these learning rates need more epochs; prompt tuning's much
  larger rate (1e-2) starts finding entities within the budget.
- Topic (15 genres from Brown passages) sees an eighth of an epoch: far from converged.
- Masked LM: MiniLM gets a new MLM head (the checkpoint has none), tied to its word
  embeddings; the from-scratch BERT has 2 layers, hidden 128 and MiniLM's tokenizer.
"#;

/// The `tunelab` binary, copied next to the runs so that rebuilding while the runs go on
/// changes nothing.
fn tunelab() -> std::process::Command {
    let mut c = std::process::Command::new(root().join("target/results/tunelab"));
    c.current_dir(root());
    c
}

pub fn run(only: Option<String>) -> anyhow::Result<()> {
    crate::assets::ensure(false)?;
    sh::run(cmd("cargo", &["build", "-p", "tunelab-cli"]).current_dir(root()))?;
    let runs_dir = root().join("target/results");
    std::fs::create_dir_all(&runs_dir)?;
    std::fs::copy(
        crate::sh::target_dir().join("debug/tunelab"),
        runs_dir.join("tunelab"),
    )
    .context("copying the tunelab binary")?;
    let mut rows = Vec::new();
    for r in RUNS {
        let name = format!(
            "{}-{}{}",
            r.task,
            r.method,
            if r.extra.contains(&"--from-scratch") {
                "-scratch"
            } else {
                ""
            }
        );
        let out = runs_dir.join(&name);
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            // Not re-run: keep the earlier result in the table, if there is one.
            if let Ok(text) = std::fs::read_to_string(out.join("summary.json")) {
                rows.push((name, r, serde_json::from_str(&text)?));
            }
            continue;
        }
        let mut c = tunelab();
        c.args([
            "train",
            "--task",
            r.task,
            "--method",
            r.method,
            "--batch-size",
            "16",
        ]);
        if !r.extra.contains(&"--max-steps") {
            c.args(["--max-steps", STEPS]);
        }
        c.args(["--eval-every", "60", "--eval-max-examples", "300"]);
        c.args(r.extra).arg("--output-dir").arg(&out);
        sh::run(&mut c)?;
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("summary.json"))
                .with_context(|| format!("reading {}/summary.json", out.display()))?,
        )?;
        rows.push((name, r, summary));
    }
    let checks = python_checks(&runs_dir);
    let report = render(&rows, &checks);
    let path = root().join("docs/results.md");
    std::fs::write(&path, &report)?;
    println!("{report}\nwritten to {}", path.display());
    Ok(())
}

/// Loads the sentiment LoRA, prompt and full exports in PyTorch, if its venv exists.
fn python_checks(runs_dir: &std::path::Path) -> Vec<String> {
    let python = crate::fixtures::venv().join("bin/python");
    if !python.is_file() {
        return vec![
            "(skipped: no PyTorch venv; run `cargo xtask fixtures` once to create it)".into(),
        ];
    }
    let mut out = Vec::new();
    for m in ["lora", "prompt", "full"] {
        let export = runs_dir.join(format!("sentiment-{m}/final"));
        if !export.is_dir() {
            continue;
        }
        let preds = runs_dir.join(format!("sentiment-{m}/predictions.jsonl"));
        let mut p = tunelab();
        p.arg("predict").arg("--model-dir").arg(&export).args([
            "--text",
            "The food was wonderful and the staff were kind.",
            "--text",
            "Cold fries, rude waiter, never again.",
            "--text",
            "It was fine.",
        ]);
        let line = match p.output() {
            Ok(o) if o.status.success() => {
                let _ = std::fs::write(&preds, &o.stdout);
                let mut c = cmd(&python.to_string_lossy(), &["tests/peft/check_export.py"]);
                c.arg(&export)
                    .arg("assets/models/all-MiniLM-L6-v2")
                    .arg(&preds)
                    .current_dir(root())
                    .env("HF_HUB_OFFLINE", "1");
                match c.output() {
                    Ok(o) => {
                        let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
                        let status = if o.status.success() { "ok" } else { "FAILED" };
                        format!("{status}: {text}")
                    }
                    Err(e) => format!("FAILED to run python: {e}"),
                }
            }
            Ok(o) => format!("FAILED: predict: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("FAILED: {e}"),
        };
        out.push(format!("sentiment-{m}: {line}"));
    }
    out
}

fn render(rows: &[(String, &Run, serde_json::Value)], checks: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Results\n");
    let _ = writeln!(
        s,
        "Produced by `cargo xtask results` (this file is overwritten). Every run is \
         `tunelab train --task <task> --method <method> --batch-size 16 --max-steps {STEPS} \
         --eval-every 60 --eval-max-examples 300` unless its row says otherwise, on the \
         candle CPU backend of this machine; defaults otherwise (AdamW, linear schedule with \
         10% warmup, the method's default learning rate: full 5e-5, BitFit 1e-3, LoRA 5e-4 \
         with r=8 on query/value, prompt tuning 1e-2 with 20 virtual tokens). Step budgets \
         are far below a full fine-tuning run (the largest dataset, topic, sees 1,920 of its \
         15,293 passages), so compare methods with each other, not with published numbers.\n"
    );
    let _ = writeln!(
        s,
        "Validation metrics are on 300 validation examples spread evenly over the file, at the last evaluation; \
         test metrics are on the whole test split with the final weights. Tokens/s counts \
         non-padding tokens of training steps only (evaluation excluded); wall time includes \
         loading and evaluation.\n"
    );
    let _ = writeln!(
        s,
        "| run | extra options | trainable / total | steps | epochs | wall s | tokens/s | final train loss | validation | test |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    let fmt_metrics = |v: &serde_json::Value| -> String {
        let Some(m) = v.get("metrics").and_then(|m| m.as_object()) else {
            return "—".into();
        };
        let order = [
            "accuracy",
            "macro_f1",
            "f1",
            "precision",
            "recall",
            "token_accuracy",
            "perplexity",
            "loss",
        ];
        order
            .iter()
            .filter_map(|k| {
                m.get(*k)
                    .and_then(|x| x.as_f64())
                    .map(|x| format!("{k} {x:.3}"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, r, sum) in rows {
        let f = |k: &str| sum.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| {name} | {} | {} / {} ({:.2}%) | {} | {:.2} | {:.0} | {:.0} | {:.3} | {} | {} |",
            if r.extra.is_empty() {
                "—".to_string()
            } else {
                format!("`{}`", r.extra.join(" "))
            },
            f("trainable"),
            f("total"),
            100.0 * f("trainable") / f("total"),
            f("steps"),
            f("epochs"),
            f("wall_seconds"),
            f("tokens_per_s"),
            f("final_loss"),
            fmt_metrics(&sum["eval"]),
            fmt_metrics(&sum["test"]),
        );
    }
    s.push_str(NOTES);
    let _ = writeln!(s, "\n## Exports loaded by Python\n");
    let _ = writeln!(
        s,
        "`tests/peft/check_export.py` loads each sentiment export with transformers + PEFT \
         (`PeftModel.from_pretrained` for LoRA and prompt tuning, `from_pretrained` for full \
         fine-tuning) and compares its logits with `tunelab predict`'s on three sentences:\n"
    );
    for c in checks {
        let _ = writeln!(s, "- {c}");
    }
    s
}
