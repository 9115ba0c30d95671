//! The device: WebGPU adapter and limits, or the CPU fallback.

use crate::form::mib;
use leptos::prelude::*;
use tunelab_web::protocol::BackendInfo;

use crate::app::*;

#[component]
pub(crate) fn DevicePanel(app: App) -> impl IntoView {
    view! {
        <section class="panel" data-testid="gpu-panel">
            <h2>"Compute device"</h2>
            {move || {
                let (r, note) = match app.backend.get() {
                    None => return view! { <p class="muted" data-testid="gpu-status">"Asking the browser for a WebGPU adapter…"</p> }.into_any(),
                    Some(BackendInfo::Cpu { reason, adapter: None, .. }) => return view! {
                        <p class="warn" data-testid="gpu-status">"Training on the wasm CPU backend: " {reason}</p>
                    }.into_any(),
                    Some(BackendInfo::Cpu { reason, adapter: Some(a), .. }) => (a, Some(reason)),
                    Some(BackendInfo::WebGpu { adapter }) => (adapter, None),
                };
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
                    {note.map(|n| view! { <p class="warn" data-testid="gpu-note">{format!("Training uses the wasm CPU backend: {n}.")}</p> })}
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
            }}
        </section>
    }
}
