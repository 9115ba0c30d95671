//! The status line and the resume banner.

use crate::bridge;
use leptos::prelude::*;
use tunelab_web::protocol::Request;

use crate::app::*;

#[component]
pub(crate) fn StatusBar(app: App) -> impl IntoView {
    view! {
        <div class="statusbar">
            <span data-testid="status">{move || app.status.get()}</span>
            {move || app.error.get().map(|e| view! {
                <p class="error" data-testid="error" role="alert">{e}</p>
            })}
            {move || app.notice.get().map(|n| view! { <p class="ok" data-testid="notice">{n}</p> })}
        </div>
    }
}

#[component]
pub(crate) fn ResumeBanner(app: App) -> impl IntoView {
    view! {
        {move || app.saved.get().map(|s| {
            let kind = s.spec.kind;
            view! {
            <section class="panel banner" data-testid="resume-banner">
                <h2>{move || if app.lost.get() { "The GPU went away" } else { "An interrupted run" }}</h2>
                <p>{format!(
                    "{} on {} with {} was interrupted; its last checkpoint, at step {} of {}, is in this browser.",
                    s.spec.model.name(), s.spec.dataset, s.spec.config.method.name(), s.step, s.total
                )}</p>
                <button data-testid="resume" on:click=move |_| {
                    app.run.set(RunView { phase: Phase::Loading, kind: Some(kind), ..RunView::default() });
                    bridge::send(&Request::ResumeSaved { on_cpu: None });
                }>{move || if app.lost.get() { "Resume on WebGPU (a new device)" } else { "Resume from the checkpoint" }}</button>
                " "
                {move || app.lost.get().then(|| view! {
                    <button data-testid="resume-cpu" on:click=move |_| {
                        app.run.set(RunView { phase: Phase::Loading, kind: Some(kind), ..RunView::default() });
                        bridge::send(&Request::ResumeSaved { on_cpu: Some(true) });
                    }>"Resume on the CPU"</button>
                    " "
                })}
                <button class="secondary" on:click=move |_| bridge::send(&Request::Discard)>"Discard it"</button>
            </section>
            }
        })}
    }
}
