//! What the tab stores, and deleting it.

use crate::bridge;
use leptos::prelude::*;
use tunelab_web::protocol::Request;

use crate::app::*;

#[component]
pub(crate) fn StoragePanel(app: App) -> impl IntoView {
    view! {
        <section class="panel" data-testid="storage-panel">
            <h2>"Your data"</h2>
            <p class="muted">"Models, datasets, checkpoints and the run's history stay in this browser's storage. Share the configuration (never the data) with this page's address."</p>
            <p><input readonly class="share" data-testid="share-url"
                prop:value=move || { app.form.get(); web_sys::window().and_then(|w| w.location().href().ok()).unwrap_or_default() } /></p>
            {move || app.manifest.get().map(|m| view! {
                <details>
                    <summary>"Built-in model and samples"</summary>
                    <ul class="models">
                        {m.models.iter().map(|model| view! {
                            <li data-testid="model">
                                <strong>{model.id.clone()}</strong>
                                {format!(" — {} · {:.1}M parameters · {}", model.architecture, model.parameters as f64 / 1e6, model.license)}
                            </li>
                        }).collect_view()}
                    </ul>
                    <table class="datasets">
                        <thead><tr><th>"Dataset"</th><th>"Task"</th><th>"Labels"</th><th>"Train / validation / test"</th><th>"Licence"</th></tr></thead>
                        <tbody>
                            {m.datasets.iter().map(|d| {
                                let size = |k: &str| d.split_sizes.get(k).copied().unwrap_or(0);
                                view! {
                                    <tr data-testid="dataset">
                                        <td>{d.title.clone()}</td>
                                        <td>{d.task.clone()}</td>
                                        <td>{d.labels.len()}</td>
                                        <td>{format!("{} / {} / {}", size("train"), size("validation"), size("test"))}</td>
                                        <td>{d.license.clone()}</td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                </details>
            })}
            {move || {
                let past = app.past.get();
                (!past.is_empty()).then(|| view! {
                    <table class="past" data-testid="past-runs">
                        <thead><tr><th>"Run"</th><th>"Method"</th><th>"Steps"</th><th>"Backend"</th><th>"Result"</th></tr></thead>
                        <tbody>
                            {past.into_iter().rev().map(|r| {
                                let result = ["accuracy", "f1", "perplexity"].iter()
                                    .find_map(|k| r.metrics.get(*k).map(|v| format!("{k} {v:.3}")))
                                    .unwrap_or_default();
                                view! {
                                    <tr>
                                        <td>{format!("{} · {}", r.dataset, r.model)}</td>
                                        <td>{r.method.clone()}</td>
                                        <td>{format!("{}{}", r.steps, if r.stopped { " (stopped)" } else { "" })}</td>
                                        <td>{r.backend.clone()}</td>
                                        <td>{result}</td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                })
            }}
            <button class="danger" data-testid="delete-data" on:click=move |_| bridge::send(&Request::DeleteAll)>"Delete my data"</button>
        </section>
    }
}
