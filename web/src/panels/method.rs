//! 3. Task and method: the registry's methods and their options, the training fields.

use crate::form::{self, Form};
use leptos::prelude::*;
use tunelab_core::trainer::TaskKind;

use crate::app::*;

/// A text field bound to one form field by its query key. Text that does not parse leaves
/// the form unchanged, stays in the box, and shows what was expected under it.
pub(crate) fn num_input(
    app: App,
    label: &'static str,
    testid: &'static str,
    key: &'static str,
    get: impl Fn(&Form) -> String + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    view! {
        <label class="field">{label}
            <input data-testid=testid prop:value=move || app.form.with(get)
                class:invalid=move || error.with(Option::is_some)
                on:change=move |ev| {
                    let v = event_target_value(&ev);
                    let mut next = app.form.get_untracked();
                    match next.set(key, &v) {
                        Ok(()) => {
                            error.set(None);
                            app.form.set(next);
                        }
                        Err(e) => error.set(Some(e)),
                    }
                } />
            {move || error.get().map(|e| view! {
                <span class="field-error" data-testid=format!("{testid}-error")>{e}</span>
            })}
        </label>
    }
}

#[component]
pub(crate) fn MethodPanel(app: App) -> impl IntoView {
    let counts = Memo::new(move |_| {
        let cfg = app.model_config.get()?;
        let d = app.dataset.get()?;
        let f = app.form.get();
        let kind = effective_kind(d.kind, Some(&cfg));
        Some(form::counts(&cfg, kind, d.counts.len(), &f.method()))
    });
    view! {
        <section class="panel" data-testid="method-panel">
            <h2>"3. Task and method"</h2>
            <div class="presets">
                {form::presets().into_iter().map(|(name, blurb, preset)| view! {
                    <button class="preset" title=blurb on:click=move |_| {
                        let data = preset.data.clone();
                        {
                            let now = app.form.get_untracked();
                            app.form.set(Form { cpu: now.cpu, gpu: now.gpu, ..preset.clone() });
                        }
                        app.load_sample(data);
                    }>{name}</button>
                }).collect_view()}
            </div>
            <p>"Task: " <strong data-testid="task">{move || app.dataset.get().map(|d| kind_name(effective_kind(d.kind, app.model_config.get().as_ref()))).unwrap_or("—")}</strong>
            {move || (app.form.get().data == "upload").then(|| view! {
                " "
                <select data-testid="task-select" on:change=move |ev| {
                    let k = match event_target_value(&ev).as_str() {
                        "ner" => TaskKind::TokenClassification,
                        "mlm" => TaskKind::MaskedLm,
                        _ => TaskKind::Classification,
                    };
                    app.load_upload(k);
                }>
                    <option value="cls">"classification"</option>
                    <option value="ner">"NER"</option>
                    <option value="mlm">"masked LM"</option>
                </select>
            })}
            </p>
            <div class="methods">
                {tunelab_core::peft::REGISTRY.iter().map(|i| (i.name, i.title, i.help)).map(|(id, name, help)| view! {
                    <label class="method">
                        <input type="radio" name="method" value=id data-testid=format!("method-{id}")
                            prop:checked=move || app.form.get().method == id
                            on:change=move |_| app.form.update(|f| f.method = id.to_string()) />
                        <strong>{name}</strong>
                        <span class="muted">" — "{help}</span>
                    </label>
                }).collect_view()}
            </div>
            {move || {
                let options = app.form.with(|f| f.method().options());
                (!options.is_empty()).then(|| view! {
                    <div class="options">
                        {options.iter().map(|o| num_input(app, o.label, o.flag, o.url, move |f: &Form| f.option(o))).collect_view()}
                    </div>
                })
            }}
            <div class="options">
                {num_input(app, "steps", "steps", "steps", |f| f.steps.to_string())}
                {num_input(app, "batch", "batch", "batch", |f| f.batch.to_string())}
                {num_input(app, "max tokens", "max-len", "len", |f| f.max_len.to_string())}
                {num_input(app, "learning rate (empty: method default)", "lr", "lr", |f| f.lr.clone())}
                {num_input(app, "evaluate every", "eval-every", "eval", |f| f.eval_every.to_string())}
                {num_input(app, "eval examples", "eval-examples", "evaln", |f| f.eval_examples.to_string())}
                {num_input(app, "checkpoint every", "save-every", "save", |f| f.save_every.to_string())}
            </div>
            <p data-testid="param-counts">{move || match counts.get() {
                None => "Trainable parameters: —".to_string(),
                Some(Ok((t, all))) => format!("Trainable parameters: {} of {} ({:.2}%)", fmt_count(t), fmt_count(all), 100.0 * t as f64 / all.max(1) as f64),
                Some(Err(e)) => format!("Cannot apply this method: {e}"),
            }}</p>
        </section>
    }
}
