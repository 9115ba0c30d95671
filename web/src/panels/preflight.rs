//! 4. The preflight: memory and buffer limits against the budget.

use crate::form::{self, mib};
use leptos::prelude::*;
use tunelab_web::protocol::BackendInfo;

use crate::app::*;

/// Memory budget assumed for a WebGPU device (browsers do not report device memory).
pub(crate) const GPU_BUDGET: u64 = 2 << 30;
/// The wasm CPU backend lives in 32-bit wasm memory.
pub(crate) const CPU_BUDGET: u64 = 3 << 30;

/// What the preflight found: the estimate against the budget, and whether the largest
/// tensor fits the device's buffer limit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Check {
    est: u64,
    budget: u64,
    largest: Result<(), String>,
    where_: &'static str,
    batch: usize,
}

impl Check {
    /// Why training cannot start here, when it cannot (the Train button then refuses).
    pub(crate) fn refusal(&self) -> Option<String> {
        self.largest
            .as_ref()
            .err()
            .map(|e| format!("cannot train here: {e}"))
    }
}

/// The preflight of the current choices (reactive: it reads the model, data and form).
pub(crate) fn preflight(app: App) -> Option<Check> {
    let cfg = app.model_config.get()?;
    let d = app.dataset.get()?;
    let f = app.form.get();
    let kind = effective_kind(d.kind, Some(&cfg));
    let (t, all) = form::counts(&cfg, kind, d.counts.len(), &f.method()).ok()?;
    let prompt = f.method().virtual_tokens();
    let seq = f.max_len + prompt;
    let est = form::memory_estimate(&cfg, t, all, f.batch, seq);
    let backend = app.backend.get();
    let (budget, largest_ok, where_) = match &backend {
        Some(BackendInfo::WebGpu { adapter }) => (
            GPU_BUDGET,
            form::largest_tensor_fits(&cfg, kind, f.batch, seq, adapter.limits.max_buffer_size),
            "WebGPU",
        ),
        _ => (CPU_BUDGET, Ok(()), "the wasm CPU backend"),
    };
    Some(Check {
        est,
        budget,
        largest: largest_ok,
        where_,
        batch: f.batch,
    })
}

#[component]
pub(crate) fn PreflightPanel(app: App) -> impl IntoView {
    let check = Memo::new(move |_| preflight(app));
    view! {
        <section class="panel" data-testid="preflight-panel">
            <h2>"4. Preflight"</h2>
            {move || match check.get() {
                None => view! { <p class="muted">"Choose a model and data first."</p> }.into_any(),
                Some(Check { est, budget, largest, where_, batch }) => {
                    let fits = est <= budget;
                    view! {
                        <p data-testid="memory-estimate">{format!("Estimated memory: {} of the {} budget for {where_}.", mib(est), mib(budget))}</p>
                        {match largest {
                            Err(e) => view! { <p class="error" data-testid="preflight-refused">{format!("Cannot train here: {e}.")}</p> }.into_any(),
                            Ok(()) if !fits && batch > 1 => view! {
                                <p class="warn" data-testid="preflight-adjust">{format!("Batch {batch} may not fit.")}
                                    " "<button on:click=move |_| app.form.update(|f| f.batch = (f.batch / 2).max(1))>"Halve the batch"</button>
                                </p>
                            }.into_any(),
                            Ok(()) if !fits => view! {
                                <p class="warn" data-testid="preflight-adjust">"It may not fit even at batch 1: shorten the texts (max tokens) or pick a smaller model."</p>
                            }.into_any(),
                            Ok(()) => view! { <p class="ok" data-testid="preflight-ok">"Fits."</p> }.into_any(),
                        }}
                    }.into_any()
                }
            }}
            {move || match app.backend.get() {
                Some(BackendInfo::Cpu { reason, threads, .. }) => Some(view! {
                    <p class="warn" data-testid="cpu-fallback">{format!("Training on the wasm CPU backend ({}): {reason}.", if threads == 1 { "1 thread".to_string() } else { format!("{threads} threads") })}</p>
                }),
                _ => None,
            }}
            <label class="inline">
                <input type="checkbox" data-testid="force-cpu" prop:checked=move || app.form.get().cpu
                    on:change=move |ev| { let on = event_target_checked(&ev); app.form.update(|f| f.cpu = on); } />
                " Train on the CPU (wasm) instead of WebGPU"
            </label>
            <label class="inline">
                <input type="checkbox" data-testid="force-gpu" prop:checked=move || app.form.get().gpu
                    on:change=move |ev| { let on = event_target_checked(&ev); app.form.update(|f| f.gpu = on); } />
                " Use WebGPU even when the browser only has a software adapter (reload to apply)"
            </label>
        </section>
    }
}
