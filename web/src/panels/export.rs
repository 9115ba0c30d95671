//! 8. Export and import.

use crate::bridge;
use leptos::prelude::*;
use leptos::task::spawn_local;
use tunelab_web::protocol::Request;
use web_sys::HtmlInputElement;

use crate::app::*;

#[component]
pub(crate) fn ExportPanel(app: App) -> impl IntoView {
    let ready = move || {
        matches!(
            app.run.get().phase,
            Phase::Paused | Phase::Finished | Phase::Stopped
        )
    };
    view! {
        <section class="panel" data-testid="export-panel">
            <h2>"8. Export"</h2>
            <p class="muted">"Adapters download in Hugging Face PEFT format (adapter_config.json + adapter_model.safetensors): load them with PeftModel.from_pretrained."</p>
            <button data-testid="export" disabled=move || !ready() on:click=move |_| bridge::send(&Request::Export)>"Download"</button>
            {move || app.exported.get().map(|(name, files)| view! {
                <p data-testid="exported">{format!("{name}: {}", files.join(", "))}</p>
            })}
            <label>"Import an exported adapter (.zip): "
                <input type="file" accept=".zip" data-testid="import-file" on:change=move |ev| {
                    let input: HtmlInputElement = event_target(&ev);
                    let Some(f) = files_of(input.files()).into_iter().next() else { return };
                    let Some(model) = app.model.get_untracked() else { return };
                    spawn_local(async move {
                        match file_bytes(&f).await {
                            Ok(b) => bridge::send_with(&Request::Import { model: model.source() }, vec![(f.name(), b)]),
                            Err(e) => app.error.set(Some(e)),
                        }
                    });
                } />
            </label>
            {move || app.imported.get().map(|m| view! { <p class="ok" data-testid="imported">{m}</p> })}
        </section>
    }
}
