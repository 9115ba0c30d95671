//! The run's options: the form's state, its URL encoding (shareable links carry the
//! configuration, never the data), presets, and the memory preflight.

use tunelab_core::data::ParseOptions;
use tunelab_core::models::ModelConfig;
use tunelab_core::models::heads::Task;
use tunelab_core::models::task_model::count_params;
use tunelab_core::peft::{Method, Opt, REGISTRY};
use tunelab_core::trainer::{TaskKind, TrainConfig};

/// Everything the form sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Form {
    /// A sample dataset id (`sentiment`, …) or `upload`.
    pub data: String,
    /// The chosen method's registry name.
    pub method: String,
    /// Every registered method with the options set for it (switching methods keeps each
    /// one's options).
    pub methods: Vec<Method>,
    pub steps: u64,
    pub batch: usize,
    pub max_len: usize,
    /// Empty: the method's default.
    pub lr: String,
    pub eval_every: u64,
    pub eval_examples: usize,
    pub save_every: u64,
    pub seed: u64,
    pub skip_bad: bool,
    pub cpu: bool,
    /// WebGPU even on a software adapter.
    pub gpu: bool,
}

impl Default for Form {
    fn default() -> Self {
        Self {
            data: "sentiment".into(),
            method: "lora".into(),
            methods: REGISTRY
                .iter()
                .filter_map(|i| Method::named(i.name))
                .collect(),
            steps: 60,
            batch: 8,
            max_len: 64,
            lr: String::new(),
            eval_every: 20,
            eval_examples: 200,
            save_every: 10,
            seed: 42,
            skip_bad: false,
            cpu: false,
            gpu: false,
        }
    }
}

/// Classroom presets: name, one-line promise, and the form they set.
pub fn presets() -> Vec<(&'static str, &'static str, Form)> {
    let base = Form::default();
    vec![
        (
            "Sentiment in 2 minutes",
            "Teach the model to tell positive from negative reviews with LoRA.",
            Form {
                steps: 40,
                batch: 8,
                max_len: 48,
                eval_every: 20,
                eval_examples: 100,
                ..base.clone()
            },
        ),
        (
            "Spot names and places",
            "Tag people, places and companies in tweets (NER) with LoRA.",
            Form {
                data: "ner".into(),
                steps: 80,
                max_len: 48,
                lr: "0.001".into(),
                ..base.clone()
            },
        ),
        (
            "Spam or not",
            "Filter e-mail spam by tuning only the biases (BitFit).",
            Form {
                data: "spam".into(),
                method: "bitfit".into(),
                steps: 40,
                max_len: 96,
                ..base.clone()
            },
        ),
        (
            "Fill in the blank",
            "Adapt the language model to 1960s American prose (masked LM).",
            Form {
                data: "brown-text".into(),
                steps: 40,
                ..base
            },
        ),
    ]
}

impl Form {
    /// The PEFT method the form describes.
    pub fn method(&self) -> Method {
        self.methods
            .iter()
            .find(|m| m.name() == self.method)
            .or_else(|| self.methods.first())
            .cloned()
            .unwrap_or_else(|| Method::Lora(Default::default()))
    }

    /// The text of a method's option (what its field shows).
    pub fn option(&self, opt: &Opt) -> String {
        self.methods
            .iter()
            .find_map(|m| {
                m.options()
                    .iter()
                    .any(|o| o == opt)
                    .then(|| m.get(opt))
                    .flatten()
            })
            .unwrap_or_default()
    }

    /// The learning rate, if one was typed; an error names the field.
    pub fn lr(&self) -> Result<Option<f64>, String> {
        let t = self.lr.trim();
        if t.is_empty() {
            return Ok(None);
        }
        match t.parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Ok(Some(v)),
            _ => Err(format!(
                "learning rate `{t}`: expected a positive number such as 0.0005"
            )),
        }
    }

    pub fn train_config(&self, model: &str, kind: TaskKind) -> Result<TrainConfig, String> {
        let task = match kind {
            TaskKind::Classification => "classification",
            TaskKind::TokenClassification => "token-classification",
            TaskKind::MaskedLm => "masked-lm",
            TaskKind::CausalLm => "causal-lm",
        };
        let cfg = TrainConfig {
            model: model.to_string(),
            task: task.into(),
            max_len: self.max_len,
            method: self.method(),
            max_steps: Some(self.steps),
            batch_size: self.batch,
            lr: self.lr()?,
            eval_every: Some(self.eval_every.max(1)),
            eval_max_examples: Some(self.eval_examples.max(1)),
            save_every: Some(self.save_every.max(1)),
            seed: self.seed,
            columns: ParseOptions {
                skip_bad: self.skip_bad,
                ..Default::default()
            },
            ..Default::default()
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    /// The query string that reproduces this form.
    pub fn to_query(&self) -> String {
        let d = Form::default();
        let mut q: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String, dv: String| {
            if v != dv {
                q.push((k.into(), v));
            }
        };
        put("data", self.data.clone(), d.data.clone());
        put("method", self.method.clone(), d.method.clone());
        for opt in REGISTRY.iter().flat_map(|i| i.options) {
            put(opt.url, self.option(opt), d.option(opt));
        }
        put("steps", self.steps.to_string(), d.steps.to_string());
        put("batch", self.batch.to_string(), d.batch.to_string());
        put("len", self.max_len.to_string(), d.max_len.to_string());
        put("lr", self.lr.clone(), d.lr.clone());
        put(
            "eval",
            self.eval_every.to_string(),
            d.eval_every.to_string(),
        );
        put(
            "evaln",
            self.eval_examples.to_string(),
            d.eval_examples.to_string(),
        );
        put(
            "save",
            self.save_every.to_string(),
            d.save_every.to_string(),
        );
        put("seed", self.seed.to_string(), d.seed.to_string());
        put("skipbad", self.skip_bad.to_string(), d.skip_bad.to_string());
        put("cpu", self.cpu.to_string(), d.cpu.to_string());
        put("gpu", self.gpu.to_string(), d.gpu.to_string());
        q.iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The form a query string describes; unknown keys and unreadable values are ignored.
    pub fn from_query(query: &str) -> Self {
        let mut f = Form::default();
        for pair in query.trim_start_matches('?').split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            // A shared link with a bad value still opens, with that field's default.
            let _ = f.set(k, &decode(v));
        }
        f
    }

    /// Sets one field from text, by its query key (the form's inputs use the same keys). On
    /// an error the form is unchanged and the message names the field and what it expects.
    pub fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        // A whole number in `min..=max`: the upper bounds keep a shared link from asking the
        // tab for more than it can hold (a rank or prompt beyond the model's size, a batch or
        // length beyond the position table).
        fn whole<T: TryFrom<u64>>(label: &str, v: &str, min: u64, max: u64) -> Result<T, String> {
            match v.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => {
                    T::try_from(n).map_err(|_| format!("{label} `{v}`: too large"))
                }
                _ if max == u64::MAX => Err(format!(
                    "{label} `{v}`: expected a whole number of at least {min}"
                )),
                _ => Err(format!(
                    "{label} `{v}`: expected a whole number from {min} to {max}"
                )),
            }
        }
        const ANY: u64 = u64::MAX;
        fn flag(label: &str, v: &str) -> Result<bool, String> {
            match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(format!("{label} `{v}`: expected true or false")),
            }
        }
        // A method's option, by its form key: the registry says what it takes.
        if let Some((info, opt)) = REGISTRY
            .iter()
            .find_map(|i| i.options.iter().find(|o| o.url == key).map(|o| (i, o)))
        {
            let m = self
                .methods
                .iter_mut()
                .find(|m| m.name() == info.name)
                .ok_or_else(|| format!("`{key}`: the form has no {} options", info.title))?;
            return m.set(opt, v);
        }
        match key {
            "data" => self.data = v.to_string(),
            "method" => {
                if Method::named(v).is_none() {
                    return Err(format!("method `{v}`: expected one of {}", Method::names()));
                }
                self.method = v.to_string();
            }
            "steps" => self.steps = whole("steps", v, 1, ANY)?,
            "batch" => self.batch = whole("batch", v, 1, MAX_BATCH)?,
            "len" => self.max_len = whole("max tokens", v, 4, MAX_LEN)?,
            "lr" => {
                let before = std::mem::replace(&mut self.lr, v.trim().to_string());
                if let Err(e) = self.lr() {
                    self.lr = before;
                    return Err(e);
                }
            }
            "eval" => self.eval_every = whole("evaluate every", v, 1, ANY)?,
            "evaln" => self.eval_examples = whole("eval examples", v, 1, ANY)?,
            "save" => self.save_every = whole("checkpoint every", v, 1, ANY)?,
            "seed" => self.seed = whole("seed", v, 0, ANY)?,
            "skipbad" => self.skip_bad = flag("skip bad rows", v)?,
            "cpu" => self.cpu = flag("cpu", v)?,
            "gpu" => self.gpu = flag("gpu", v)?,
            _ => return Err(format!("`{key}` is not a field of the form")),
        }
        Ok(())
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The largest batch the form takes.
pub const MAX_BATCH: u64 = 256;
/// The longest input the form takes, in tokens.
pub const MAX_LEN: u64 = 512;

/// Parameter counts for the form's method on a model: `(trainable, total)`.
pub fn counts(
    config: &ModelConfig,
    kind: TaskKind,
    num_labels: usize,
    method: &Method,
) -> Result<(usize, usize), String> {
    let task = match kind {
        TaskKind::Classification => Task::SequenceClassification {
            num_labels: num_labels.max(2),
        },
        TaskKind::TokenClassification => Task::TokenClassification {
            num_labels: num_labels.max(2),
        },
        TaskKind::MaskedLm => Task::MaskedLm,
        TaskKind::CausalLm => Task::CausalLm,
    };
    count_params(config, task, method).map_err(|e| e.to_string())
}

pub use tunelab_core::preflight::{memory_estimate, mib};

/// Whether the largest single tensor of a step fits one GPU buffer of `max_buffer` bytes:
/// the word-embedding table, or for masked LM the logits (batch × sequence × vocabulary).
/// Tensors larger than one storage binding are processed in parts, but each lives in one
/// buffer. The error says which tensor needs how much.
pub fn largest_tensor_fits(
    config: &ModelConfig,
    kind: TaskKind,
    batch: usize,
    seq: usize,
    max_buffer: u64,
) -> Result<(), String> {
    // In u64: in 32-bit wasm a usize product of these wraps.
    let d = config.dims();
    let table = d.vocab_size as u64 * d.hidden_size as u64 * 4;
    let logits = if kind == TaskKind::MaskedLm {
        batch as u64 * seq as u64 * d.vocab_size as u64 * 4
    } else {
        0
    };
    let (what, largest) = if logits > table {
        ("the masked-LM logits need", logits)
    } else {
        ("the word-embedding table needs", table)
    };
    if largest <= max_buffer {
        Ok(())
    } else {
        Err(format!(
            "{what} {} but this GPU allows {} per buffer",
            mib(largest),
            mib(max_buffer)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Form;

    /// all-MiniLM-L6-v2's shape.
    fn minilm() -> tunelab_core::models::ModelConfig {
        tunelab_core::models::ModelConfig::from_json(
            "c",
            r#"{"model_type":"bert","vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,
               "num_attention_heads":12,"intermediate_size":1536,"max_position_embeddings":512}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_query_string_round_trips_the_form() {
        let mut f = Form {
            data: "ner".into(),
            method: "prompt".into(),
            steps: 3,
            lr: "0.01".into(),
            cpu: true,
            ..Form::default()
        };
        f.set("vt", "7").unwrap();
        f.set("targets", "query, key").unwrap();
        f.set("ia3targets", "key,output.dense").unwrap();
        // Feed-forward modules must stay targets; nothing changes on a refusal.
        let e = f.set("ia3targets", "key").unwrap_err();
        assert!(e.contains("`output.dense` is not a target"), "{e}");
        f.set("ia3ff", "").unwrap_err();
        let q = f.to_query();
        assert!(
            q.contains("method=prompt")
                && q.contains("targets=query%2Ckey")
                && q.contains("vt=7")
                && q.contains("ia3targets=key%2Coutput.dense"),
            "{q}"
        );
        assert_eq!(Form::from_query(&q), f);
        assert_eq!(Form::from_query(""), Form::default());
        // Unreadable values keep the defaults; bad escapes and non-ASCII never panic.
        assert_eq!(Form::from_query("?steps=lots&method=magic").steps, 60);
        let lora = |f: &Form| f.methods.iter().find(|m| m.name() == "lora").cloned();
        assert_eq!(
            lora(&Form::from_query("?steps=0&dropout=1")),
            lora(&Form::default())
        );
        let odd = Form::from_query("targets=%zz%C3%A9%");
        let (_, t) = tunelab_core::peft::Method::option("lora-targets").unwrap();
        assert_eq!(odd.option(t), "%zz\u{e9}%");
    }

    #[test]
    fn a_field_typed_wrong_is_an_error_naming_it_and_changes_nothing() {
        let mut f = Form::default();
        for (key, value, says) in [
            (
                "steps",
                "lots",
                "steps `lots`: expected a whole number of at least 1",
            ),
            ("steps", "0", "at least 1"),
            ("batch", "-2", "batch `-2`"),
            ("r", "2.5", "rank r `2.5`"),
            ("alpha", "0", "alpha `0`: expected a positive number"),
            ("dropout", "1", "up to (not including) 1"),
            ("dropout", "NaN", "dropout `NaN`"),
            ("lr", "fast", "learning rate `fast`"),
            ("lr", "-1", "learning rate `-1`"),
            ("method", "magic", "method `magic`"),
            ("cpu", "yes", "expected true or false"),
            ("nope", "1", "`nope` is not a field"),
            // Shared links cannot ask for more than a tab can hold.
            (
                "r",
                "100000",
                "rank r `100000`: expected a whole number from 1 to 1024",
            ),
            (
                "vt",
                "10000",
                "virtual tokens `10000`: expected a whole number from 1 to 512",
            ),
            (
                "batch",
                "100000",
                "batch `100000`: expected a whole number from 1 to 256",
            ),
            (
                "len",
                "4096",
                "max tokens `4096`: expected a whole number from 4 to 512",
            ),
        ] {
            let err = f.set(key, value).unwrap_err();
            assert!(err.contains(says), "{key}={value}: {err}");
            assert_eq!(f, Form::default(), "{key}={value} changed the form");
        }
        f.set("steps", " 12 ").unwrap();
        f.set("dropout", "0.25").unwrap();
        f.set("lr", "").unwrap();
        f.set("lr", "3e-4").unwrap();
        let (_, dropout) = tunelab_core::peft::Method::option("dropout").unwrap();
        assert_eq!(
            (f.steps, f.option(dropout), f.lr.as_str()),
            (12, "0.25".into(), "3e-4")
        );
        f.set("method", "ia3").unwrap();
        assert_eq!(f.method().name(), "ia3");
    }

    #[test]
    fn lora_trains_a_small_fraction_and_memory_grows_with_the_batch() {
        let cfg = minilm();
        let f = Form::default();
        let (t, all) = super::counts(
            &cfg,
            tunelab_core::trainer::TaskKind::Classification,
            2,
            &f.method(),
        )
        .unwrap();
        // LoRA r=8 on query and value of 6 layers, plus pooler-free classifier head.
        assert_eq!(t, 6 * 2 * 8 * (384 + 384) + 384 * 2 + 2);
        assert!(all > 22_000_000);
        let m8 = super::memory_estimate(&cfg, t, all, 8, 64);
        let m16 = super::memory_estimate(&cfg, t, all, 16, 64);
        assert!(m16 > m8 && m8 > all as u64 * 4);
    }

    /// The preflight refuses only a tensor larger than one buffer: MiniLM's 47 MB table
    /// trains on a 128 MiB adapter (it is bound in parts), masked LM's logits at batch 16 ×
    /// 128 (250 MB) need a 256 MiB buffer, and the message names the tensor and the sizes.
    #[test]
    fn the_preflight_refuses_only_tensors_larger_than_one_buffer() {
        use tunelab_core::trainer::TaskKind;
        let cfg = minilm();
        let fits = |kind, batch, max: u64| super::largest_tensor_fits(&cfg, kind, batch, 128, max);
        let (mib128, mib256) = (128u64 << 20, 256u64 << 20);
        assert_eq!(fits(TaskKind::Classification, 16, mib128), Ok(()));
        assert_eq!(fits(TaskKind::MaskedLm, 4, mib128), Ok(()));
        assert_eq!(fits(TaskKind::MaskedLm, 16, mib256), Ok(()));
        let e = fits(TaskKind::MaskedLm, 16, mib128).unwrap_err();
        assert!(
            e.contains("masked-LM logits") && e.contains("238.5 MiB") && e.contains("128.0 MiB"),
            "{e}"
        );
        let e = fits(TaskKind::Classification, 16, 32 << 20).unwrap_err();
        assert!(e.contains("word-embedding table needs 44.7 MiB"), "{e}");
    }
}
