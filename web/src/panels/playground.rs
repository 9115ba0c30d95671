//! 7. The playground: try the model on a text.

use crate::bridge;
use leptos::prelude::*;
use tunelab_core::predict::Prediction;
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
