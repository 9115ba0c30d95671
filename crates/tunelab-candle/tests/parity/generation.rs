//! Generation with a KV cache on the tiny GPT-2: greedy picks as transformers' `generate`
//! makes them (`generate-gpt2.json`, and each causal-LM parity fixture's `generated`, made
//! with the method applied), and at every step the cached logits equal those of a full
//! forward pass over the whole text so far.

use super::{Fixture, fixtures, host, nan_max};
use tunelab_candle::Candle;
use tunelab_core::generate::{self, GenerateConfig, Sampling, Stop};
use tunelab_core::models::kv_cache::KvCache;
use tunelab_core::models::task_model::TaskModel;
use tunelab_core::params::ParamStore;
use tunelab_core::tokenizer::Tokenizer;

fn tokenizer() -> Tokenizer {
    let json = std::fs::read(fixtures().join("tiny-gpt2/tokenizer.json")).unwrap();
    Tokenizer::from_json("tokenizer.json", &json, 300).unwrap()
}

fn greedy(
    model: &TaskModel<Candle>,
    store: &ParamStore<Candle>,
    prompt: Vec<u32>,
    max_new_tokens: usize,
    repetition_penalty: f32,
) -> generate::Generation {
    let config = GenerateConfig {
        max_new_tokens,
        sampling: Sampling {
            repetition_penalty,
            ..Sampling::default()
        },
        ..GenerateConfig::default()
    };
    pollster::block_on(generate::generate_ids(
        &Candle::cpu(),
        model,
        store,
        &tokenizer(),
        prompt,
        &config,
        &mut |_| true,
    ))
    .unwrap()
}

/// The logits after each prefix of `ids` (from `start` tokens on), once through the cache
/// step by step and once by a full forward pass; they must agree.
fn cached_logits_match_full_passes(
    case: &str,
    model: &TaskModel<Candle>,
    store: &ParamStore<Candle>,
    ids: &[u32],
    start: usize,
) {
    let be = Candle::cpu();
    let mut cache = KvCache::default();
    let mut fed = start;
    let mut step = pollster::block_on(generate::next_logits(
        &be,
        model,
        store,
        &ids[..start],
        &mut cache,
    ))
    .unwrap();
    loop {
        let input = model
            .input(&be, store, &ids[..fed], &vec![1.0; fed], 1, fed)
            .unwrap();
        let f = model.forward(&be, store, &input, None, false).unwrap();
        let all = host(f.tape.value(f.logits).unwrap());
        let full = &all[all.len() - step.len()..];
        let diff = full
            .iter()
            .zip(&step)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, nan_max);
        assert!(
            diff < 1e-5,
            "{case}: {fed} tokens: cached logits differ by {diff}"
        );
        if fed == ids.len() {
            break;
        }
        step = pollster::block_on(generate::next_logits(
            &be,
            model,
            store,
            &ids[fed..fed + 1],
            &mut cache,
        ))
        .unwrap();
        fed += 1;
    }
    assert_eq!(cache.len, fed + model.prompt_len(&be, store), "{case}");
}

/// New tokens up to and including the first end-of-sequence token (id 0).
fn until_eos(ids: &[u32]) -> &[u32] {
    match ids.iter().position(|&i| i == 0) {
        Some(n) => &ids[..=n],
        None => ids,
    }
}

/// From `check` for causal LM: the method's model generates as PEFT's did.
pub(super) fn check_generation(
    case: &str,
    model: &TaskModel<Candle>,
    store: &ParamStore<Candle>,
    fx: &Fixture,
    prompt: &[u32],
) {
    let want: Vec<u32> = fx.ints["generated"].iter().map(|&x| x as u32).collect();
    let want = until_eos(&want);
    let g = greedy(model, store, prompt.to_vec(), 12, 1.0);
    assert_eq!(g.ids, want, "{case}: greedy tokens");
    let mut all = prompt.to_vec();
    all.extend(&g.ids);
    cached_logits_match_full_passes(case, model, store, &all, prompt.len());
}

#[test]
fn gpt2_greedy_generation_matches_transformers() {
    let be = Candle::cpu();
    let dir = fixtures().join("tiny-gpt2");
    let files = tunelab_core::session::ModelFiles {
        name: "tiny-gpt2".into(),
        config_json: std::fs::read_to_string(dir.join("config.json")).unwrap(),
        weights: tunelab_core::session::Weights::Single(
            std::fs::read(dir.join("model.safetensors")).unwrap(),
        ),
        tokenizer_json: std::fs::read(dir.join("tokenizer.json")).unwrap(),
    };
    let (_, model, store, tok) = tunelab_core::session::load_causal_lm(be, &files).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("generate-gpt2.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cases.len(), 4);
    let ints = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for c in &cases {
        let prompt = c["prompt"].as_str().unwrap();
        let penalty = c["repetition_penalty"].as_f64().unwrap() as f32;
        let case = format!("{prompt:?} with repetition penalty {penalty}");
        assert_eq!(
            tok.encode_text(prompt, usize::MAX).unwrap(),
            ints(&c["prompt_ids"])
        );
        let want = ints(&c["ids"]);
        let n = c["max_new_tokens"].as_u64().unwrap() as usize;
        let g = greedy(&model, &store, ints(&c["prompt_ids"]), n, penalty);
        assert_eq!(g.ids, want, "{case}");
        let eos = want.last() == Some(&0);
        assert_eq!(
            g.stop,
            if eos { Stop::Eos } else { Stop::MaxNewTokens },
            "{case}"
        );
    }
    // The text streamed piece by piece is the text returned; the positions run out at 24.
    let mut streamed = String::new();
    let config = GenerateConfig {
        max_new_tokens: 100,
        stop_at_eos: false,
        sampling: Sampling {
            temperature: 1.0,
            ..Sampling::default()
        },
        seed: 9,
    };
    let g = pollster::block_on(generate::generate(
        &Candle::cpu(),
        &model,
        &store,
        &tok,
        "The jury said",
        &config,
        &mut |piece| {
            streamed.push_str(piece);
            true
        },
    ))
    .unwrap();
    assert_eq!(g.stop, Stop::ContextFull);
    assert_eq!(
        g.prompt_ids.len() + g.ids.len(),
        24 + 1,
        "the last pick needs no position"
    );
    assert_eq!(streamed, g.text);
    assert_eq!(tok.decode(&g.ids).unwrap(), g.text);
}
