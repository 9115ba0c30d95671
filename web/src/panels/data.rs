//! 2. The data: samples or the user's files, preview, labels and the split.

use leptos::prelude::*;
use leptos::task::spawn_local;
use tunelab_core::trainer::TaskKind;
use wasm_bindgen_futures::JsFuture;
use web_sys::{DragEvent, File, HtmlInputElement};

use crate::app::*;

#[component]
pub(crate) fn DataPanel(app: App) -> impl IntoView {
    let choose = move |id: String| {
        app.form.update(|f| f.data = id.clone());
        if id == "upload" {
            app.dataset.set(None);
            app.load_upload(TaskKind::Classification);
        } else {
            app.load_sample(id);
        }
    };
    let read_file = move |files: Vec<File>| {
        let Some(f) = files.into_iter().next() else {
            return;
        };
        spawn_local(async move {
            let text = match JsFuture::from(f.text()).await {
                Ok(t) => t.as_string().unwrap_or_default(),
                Err(e) => {
                    return app
                        .data_error
                        .set(Some(format!("reading {}: {e:?}", f.name())));
                }
            };
            let name = f.name();
            let kind = if name.ends_with(".conll") {
                TaskKind::TokenClassification
            } else if name.ends_with(".txt") {
                TaskKind::MaskedLm
            } else {
                TaskKind::Classification
            };
            app.form.update(|f| f.data = "upload".into());
            app.upload.set(Some((name, text)));
            app.load_upload(kind);
        });
    };
    view! {
        <section class="panel wide" data-testid="data-panel">
            <h2>"2. Data"</h2>
            <label>"Sample: "
                <select data-testid="dataset-select" on:change=move |ev| choose(event_target_value(&ev))
                    prop:value=move || app.form.get().data>
                    {move || app.manifest.get().map(|m| m.datasets.iter().map(|d| {
                        let id = d.id.clone();
                        let chosen = id.clone();
                        view! {
                            <option value=id selected=move || app.form.get().data == chosen>
                                {format!("{} — {}", d.title, d.task)}
                            </option>
                        }
                    }).collect_view())}
                    <option value="upload" selected=move || app.form.get().data == "upload">"Your file…"</option>
                </select>
            </label>
            <div class="dropzone"
                on:dragover=move |ev: DragEvent| ev.prevent_default()
                on:drop=move |ev: DragEvent| {
                    ev.prevent_default();
                    read_file(files_of(ev.data_transfer().and_then(|d| d.files())));
                }>
                <label>"Your data (CSV with text,label · JSONL · CoNLL · plain text): "
                    <input type="file" accept=".csv,.jsonl,.json,.conll,.txt" data-testid="data-file"
                        on:change=move |ev| {
                            let input: HtmlInputElement = event_target(&ev);
                            read_file(files_of(input.files()));
                        } />
                </label>
                <label class="inline">
                    <input type="checkbox" data-testid="skip-bad" prop:checked=move || app.form.get().skip_bad
                        on:change=move |ev| {
                            let on = event_target_checked(&ev);
                            app.form.update(|f| f.skip_bad = on);
                            let data = app.form.get_untracked().data;
                            if data == "upload" {
                                let kind = app.dataset.get_untracked().map(|d| d.kind).unwrap_or(TaskKind::Classification);
                                app.load_upload(kind);
                            } else {
                                app.load_sample(data);
                            }
                        } />
                    " Skip bad rows"
                </label>
            </div>
            {move || app.data_error.get().map(|e| view! { <p class="error" data-testid="data-error" role="alert">{e}</p> })}
            {move || app.dataset.get().map(|d| {
                let skipped = d.skipped.clone();
                view! {
                    <p data-testid="data-summary">
                        {format!("{}: {} · {} training and {} validation examples", d.title, kind_name(d.kind), d.n_train, d.n_validation)}
                    </p>
                    {(!skipped.is_empty()).then(|| view! {
                        <p class="warn" data-testid="skipped">{format!("Skipped {} bad row(s); the first: {}", skipped.len(), skipped[0])}</p>
                    })}
                    <table class="preview" data-testid="preview">
                        <thead><tr><th>"Line"</th><th>"Text"</th><th>{if d.kind == TaskKind::TokenClassification { "Entities" } else { "Label" }}</th></tr></thead>
                        <tbody>
                            {d.preview.iter().map(|(line, text, label)| view! {
                                <tr><td>{*line}</td><td class="text">{text.chars().take(160).collect::<String>()}</td><td>{label.clone()}</td></tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                    {(!d.counts.is_empty()).then(|| view! {
                        <p class="counts" data-testid="label-counts">
                            {d.counts.iter().map(|(l, n)| format!("{l}: {n}")).collect::<Vec<_>>().join(" · ")}
                        </p>
                    })}
                }
            })}
        </section>
    }
}
