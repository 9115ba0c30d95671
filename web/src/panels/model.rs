//! 1. The model: the built-in one or the user's own files.

use crate::bridge;
use crate::form::mib;
use leptos::prelude::*;
use leptos::task::spawn_local;
use tunelab_web::protocol::Request;
use web_sys::{DragEvent, File, HtmlInputElement};

use crate::app::*;

#[component]
pub(crate) fn ModelPanel(app: App) -> impl IntoView {
    let pick = move |files: Vec<File>| {
        spawn_local(async move {
            let mut payload = Vec::new();
            for f in &files {
                let name = f.name();
                if ["config.json", "model.safetensors", "tokenizer.json"].contains(&name.as_str()) {
                    match file_bytes(f).await {
                        Ok(b) => payload.push((name, b)),
                        Err(e) => return app.error.set(Some(e)),
                    }
                }
            }
            if payload.len() < 3 {
                return app.error.set(Some(format!(
                    "a model needs config.json, model.safetensors and tokenizer.json; got {}",
                    files
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            app.error.set(None);
            app.status.set("Checking and storing your model…".into());
            bridge::send_with(
                &Request::SaveModel {
                    name: "my-model".into(),
                },
                payload,
            );
        });
    };
    view! {
        <section class="panel" data-testid="model-panel">
            <h2>"1. Model"</h2>
            {move || match app.model.get() {
                None => view! { <p class="muted">"Loading the model list…"</p> }.into_any(),
                Some(ModelChoice::Builtin { id, parameters, bytes, architecture, .. }) => {
                    let cfg = app.model_config.get();
                    view! {
                        <dl class="facts" data-testid="model-facts">
                            <dt>"Model"</dt><dd data-testid="model-name">{id}" (built in)"</dd>
                            <dt>"Architecture"</dt><dd>{architecture}{cfg.map(|c| c.dims()).map(|d| format!(", {} layers, hidden {}, {} heads", d.num_hidden_layers, d.hidden_size, d.num_attention_heads))}</dd>
                            <dt>"Parameters"</dt><dd data-testid="model-params">{fmt_count(parameters as usize)}</dd>
                            <dt>"Size"</dt><dd>{mib(bytes)}</dd>
                        </dl>
                    }.into_any()
                }
                Some(ModelChoice::User(f)) => view! {
                    <dl class="facts" data-testid="model-facts">
                        <dt>"Model"</dt><dd data-testid="model-name">{f.name.clone()}" (your files)"</dd>
                        <dt>"Architecture"</dt><dd>{format!("{}, {} layers, hidden {}, {} heads", f.architecture, f.layers, f.hidden, f.heads)}</dd>
                        <dt>"Parameters"</dt><dd data-testid="model-params">{fmt_count(f.parameters)}</dd>
                        <dt>"Size"</dt><dd>{mib(f.bytes)}</dd>
                    </dl>
                }.into_any(),
            }}
            <div class="dropzone"
                on:dragover=move |ev: DragEvent| ev.prevent_default()
                on:drop=move |ev: DragEvent| {
                    ev.prevent_default();
                    pick(files_of(ev.data_transfer().and_then(|d| d.files())));
                }>
                <label>"Or use your own Hugging Face model (config.json, model.safetensors, tokenizer.json): "
                    <input type="file" multiple data-testid="model-files"
                        on:change=move |ev| {
                            let input: HtmlInputElement = event_target(&ev);
                            pick(files_of(input.files()));
                        } />
                </label>
                <p class="muted">"…or drop the three files here."</p>
            </div>
        </section>
    }
}
