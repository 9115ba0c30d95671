//! The app shell: header, the WebGPU adapter panel and the installed assets.

use leptos::prelude::*;
use tunelab_core::Manifest;
use tunelab_wgpu::{AdapterReport, Context};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    view! {
        <header class="top">
            <h1>"Tunelab"</h1>
            <p class="tagline">
                "Fine-tune real pretrained transformers in this tab, on your own GPU. Nothing leaves your device."
            </p>
        </header>
        <main>
            <GpuPanel />
            <AssetsPanel />
        </main>
    }
}

async fn adapter_report() -> Result<AdapterReport, String> {
    Context::new(Default::default())
        .await
        .map(|ctx| ctx.report().clone())
        .map_err(|e| e.to_string())
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// The WebGPU adapter the app will train on: name, vendor, architecture and limits.
#[component]
fn GpuPanel() -> impl IntoView {
    let report = LocalResource::new(adapter_report);
    view! {
        <section class="panel" data-testid="gpu-panel">
            <h2>"Compute device"</h2>
            {move || match report.get() {
                None => view! { <p class="muted" data-testid="gpu-status">"Asking the browser for a WebGPU adapter…"</p> }.into_any(),
                Some(Err(e)) => view! {
                    <p class="error" data-testid="gpu-status">"WebGPU is not available: " {e}</p>
                }.into_any(),
                Some(Ok(r)) => {
                    let l = r.limits.clone();
                    let rows = vec![
                        ("Max storage buffer binding", mib(l.max_storage_buffer_binding_size), "limit-max-storage-buffer-binding-size"),
                        ("Max buffer size", mib(l.max_buffer_size), "limit-max-buffer-size"),
                        ("Workgroup storage", format!("{} bytes", l.max_compute_workgroup_storage_size), "limit-max-compute-workgroup-storage-size"),
                        ("Invocations per workgroup", l.max_compute_invocations_per_workgroup.to_string(), "limit-max-compute-invocations-per-workgroup"),
                        ("Workgroups per dimension", l.max_compute_workgroups_per_dimension.to_string(), "limit-max-compute-workgroups-per-dimension"),
                        ("Storage buffers per stage", l.max_storage_buffers_per_shader_stage.to_string(), "limit-max-storage-buffers-per-shader-stage"),
                    ];
                    let has = |f: &str| if r.features.iter().any(|x| x == f) { "yes" } else { "no" };
                    let features = format!("shader-f16: {}, subgroups: {}, timestamp queries: {}", has("SHADER_F16"), has("SUBGROUP"), has("TIMESTAMP_QUERY"));
                    view! {
                        <p class="ok" data-testid="gpu-status">"WebGPU ready"</p>
                        <dl class="facts">
                            <dt>"Adapter"</dt><dd data-testid="adapter-name">{r.name.clone()}</dd>
                            <dt>"Vendor"</dt><dd data-testid="adapter-vendor">{r.vendor.clone()}</dd>
                            <dt>"Architecture"</dt><dd data-testid="adapter-architecture">{r.architecture.clone()}</dd>
                            <dt>"Backend"</dt><dd data-testid="adapter-backend">{r.backend.clone()}</dd>
                            <dt>"Device type"</dt><dd data-testid="adapter-device-type">{r.device_type.clone()}</dd>
                            <dt>"Features"</dt><dd data-testid="adapter-features">{features}</dd>
                        </dl>
                        <table class="limits" data-testid="adapter-limits">
                            <tbody>
                                {rows.into_iter().map(|(label, value, id)| view! {
                                    <tr><th>{label}</th><td data-testid=id>{value}</td></tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any()
                }
            }}
        </section>
    }
}

async fn fetch_text(url: &str) -> Result<String, String> {
    let window = web_sys::window().ok_or("no window")?;
    let resp: web_sys::Response = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(|e| format!("fetching {url}: {e:?}"))?
        .dyn_into()
        .map_err(|_| format!("fetching {url}: not a Response"))?;
    if !resp.ok() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let text = JsFuture::from(resp.text().map_err(|e| format!("{e:?}"))?)
        .await
        .map_err(|e| format!("{e:?}"))?;
    text.as_string()
        .ok_or_else(|| format!("{url}: body is not text"))
}

async fn manifest() -> Result<Manifest, String> {
    let text = fetch_text("assets/manifest.json").await?;
    Manifest::from_json("assets/manifest.json", &text).map_err(|e| e.to_string())
}

/// The default model and the sample datasets served from `assets/`.
#[component]
fn AssetsPanel() -> impl IntoView {
    let manifest = LocalResource::new(manifest);
    view! {
        <section class="panel" data-testid="assets-panel">
            <h2>"Model and sample data"</h2>
            {move || match manifest.get() {
                None => view! { <p class="muted">"Loading the asset manifest…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="error" data-testid="assets-status">{e}</p> }.into_any(),
                Some(Ok(m)) => view! {
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
                }.into_any(),
            }}
        </section>
    }
}
