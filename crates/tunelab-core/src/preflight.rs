//! Memory estimates made before anything is loaded, from the model's `config.json` and the
//! method alone: the web page's preflight shows them against the browser's budget, and the
//! CLI refuses a job whose estimate exceeds the machine's available memory (rather than being
//! killed half-way by the operating system). All arithmetic is in `u64`, so nothing wraps in
//! 32-bit wasm.

use crate::data::Features;
use crate::models::ModelConfig;
use crate::peft::Method;
use crate::trainer::ConfigError;

/// Estimated device memory of a training step in bytes: the weights, the gradients and AdamW
/// moments of the trainable part, and the activations kept for the backward pass.
pub fn memory_estimate(
    config: &ModelConfig,
    trainable: usize,
    total: usize,
    batch: usize,
    seq: usize,
) -> u64 {
    let d = config.dims();
    let (c, i, l, h) = (
        d.hidden_size as u64,
        d.intermediate_size as u64,
        d.num_hidden_layers as u64,
        d.num_attention_heads as u64,
    );
    let (b, t) = (batch as u64, seq as u64);
    let weights = (total as u64).saturating_mul(4);
    let training = (trainable as u64).saturating_mul(4 * 3);
    // Per layer: ~12 hidden-sized and 2 intermediate-sized activations per token, and the
    // attention probabilities (recomputed in the fused kernel, but budgeted once).
    let acts = l * b * t * (12 * c + 2 * i) * 4 + l * b * h * t * t * 4;
    weights.saturating_add(training).saturating_add(acts)
}

/// Host memory a checkpoint takes while it is written: the trainable weights and both AdamW
/// moments read back, and the file's bytes.
pub fn checkpoint_bytes(trainable: usize) -> u64 {
    (trainable as u64).saturating_mul(4 * 3 * 2)
}

/// Host memory of a native job: the base weights as read from disk, a checkpoint being
/// written, and — when the device is the CPU (`on_host`) — the training step itself.
pub fn host_estimate(
    config: &ModelConfig,
    trainable: usize,
    total: usize,
    batch: usize,
    seq: usize,
    on_host: bool,
) -> u64 {
    let read = (total as u64).saturating_mul(4);
    let step = if on_host {
        memory_estimate(config, trainable, total, batch, seq)
    } else {
        0
    };
    read.saturating_add(checkpoint_bytes(trainable))
        .saturating_add(step)
}

/// The memory a job may take, and where its step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Bytes available (Linux's `MemAvailable`, or what the user allows).
    pub available: u64,
    /// The training step runs in host memory (the CPU device).
    pub on_host: bool,
}

/// Refuses a job whose host-memory estimate exceeds `budget`, before anything large is
/// allocated: the operating system would kill it half-way otherwise.
pub fn check_memory(
    config: &ModelConfig,
    trainable: usize,
    total: usize,
    batch: usize,
    seq: usize,
    budget: MemoryBudget,
) -> Result<(), ConfigError> {
    let need = host_estimate(config, trainable, total, batch, seq, budget.on_host);
    if need <= budget.available {
        return Ok(());
    }
    Err(ConfigError {
        field: "batch_size",
        reason: format!(
            "this job needs about {} of memory ({trainable} trainable of {total} parameters, batch {batch} x {seq} tokens) but {} is available; nothing was started: lower the batch size or max_len, or use a smaller method (e.g. a lower LoRA rank)",
            mib(need),
            mib(budget.available)
        ),
    })
}

/// Positions the model takes for inputs (RoBERTa's table less its offset: its positions
/// start after the padding id).
pub fn position_limit(config: &ModelConfig) -> usize {
    config.dims().max_positions
}

/// The longest input of `features` must fit the model's position table, with the virtual
/// tokens prompt tuning prepends to every input.
pub fn check_positions(
    config: &ModelConfig,
    method: &Method,
    features: &[&Features],
) -> Result<(), ConfigError> {
    let virtual_tokens = method.virtual_tokens();
    let longest = features
        .iter()
        .flat_map(|f| f.items.iter().map(|i| i.ids.len()))
        .max()
        .unwrap_or(0);
    let limit = position_limit(config);
    let need = virtual_tokens.saturating_add(longest);
    if need > limit && virtual_tokens == 0 {
        return Err(ConfigError {
            field: "max_len",
            reason: format!(
                "the longest input has {longest} tokens but the model has {limit} positions (max_position_embeddings / n_positions); use a max_len of at most {limit}"
            ),
        });
    }
    if need > limit {
        return Err(ConfigError {
            field: "method",
            reason: format!(
                "{virtual_tokens} virtual tokens and the longest input ({longest} tokens) need {need} positions, but the model has {limit} (max_position_embeddings); use fewer virtual tokens or a shorter max_len"
            ),
        });
    }
    Ok(())
}

/// `b` bytes in MiB, one decimal.
pub fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// Available memory in bytes from `/proc/meminfo`'s text (`MemAvailable`).
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> ModelConfig {
        ModelConfig::from_json(
            "config.json",
            r#"{"model_type":"bert","vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,
                "num_attention_heads":12,"intermediate_size":1536,"max_position_embeddings":512}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_huge_lora_rank_is_estimated_beyond_any_laptop() {
        let c = minilm();
        // r = 100000 on query and value of 6 layers: 2 * 6 * 100000 * (384 + 384) weights.
        let trainable = 2 * 6 * 100_000 * 768;
        let est = host_estimate(&c, trainable, 22_700_000 + trainable, 16, 128, true);
        assert!(est > 30 << 30, "{}", mib(est));
        let small = host_estimate(&c, 150_000, 22_850_000, 16, 128, true);
        assert!(small < 1 << 30, "{}", mib(small));
        // Off the host, the step's memory is the device's.
        assert!(host_estimate(&c, 150_000, 22_850_000, 16, 128, false) < small);
    }

    #[test]
    fn available_memory_from_meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(text), Some(2048 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }
}
