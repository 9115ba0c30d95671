//! Text generation from a causal language model with a KV cache: the prompt is read once,
//! then each new token costs one position (its keys and values join the cache). Tokens are
//! chosen by [`Sampling`] (greedy, or temperature / top-k / top-p draws from a seeded
//! stream) and handed out as text while they come. The CLI (`tunelab generate`) and the web
//! app share it.

pub mod sampling;

pub use sampling::{Sampling, SamplingError};

use crate::Shape;
use crate::backend::{Backend, BackendError};
use crate::models::heads::Task;
use crate::models::kv_cache::KvCache;
use crate::models::task_model::TaskModel;
use crate::nn::Ctx;
use crate::params::ParamStore;
use crate::rng::Rng;
use crate::tape::Tape;
use crate::tokenizer::{Tokenizer, TokenizerError};
use serde::{Deserialize, Serialize};

/// What to generate and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateConfig {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Seeds the draws (the same seed, prompt and model give the same text).
    pub seed: u64,
    /// Stop at the model's end-of-sequence token (`eos_token_id`).
    pub stop_at_eos: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 50,
            sampling: Sampling::default(),
            seed: 0,
            stop_at_eos: true,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// The model produced its end-of-sequence token.
    Eos,
    /// Every position of the model is used (its `n_positions`).
    ContextFull,
    /// The caller asked to stop.
    Cancelled,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The prompt's token ids as the model read them.
    pub prompt_ids: Vec<u32>,
    /// The new tokens (an end-of-sequence token that stopped it included).
    pub ids: Vec<u32>,
    /// The new tokens' text (without an end-of-sequence token).
    pub text: String,
    pub stop: Stop,
}

/// Anything that stops a generation from starting or going on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    #[error("generation needs a causal language model; this one was trained for {0}")]
    NotCausal(String),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(
        "the prompt has {tokens} tokens{extra} but the model reads at most {max} positions: shorten the prompt"
    )]
    TooLong {
        tokens: usize,
        extra: String,
        max: usize,
    },
    #[error("the prompt is empty and the model has no bos_token_id to start from")]
    EmptyPrompt,
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Generates a continuation of `prompt`. `on_text` receives each new piece of text as soon
/// as it decodes to whole characters; returning `false` stops (then [`Stop::Cancelled`]).
pub async fn generate<B: Backend>(
    backend: &B,
    model: &TaskModel<B>,
    store: &ParamStore<B>,
    tokenizer: &Tokenizer,
    prompt: &str,
    config: &GenerateConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation, GenerateError> {
    let prompt_ids = tokenizer.encode_text(prompt, usize::MAX)?;
    generate_ids(
        backend, model, store, tokenizer, prompt_ids, config, on_text,
    )
    .await
}

/// [`generate`] from the prompt's token ids (with the special tokens the tokenizer adds).
pub async fn generate_ids<B: Backend>(
    backend: &B,
    model: &TaskModel<B>,
    store: &ParamStore<B>,
    tokenizer: &Tokenizer,
    prompt_ids: Vec<u32>,
    config: &GenerateConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation, GenerateError> {
    let mut g = Generator::new(backend, model, store, tokenizer, prompt_ids, config)?;
    while let Some(piece) = g.step().await? {
        if !piece.is_empty() && !on_text(&piece) {
            g.cancel();
        }
    }
    g.finish()
}

/// Generation one token at a time, for callers that do something between tokens (the web
/// worker reads its messages, so a Stop button works).
pub struct Generator<'a, B: Backend> {
    backend: &'a B,
    model: &'a TaskModel<B>,
    store: &'a ParamStore<B>,
    tokenizer: &'a Tokenizer,
    config: GenerateConfig,
    rng: Rng,
    cache: KvCache<B::Tensor>,
    prompt_ids: Vec<u32>,
    /// The prompt and the new tokens (the repetition penalty's history).
    history: Vec<u32>,
    /// What the next step feeds the model.
    feed: Vec<u32>,
    ids: Vec<u32>,
    /// The text handed out so far.
    shown: String,
    stop: Option<Stop>,
    max_positions: usize,
    eos: Vec<u32>,
}

impl<B: Backend> std::fmt::Debug for Generator<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("prompt_ids", &self.prompt_ids)
            .field("ids", &self.ids)
            .field("cached", &self.cache.len)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl<'a, B: Backend> Generator<'a, B> {
    /// Checks the model, the settings and the prompt (an empty one starts from the model's
    /// `bos_token_id`).
    pub fn new(
        backend: &'a B,
        model: &'a TaskModel<B>,
        store: &'a ParamStore<B>,
        tokenizer: &'a Tokenizer,
        mut prompt_ids: Vec<u32>,
        config: &GenerateConfig,
    ) -> Result<Self, GenerateError> {
        let task = match model.head.task {
            Task::CausalLm => None,
            Task::SequenceClassification { .. } => Some("sequence classification"),
            Task::TokenClassification { .. } => Some("token classification"),
            Task::MaskedLm => Some("masked LM"),
        };
        if let Some(task) = task {
            return Err(GenerateError::NotCausal(task.into()));
        }
        config.sampling.validate()?;
        if prompt_ids.is_empty() {
            prompt_ids.push(
                model
                    .config
                    .bos_token_id()
                    .ok_or(GenerateError::EmptyPrompt)?,
            );
        }
        let virtual_tokens = model.prompt_len(backend, store);
        let max_positions = model.config.dims().max_positions;
        if virtual_tokens + prompt_ids.len() > max_positions {
            return Err(GenerateError::TooLong {
                tokens: prompt_ids.len(),
                extra: if virtual_tokens > 0 {
                    format!(" (after {virtual_tokens} virtual tokens)")
                } else {
                    String::new()
                },
                max: max_positions,
            });
        }
        Ok(Self {
            backend,
            model,
            store,
            tokenizer,
            config: config.clone(),
            rng: Rng::new(config.seed),
            cache: KvCache::default(),
            history: prompt_ids.clone(),
            feed: prompt_ids.clone(),
            prompt_ids,
            ids: Vec::new(),
            shown: String::new(),
            stop: (config.max_new_tokens == 0).then_some(Stop::MaxNewTokens),
            max_positions,
            eos: model.config.eos_token_ids(),
        })
    }

    /// One new token: the text it adds (empty while a character is incomplete, the rest of
    /// the text with the last token), or `None` once generation has ended.
    pub async fn step(&mut self) -> Result<Option<String>, GenerateError> {
        if self.stop.is_some() {
            return Ok(None);
        }
        let mut logits = next_logits(
            self.backend,
            self.model,
            self.store,
            &self.feed,
            &mut self.cache,
        )
        .await?;
        let vocab = self.tokenizer.vocab_size();
        let id = self
            .config
            .sampling
            .pick(&mut logits, vocab, &self.history, &mut self.rng);
        self.ids.push(id);
        self.history.push(id);
        self.feed = vec![id];
        self.stop = if self.config.stop_at_eos && self.eos.contains(&id) {
            Some(Stop::Eos)
        } else if self.ids.len() >= self.config.max_new_tokens {
            Some(Stop::MaxNewTokens)
        } else if self.cache.len >= self.max_positions {
            // The token just picked needs no position; the next one would.
            Some(Stop::ContextFull)
        } else {
            None
        };
        let text = self.tokenizer.decode(self.body())?;
        // Byte-level tokens may end inside a character: wait for the rest, unless this is
        // the last token.
        if self.stop.is_none() && text.ends_with('\u{FFFD}') {
            return Ok(Some(String::new()));
        }
        let piece = text
            .strip_prefix(self.shown.as_str())
            .unwrap_or("")
            .to_string();
        self.shown = text;
        Ok(Some(piece))
    }

    /// Ends generation before the next token ([`Stop::Cancelled`]).
    pub fn cancel(&mut self) {
        self.stop = Some(Stop::Cancelled);
    }

    /// The new tokens without an end-of-sequence token that stopped them.
    fn body(&self) -> &[u32] {
        match self.stop {
            Some(Stop::Eos) => &self.ids[..self.ids.len() - 1],
            _ => &self.ids,
        }
    }

    pub fn finish(self) -> Result<Generation, GenerateError> {
        Ok(Generation {
            text: self.tokenizer.decode(self.body())?,
            prompt_ids: self.prompt_ids,
            ids: self.ids,
            stop: self.stop.unwrap_or(Stop::Cancelled),
        })
    }
}

/// The logits after `ids`, the tokens that follow what `cache` holds (one forward step on a
/// fresh tape, every parameter frozen).
pub async fn next_logits<B: Backend>(
    backend: &B,
    model: &TaskModel<B>,
    store: &ParamStore<B>,
    ids: &[u32],
    cache: &mut KvCache<B::Tensor>,
) -> Result<Vec<f32>, BackendError> {
    let mut tape = Tape::new(backend.clone());
    let bound = store.bind_frozen(&mut tape);
    let mut cx = Ctx {
        tape: &mut tape,
        bound: &bound,
        adapters: &model.adapters,
        dropout: None,
    };
    let input = backend.upload_u32(ids, &Shape::new([1, ids.len()]))?;
    let logits = model.decode_logits(&mut cx, &input, cache)?;
    backend.download(tape.value(logits)?).await
}
