//! 7. The playground: try the model on a text.

use crate::bridge;
use leptos::prelude::*;
use tunelab_core::generate::{GenerateConfig, Sampling, Stop};
use tunelab_core::predict::Prediction;
use tunelab_core::trainer::TaskKind;
use tunelab_web::protocol::Request;

use crate::app::*;

#[component]
pub(crate) fn PlaygroundPanel(app: App) -> impl IntoView {
    let text = RwSignal::new(String::from("What a wonderful, heartfelt film."));
    let ready = move || {
        matches!(
            app.run.get().phase,
            Phase::Paused | Phase::Finished | Phase::Stopped
        )
    };
    view! {
        <section class="panel" data-testid="playground-panel">
            <h2>"7. Try it"</h2>
            <textarea data-testid="playground-text" rows="3" prop:value=move || text.get()
                on:input=move |ev| text.set(event_target_value(&ev))></textarea>
            <button data-testid="predict" disabled=move || !ready()
                on:click=move |_| bridge::send(&Request::Predict { text: text.get_untracked() })>"Run the model"</button>
            {move || (app.run.get().kind == Some(TaskKind::CausalLm)).then(|| view! { <Generate app text /> })}
            {move || (!ready()).then(|| view! { <p class="muted">"Train (or pause), or import an adapter, to try the model."</p> })}
            {move || app.prediction.get().map(|p| match p {
                Prediction::Class { label, score, scores, .. } => view! {
                    <p data-testid="prediction"><strong>{label}</strong>{format!(" ({:.1}%)", 100.0 * score)}</p>
                    <ul class="scores">{scores.into_iter().map(|(l, s)| view! {
                        <li><span class="barlabel">{l}</span><span class="scorebar" style=format!("width: {:.0}px", 200.0 * s)></span>{format!(" {:.1}%", 100.0 * s)}</li>
                    }).collect_view()}</ul>
                }.into_any(),
                Prediction::Tags { tags } => view! {
                    <p data-testid="prediction">{tags.into_iter().map(|(w, t)| {
                        let class = if t == "O" { "tok".to_string() } else { format!("tok ent {}", t.trim_start_matches(['B', 'I', '-'])) };
                        view! { <span class=class title=t.clone()>{w}{(t != "O").then(|| view! { <sub>{t.clone()}</sub> })}</span>" " }
                    }).collect_view()}</p>
                }.into_any(),
                Prediction::Masks { fills } => view! {
                    <div data-testid="prediction">
                        {if fills.is_empty() { view! { <p class="muted">"Put [MASK] in the text to see the model's guesses."</p> }.into_any() } else { ().into_any() }}
                        {fills.into_iter().enumerate().map(|(i, f)| view! {
                            <p>{format!("mask {}: ", i + 1)}{f.into_iter().map(|(t, p)| format!("{t} ({:.1}%)", 100.0 * p)).collect::<Vec<_>>().join(", ")}</p>
                        }).collect_view()}
                    </div>
                }.into_any(),
                Prediction::Next { tokens, .. } => view! {
                    <p data-testid="prediction">{"next: "}{tokens.into_iter().map(|(t, p)| format!("{t} ({:.1}%)", 100.0 * p)).collect::<Vec<_>>().join(", ")}</p>
                }.into_any(),
            })}
        </section>
    }
}

/// Generation from a causal LM: the text appears as the model produces it; Stop ends it
/// before the next token.
#[component]
fn Generate(app: App, text: RwSignal<String>) -> impl IntoView {
    let max_new = RwSignal::new(30usize);
    let temperature = RwSignal::new(0.0f32);
    let top_k = RwSignal::new(0usize);
    let top_p = RwSignal::new(1.0f32);
    let seed = RwSignal::new(0u64);
    let prompt = RwSignal::new(String::new());
    let start = move |_| {
        let config = GenerateConfig {
            max_new_tokens: max_new.get_untracked(),
            sampling: Sampling {
                temperature: temperature.get_untracked(),
                top_k: top_k.get_untracked(),
                top_p: top_p.get_untracked(),
                ..Sampling::default()
            },
            seed: seed.get_untracked(),
            stop_at_eos: true,
        };
        prompt.set(text.get_untracked());
        app.generated.set(String::new());
        app.generation_done.set(None);
        app.generating.set(true);
        bridge::send(&Request::Generate {
            prompt: text.get_untracked(),
            config,
        });
    };
    // A field that keeps its last good value when the text does not parse.
    fn number<T: std::str::FromStr + Copy + ToString + Send + Sync + 'static>(
        label: &'static str,
        testid: &'static str,
        v: RwSignal<T>,
    ) -> impl IntoView {
        view! {
            <label>{label}" "
                <input data-testid=testid size="5" prop:value=move || v.get().to_string()
                    on:change=move |ev| if let Ok(x) = event_target_value(&ev).trim().parse() { v.set(x) } />
            </label>" "
        }
    }
    view! {
        <div class="generate" data-testid="generate-panel">
            <p>
                {number("new tokens", "gen-max-new", max_new)}
                {number("temperature (0: greedy)", "gen-temperature", temperature)}
                {number("top-k", "gen-top-k", top_k)}
                {number("top-p", "gen-top-p", top_p)}
                {number("seed", "gen-seed", seed)}
            </p>
            <button data-testid="generate" disabled=move || app.generating.get() on:click=start>"Generate"</button>
            <button data-testid="stop-generating" disabled=move || !app.generating.get()
                on:click=move |_| bridge::send(&Request::StopGenerating)>"Stop"</button>
            <p class="generated" data-testid="generated"><strong>{move || prompt.get()}</strong>{move || app.generated.get()}</p>
            {move || app.generation_done.get().map(|(stop, n, tps)| {
                let why = match stop {
                    Stop::MaxNewTokens => "the token limit",
                    Stop::Eos => "the end-of-text token",
                    Stop::ContextFull => "every position of the model used",
                    Stop::Cancelled => "Stop",
                };
                view! { <p class="muted" data-testid="generation-done">{format!("{n} tokens at {tps:.1} tokens/s; ended by {why}.")}</p> }
            })}
        </div>
    }
}
