//! The bad-input corpus: every case runs the `tunelab` binary on something broken (a data
//! file, a model folder, a config, an option, an export, a run folder) and asserts that
//!
//! - it exits non-zero without a panic,
//! - its message names the file, line or field and what was expected (`expect`),
//! - no file that existed before changed or disappeared (the case's folder is read before
//!   and after, byte for byte), and nothing new appeared outside the folder the case allows.
//!
//! Cases are grouped by what they break; each group is one test, so groups run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod folders;

/// The binary under test: this build's, or `TUNELAB_BIN` (to run the corpus against another
/// build, e.g. an older one, and see which cases it fails).
fn bin() -> PathBuf {
    std::env::var_os("TUNELAB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tunelab")))
}

fn assets() -> PathBuf {
    let a = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    assert!(
        a.join("manifest.json").is_file(),
        "{} is missing: run `cargo xtask assets`",
        a.display()
    );
    a.canonicalize().unwrap()
}

/// The installed all-MiniLM-L6-v2 folder.
fn minilm() -> PathBuf {
    assets().join("models/all-MiniLM-L6-v2")
}

/// The tiny GPT-2 fixture folder.
fn tiny_gpt2() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-gpt2")
}

fn scratch_root() -> PathBuf {
    std::env::temp_dir().join(format!("tunelab-bad-inputs-{}", std::process::id()))
}

const TRAIN_CSV: &str = "text,label\n\
\"Great, really great food\",pos\n\
awful and cold,neg\n\
I loved every minute,pos\n\
\"never again, what a waste\",neg\n\
superb acting,pos\n\
boring plot,neg\n";

/// A finished LoRA run (2 steps, checkpoint and exports), trained once for every case that
/// needs one: cases copy it, never change it.
fn finished_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let d = scratch_root().join("finished");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("train.csv"), TRAIN_CSV).unwrap();
        let run = d.join("run");
        let out = Command::new(bin())
            .args(["train", "--task", "classification", "--train-file"])
            .arg(d.join("train.csv"))
            .arg("--validation-file")
            .arg(d.join("train.csv"))
            .args(["--max-len", "16", "--batch-size", "4", "--max-steps", "2"])
            .arg("--output-dir")
            .arg(&run)
            .env("TUNELAB_ASSETS", assets())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        run
    })
}

/// Every file under `dir` (relative path → bytes).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// A safetensors file's bytes: `(name, dtype, shape, data)` per tensor.
fn safetensors(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape,
                "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let h = serde_json::Value::Object(header).to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One tensor of a safetensors file: name, dtype, shape and raw little-endian bytes.
#[derive(Clone)]
struct RawTensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl RawTensor {
    fn values(&self) -> Vec<f32> {
        assert_eq!(self.dtype, "F32", "{}", self.name);
        self.bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn set_values(&mut self, v: &[f32]) {
        self.bytes = f32_bytes(v);
    }
    /// Sets a new shape and keeps the leading values that fill it.
    fn reshape(&mut self, shape: Vec<usize>) {
        let n: usize = shape.iter().product();
        let mut v = self.values();
        v.resize(n, 0.0);
        self.shape = shape;
        self.set_values(&v);
    }
}

/// Reads a safetensors file's tensors in file order.
fn read_st(path: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = Vec::new();
    for (k, v) in header.as_object().unwrap() {
        if k == "__metadata__" {
            continue;
        }
        let o: Vec<usize> = serde_json::from_value(v["data_offsets"].clone()).unwrap();
        out.push(RawTensor {
            name: k.clone(),
            dtype: v["dtype"].as_str().unwrap().to_string(),
            shape: serde_json::from_value(v["shape"].clone()).unwrap(),
            bytes: data[o[0]..o[1]].to_vec(),
        });
    }
    out
}

fn write_st(path: &Path, tensors: &[RawTensor]) {
    let list: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.dtype.as_str(),
                t.shape.clone(),
                t.bytes.clone(),
            )
        })
        .collect();
    std::fs::write(path, safetensors(&list)).unwrap();
}

/// Changes a case's folder after its files are laid out.
type Edit = Box<dyn Fn(&Path)>;

/// One bad input.
struct Case {
    name: &'static str,
    /// Files to create in the case's folder before the run.
    files: Vec<(String, Vec<u8>)>,
    /// Folders to copy in (source, name in the case's folder), then `edit` runs on the folder.
    copies: Vec<(PathBuf, String)>,
    edit: Option<Edit>,
    /// Arguments; a leading `@` stands for the case's folder.
    args: Vec<String>,
    /// The message must contain each of these.
    expect: Vec<String>,
    /// A path (relative to the case's folder) under which new files may appear.
    creates: Option<&'static str>,
    /// Environment variables for the run.
    env: Vec<(&'static str, &'static str)>,
}

fn case(name: &'static str, args: &[&str], expect: &str) -> Case {
    Case {
        name,
        files: Vec::new(),
        copies: Vec::new(),
        edit: None,
        args: args.iter().map(|s| s.to_string()).collect(),
        expect: vec![expect.to_string()],
        creates: None,
        env: Vec::new(),
    }
}

impl Case {
    fn file(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_string(), bytes.into()));
        self
    }
    fn copy(mut self, from: &Path, to: &str) -> Self {
        self.copies.push((from.to_path_buf(), to.to_string()));
        self
    }
    fn edit(mut self, f: impl Fn(&Path) + 'static) -> Self {
        self.edit = Some(Box::new(f));
        self
    }
    fn also(mut self, expect: &str) -> Self {
        self.expect.push(expect.to_string());
        self
    }
    fn env(mut self, var: &'static str, value: &'static str) -> Self {
        self.env.push((var, value));
        self
    }
    fn creates(mut self, under: &'static str) -> Self {
        self.creates = Some(under);
        self
    }
}

/// Runs every case; returns the failures (all of them, not just the first).
fn run(group: &str, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let dir = scratch_root().join(group).join(c.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &c.files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        for (from, to) in &c.copies {
            copy_dir(from, &dir.join(to));
        }
        if let Some(edit) = &c.edit {
            edit(&dir);
        }
        let before = tree(&dir);
        let d = dir.display().to_string();
        let args: Vec<String> = c
            .args
            .iter()
            .map(|a| match a.strip_prefix('@') {
                Some(rest) => format!("{d}{rest}"),
                None => a.clone(),
            })
            .collect();
        let out = Command::new(bin())
            .args(&args)
            .current_dir(&dir)
            .env("TUNELAB_ASSETS", assets())
            .env("RAYON_NUM_THREADS", "1")
            .envs(c.env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let mut why = Vec::new();
        if out.status.success() {
            why.push("exited 0".to_string());
        }
        if text.contains("panicked") {
            why.push("panicked".to_string());
        }
        for e in &c.expect {
            let e = e.replace('@', &d);
            if !text.contains(&e) {
                why.push(format!("no `{e}` in the message"));
            }
        }
        let after = tree(&dir);
        for (p, bytes) in &before {
            match after.get(p) {
                None => why.push(format!("{} was removed", p.display())),
                Some(b) if b != bytes => why.push(format!("{} was changed", p.display())),
                Some(_) => {}
            }
        }
        for p in after.keys().filter(|p| !before.contains_key(*p)) {
            if !c.creates.is_some_and(|under| p.starts_with(under)) {
                why.push(format!("{} was created", p.display()));
            }
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {}\n    args: {}\n    output: {}",
                c.name,
                why.join("; "),
                args.join(" "),
                text.trim().replace('\n', "\n            ")
            ));
        }
    }
    let _ = std::fs::remove_dir_all(scratch_root().join(group));
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{group}: {} cases", cases.len());
}

/// `train` on `@/data.<ext>` (classification unless `task` says otherwise), into `@/out`.
/// A flag in `extra` that the defaults also set replaces the default's value.
fn train_on(file: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--task",
        "classification",
        "--train-file",
        file,
        "--max-len",
        "16",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--output-dir",
        "@/out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut i = 0;
    while i < extra.len() {
        let given = extra[i];
        let takes_value = i + 1 < extra.len() && !extra[i + 1].starts_with("--");
        match a.iter().position(|x| x == given) {
            Some(at) if takes_value && at + 1 < a.len() => {
                a[at + 1] = extra[i + 1].to_string();
                i += 2;
            }
            _ => {
                a.push(given.to_string());
                i += 1;
            }
        }
    }
    a
}

fn data_case(
    name: &'static str,
    file: &str,
    contents: &[u8],
    extra: &[&str],
    expect: &str,
) -> Case {
    let path = format!("@/{file}");
    let mut c = case(name, &[], expect).file(file, contents.to_vec());
    c.args = train_on(&path, extra);
    c
}

#[test]
fn bad_data_files() {
    let ok = TRAIN_CSV.as_bytes();
    let cases = vec![
        data_case("csv_extra_field", "d.csv", b"text,label\nfine,pos\n\"x, y\",neg,extra\nok,neg\n", &[], "d.csv:3: expected 2 fields like the header, found 3"),
        data_case("csv_missing_field", "d.csv", b"text,label\nfine,pos\nlonely\nok,neg\n", &[], "d.csv:3: expected 2 fields like the header, found 1"),
        data_case("csv_no_text_column", "d.csv", b"body,label\na,pos\nb,neg\n", &[], "no column `text` in the header; the columns are [\"body\", \"label\"]"),
        data_case("csv_text_column_flag_wrong", "d.csv", ok, &["--text-column", "review"], "no column `review` in the header"),
        data_case("csv_quote_never_closed", "d.csv", b"text,label\nfine,pos\n\"oops,pos\nmore,neg\n", &[], "d.csv:3: a quote opened here is unbalanced: lines 3-5"),
        data_case("csv_empty_file", "d.csv", b"", &[], "d.csv: the file is empty"),
        data_case("csv_header_only", "d.csv", b"text,label\n", &[], "d.csv: no examples found"),
        data_case("csv_not_utf8", "d.csv", b"text,label\nfine,pos\nbad \xff\xfe,neg\n", &[], "d.csv:3: byte 5 of this line is not UTF-8 text"),
        data_case("csv_one_label", "d.csv", b"text,label\na,pos\nb,pos\n", &[], "found 1 label(s) [\"pos\"]; classification needs at least 2"),
        data_case("csv_no_labels_at_all", "d.csv", b"text,label\na,\nb,\n", &[], "found 0 label(s)"),
        data_case("jsonl_invalid_json", "d.jsonl", b"{\"text\":\"a\",\"label\":\"x\"}\nnot json\n", &[], "d.jsonl:2: not valid JSON"),
        data_case("jsonl_not_an_object", "d.jsonl", b"{\"text\":\"a\",\"label\":\"x\"}\n[1,2]\n", &[], "d.jsonl:2: expected a JSON object per line"),
        data_case("jsonl_no_text_field", "d.jsonl", b"{\"text\":\"a\",\"label\":\"x\"}\n{\"txt\":\"b\",\"label\":\"y\"}\n", &[], "d.jsonl:2: expected a string field `text`"),
        data_case("jsonl_label_is_a_list", "d.jsonl", b"{\"text\":\"a\",\"label\":[\"x\"]}\n", &[], "d.jsonl:1: field `label` must be a string, number or boolean"),
        data_case("jsonl_labels_two_ways", "d.jsonl", b"{\"text\":\"a\",\"label\":\"positive\"}\n{\"text\":\"b\",\"label\":\"negative\"}\n{\"text\":\"c\",\"label\":1}\n", &[], "d.jsonl:3: label 1 is a number or boolean but line 1's label \"positive\" is a string"),
        data_case("jsonl_not_utf8", "d.jsonl", b"{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"\xc3\x28\",\"label\":\"y\"}\n", &[], "d.jsonl:2: byte 10 of this line is not UTF-8 text"),
        data_case("jsonl_tokens_not_strings", "d.jsonl", b"{\"tokens\":[1,2],\"tags\":[\"O\",\"O\"]}\n", &["--task", "token-classification"], "d.jsonl:1: field `tokens` must be an array of strings"),
        data_case("jsonl_tokens_and_tags_differ", "d.jsonl", b"{\"tokens\":[\"a\",\"b\"],\"tags\":[\"O\"]}\n", &["--task", "token-classification"], "d.jsonl:1: 2 tokens but 1 tags"),
        data_case("conll_one_column", "d.conll", b"John B-PER\nlives\n\nParis B-LOC\n", &["--task", "token-classification"], "d.conll:2: expected a token and a tag separated by a tab or space, found `lives`"),
        data_case("conll_three_columns", "d.conll", b"John B-PER\nNew York B-LOC\n\nParis B-LOC\n", &["--task", "token-classification"], "d.conll:2: expected 2 columns like line 1, found 3 in `New York B-LOC`"),
        data_case("unknown_extension", "d.parquet", b"PAR1", &[], "cannot tell the format of @/d.parquet from its extension; give --format jsonl|csv|conll|text"),
        data_case("unknown_format_flag", "d.csv", ok, &["--format", "xlsx"], "unknown format `xlsx`; expected jsonl, csv, conll or text"),
        data_case("text_file_empty", "d.txt", b"\n\n", &["--task", "masked-lm"], "d.txt: the file is empty"),
        data_case("labels_flag_misses_one", "d.csv", ok, &["--labels", "pos,meh"], "d.csv:3: unknown label `neg`"),
        data_case("validation_unknown_label", "d.csv", ok, &["--validation-file", "@/v.jsonl"], "v.jsonl:2: unknown label `meh`")
            .file("v.jsonl", "{\"text\":\"hm\",\"label\":\"pos\"}\n{\"text\":\"eh\",\"label\":\"meh\"}\n"),
        data_case("validation_missing", "d.csv", ok, &["--validation-file", "@/nope.csv"], "reading @/nope.csv"),
        {
            let mut c = case("train_file_missing", &[], "reading @/missing.csv");
            c.args = train_on("@/missing.csv", &[]);
            c
        },
        {
            let mut c = case("train_file_is_a_folder", &[], "reading @/folder.csv").file("folder.csv/x", "x");
            c.args = train_on("@/folder.csv", &[]);
            c
        },
        data_case("skip_bad_rows_leaves_one_label", "d.csv", b"text,label\na,pos\nb,neg,x\n", &["--skip-bad-rows"], "found 1 label(s)"),
    ];
    run("data", cases);
}

#[test]
fn bad_configs_and_options() {
    let ok = TRAIN_CSV.as_bytes();
    let d = |name, extra: &[&str], expect| data_case(name, "d.csv", ok, extra, expect);
    let cases = vec![
        d("labels_twice", &["--labels", "pos,pos,neg"], "config field `labels`: `pos` is listed twice"),
        d("label_empty", &["--labels", "pos,,neg"], "config field `labels`: a label name is empty"),
        d("metric_unknown", &["--metric-for-best", "nonsense"], "config field `metric_for_best`: unknown metric `nonsense` for this task; expected one of accuracy, macro_f1, loss"),
        d("metric_of_another_task", &["--metric-for-best", "perplexity"], "unknown metric `perplexity`"),
        d("eval_max_examples_zero", &["--eval-max-examples", "0"], "config field `eval_max_examples`: must be at least 1"),
        d("weight_decay_negative", &["--weight-decay=-5"], "config field `weight_decay`: must be a number of 0 or more"),
        d("weight_decay_nan", &["--weight-decay", "nan"], "config field `weight_decay`"),
        d("max_grad_norm_negative", &["--max-grad-norm=-1"], "config field `max_grad_norm`: must be a number of 0 or more"),
        d("lr_negative_spaced", &["--lr", "-1"], "config field `lr`: must be a positive number"),
        d("lr_zero", &["--lr", "0"], "config field `lr`: must be a positive number"),
        d("lr_nan", &["--lr", "NaN"], "config field `lr`: must be a positive number"),
        d("lr_not_a_number", &["--lr", "fast"], "invalid value 'fast' for '--lr <LR>'"),
        d("batch_zero", &["--batch-size", "0"], "config field `batch_size`: must be at least 1"),
        d("batch_negative", &["--batch-size", "-4"], "invalid value '-4' for '--batch-size <BATCH_SIZE>'"),
        d("grad_accum_zero", &["--grad-accum", "0"], "config field `grad_accum`: must be at least 1"),
        d("max_len_tiny", &["--max-len", "2"], "config field `max_len`: must be at least 4"),
        d("max_steps_zero", &["--max-steps", "0"], "config field `max_steps`: must be at least 1"),
        d("warmup_ratio_too_big", &["--warmup-ratio", "1.5"], "config field `warmup_ratio`: must be in [0, 1)"),
        d("mlm_probability_zero", &["--mlm-probability", "0"], "config field `mlm_probability`: must be in (0, 1)"),
        d("eval_every_zero", &["--eval-every", "0"], "config field `eval_every`: must be at least 1"),
        d("save_every_zero", &["--save-every", "0"], "config field `save_every`: must be at least 1"),
        d("lora_r_zero", &["--lora-r", "0"], "config field `method`: r must be at least 1"),
        d("lora_dropout_one", &["--lora-dropout", "1.5"], "config field `method`: dropout must be in [0, 1), got 1.5"),
        d("lora_alpha_infinite", &["--lora-alpha", "inf"], "--lora-alpha: alpha `inf`: expected a finite number"),
        d("lora_targets_match_nothing", &["--lora-targets", "attn_q"], "LoRA target modules [\"attn_q\"] match no linear layer"),
        d("lora_rank_too_big_for_memory", &["--lora-r", "100000"], "this job needs about").also("nothing was started: lower the batch size or max_len"),
        d("memory_budget_not_a_number", &[], "TUNELAB_MEMORY_AVAILABLE_MIB=\"lots\": expected a whole number of MiB")
            .env("TUNELAB_MEMORY_AVAILABLE_MIB", "lots"),
        d("prompt_longer_than_positions", &["--method", "prompt", "--prompt-tokens", "10000"], "config field `method`: 10000 virtual tokens and the longest input").also("but the model has 512 (max_position_embeddings)"),
        d("prompt_zero_tokens", &["--method", "prompt", "--prompt-tokens", "0"], "num_virtual_tokens must be at least 1"),
        d("prompt_init_text_empty", &["--method", "prompt", "--prompt-init-text", "   "], "the prompt's initialisation text gives no tokens"),
        d("lora_flag_without_lora", &["--method", "full", "--lora-r", "4"], "--lora-r needs --method lora"),
        d("prompt_flag_without_prompt", &["--prompt-tokens", "4"], "--prompt-tokens needs --method prompt"),
        d("method_unknown", &["--method", "magic"], "unknown method `magic`; expected one of full, bitfit, lora, prompt, ia3"),
        d("ia3_flag_without_ia3", &["--ia3-targets", "key"], "--ia3-targets needs --method ia3"),
        d("ia3_feedforward_not_a_target", &["--method", "ia3", "--ia3-targets", "key,value"], "config field `method`: feedforward_modules must be a subset of target_modules: `output.dense` is not a target"),
        d("ia3_targets_match_nothing", &["--method", "ia3", "--ia3-targets", "k_proj", "--ia3-feedforward", "k_proj"], "IA3 target modules [\"k_proj\"] match no linear layer"),
        d("schedule_unknown", &["--schedule", "stepwise"], "unknown schedule `stepwise`; expected linear, cosine or constant"),
        d("task_unknown", &["--task", "poetry"], "unknown task `poetry`; expected one of"),
        d("from_scratch_with_lora", &["--task", "masked-lm", "--from-scratch"], "--from-scratch trains every weight: use --method full"),
        d("from_scratch_classification", &["--from-scratch", "--method", "full"], "config field `from_scratch`: only language-model pretraining (masked or causal LM) starts from scratch"),
        d("max_steps_negative", &["--max-steps", "-1"], "invalid value '-1' for '--max-steps <MAX_STEPS>'"),
        d("device_unknown", &["--device", "tpu"], "tpu"),
        case("task_without_data", &["train", "--task", "classification", "--output-dir", "@/out"], "task `classification` needs --train-file"),
        case("config_unknown_key", &["train", "--config", "@/run.toml"], "unknown field `batch_sise`").file("run.toml", "batch_sise = 8\n"),
        case("config_method_key_misspelled", &["train", "--config", "@/run.toml"], "config field `method`: @/run.toml: unknown key `rank` for method `lora`; expected alpha, dropout, method, r, target_modules")
            .file("run.toml", "task = \"sentiment\"\n[method]\nmethod = \"lora\"\nrank = 4\n"),
        case("config_full_with_lora_keys", &["train", "--config", "@/run.toml"], "unknown key `r` for method `full`")
            .file("run.toml", "[method]\nmethod = \"full\"\nr = 4\n"),
        case("config_bad_toml", &["train", "--config", "@/run.toml"], "@/run.toml").also("TOML parse error").file("run.toml", "task = \"sentiment\n"),
        case("config_wrong_type", &["train", "--config", "@/run.toml"], "@/run.toml").also("invalid type").file("run.toml", "batch_size = \"eight\"\n"),
        case("config_bad_json", &["train", "--config", "@/run.json"], "@/run.json").file("run.json", "{\"task\": }"),
        case("config_missing", &["train", "--config", "@/none.toml"], "reading @/none.toml"),
        case("config_method_unknown", &["train", "--config", "@/run.toml"], "unknown variant `magic`").file("run.toml", "[method]\nmethod = \"magic\"\n"),
        case("overwrite_with_resume", &["train", "--resume", "@/run", "--overwrite-output-dir"], "cannot be used with"),
    ];
    run("config", cases);
}
