//! 5. Training: start, pause, stop, the charts and the run's facts.

use crate::bridge;
use crate::chart::LineChart;
use leptos::prelude::*;
use tunelab_core::trainer::TaskKind;
use tunelab_web::protocol::{BackendInfo, Request, StepPoint};

use crate::app::*;
use crate::panels::preflight::preflight;

pub(crate) fn rate(steps: &[StepPoint]) -> Option<(f64, f64, f64)> {
    let tail: Vec<&StepPoint> = steps.iter().rev().take(10).collect();
    if tail.is_empty() {
        return None;
    }
    let ms: f64 = tail.iter().map(|p| p.ms).sum::<f64>() / tail.len() as f64;
    let tokens: f64 = tail.iter().map(|p| p.report.tokens as f64).sum::<f64>() / tail.len() as f64;
    Some((ms, 1000.0 / ms.max(1e-9), tokens * 1000.0 / ms.max(1e-9)))
}

pub(crate) fn main_metric(kind: Option<TaskKind>) -> (&'static str, &'static str) {
    match kind {
        Some(TaskKind::TokenClassification) => ("f1", "entity F1"),
        Some(TaskKind::MaskedLm) => ("perplexity", "perplexity"),
        _ => ("accuracy", "accuracy"),
    }
}

#[component]
pub(crate) fn TrainPanel(app: App) -> impl IntoView {
    let loss = Signal::derive(move || {
        let r = app.run.get();
        let train: Vec<(f64, f64)> = r
            .history
            .steps
            .iter()
            .map(|p| (p.report.step as f64, f64::from(p.report.loss)))
            .collect();
        let eval: Vec<(f64, f64)> = r
            .history
            .evals
            .iter()
            .filter_map(|(s, e)| e.metrics.get("loss").map(|l| (*s as f64, *l)))
            .collect();
        vec![
            ("training loss".to_string(), "a", train),
            ("validation loss".to_string(), "b", eval),
        ]
    });
    let lr = Signal::derive(move || {
        let r = app.run.get();
        vec![(
            "learning rate".to_string(),
            "c",
            r.history
                .steps
                .iter()
                .map(|p| (p.report.step as f64, p.report.lr))
                .collect(),
        )]
    });
    let metric = Signal::derive(move || {
        let r = app.run.get();
        let (key, name) = main_metric(r.kind);
        vec![(
            name.to_string(),
            "b",
            r.history
                .evals
                .iter()
                .filter_map(|(s, e)| e.metrics.get(key).map(|v| (*s as f64, *v)))
                .collect(),
        )]
    });
    let refusal = Memo::new(move |_| preflight(app).and_then(|c| c.refusal()));
    view! {
        <section class="panel wide" data-testid="train-panel">
            <h2>"5. Train"</h2>
            <div class="controls">
                <button data-testid="train" on:click=move |_| app.start()
                    title=move || refusal.get().unwrap_or_default()
                    disabled=move || matches!(app.run.get().phase, Phase::Loading | Phase::Training | Phase::Paused)
                        || refusal.with(Option::is_some)>"Train"</button>
                {move || match app.run.get().phase {
                    Phase::Training => view! {
                        <button data-testid="pause" on:click=move |_| bridge::send(&Request::Pause)>"Pause"</button>
                        <button data-testid="stop" on:click=move |_| bridge::send(&Request::Stop)>"Stop"</button>
                    }.into_any(),
                    Phase::Paused => view! {
                        <button data-testid="continue" on:click=move |_| bridge::send(&Request::Continue)>"Resume"</button>
                        <button data-testid="stop" on:click=move |_| bridge::send(&Request::Stop)>"Stop"</button>
                    }.into_any(),
                    _ => ().into_any(),
                }}
            </div>
            {move || {
                let r = app.run.get();
                let last = r.history.steps.last().map(|p| p.report);
                let step = last.map(|l| l.step).unwrap_or(0);
                let phase = format!("{:?}", r.phase).to_lowercase();
                let backend = r.backend.as_ref().map_or_else(|| "—".into(), BackendInfo::label);
                let speed = rate(&r.history.steps);
                view! {
                    <div class="progress"><div class="bar" style=format!("width: {:.1}%", 100.0 * step as f64 / r.total.max(1) as f64)></div></div>
                    <dl class="facts run">
                        <dt>"State"</dt><dd data-testid="phase">{phase}</dd>
                        <dt>"Step"</dt><dd data-testid="step">{format!("{step} / {}", r.total)}</dd>
                        <dt>"Backend"</dt><dd data-testid="run-backend">{backend}</dd>
                        <dt>"Trainable"</dt><dd data-testid="run-trainable">{format!("{} of {}", fmt_count(r.trainable), fmt_count(r.parameters))}</dd>
                        <dt>"Examples"</dt><dd>{format!("{} train, {} validation", r.train_examples, r.validation_examples)}</dd>
                        <dt>"Loss"</dt><dd data-testid="loss">{last.map(|l| format!("{:.4}", l.loss)).unwrap_or_default()}</dd>
                        <dt>"Speed"</dt><dd data-testid="speed">{speed.map(|(ms, sps, tps)| format!("{sps:.2} steps/s · {tps:.0} tokens/s · {ms:.0} ms/step")).unwrap_or_default()}</dd>
                        <dt>"Step time"</dt><dd data-testid="step-ms">{speed.map(|s| format!("{:.1}", s.0)).unwrap_or_default()}</dd>
                        <dt>"First step after"</dt><dd data-testid="first-step-ms">{r.first_step_ms.map(|t| format!("{:.0}", t)).unwrap_or_default()}</dd>
                        <dt>"Model from"</dt><dd data-testid="model-cached">{if r.phase == Phase::Idle { String::new() } else if r.cached { "browser storage".into() } else { "the network".into() }}</dd>
                        <dt>"Checkpoint"</dt><dd data-testid="checkpoint">{r.last_checkpoint.map(|s| format!("step {s}")).unwrap_or_default()}</dd>
                        <dt>"Resumed at"</dt><dd data-testid="resumed-at">{r.resumed_at.map(|s| s.to_string()).unwrap_or_default()}</dd>
                    </dl>
                }
            }}
            <div class="charts">
                <LineChart title="Loss" y_label="loss" testid="loss-chart" series=loss />
                <LineChart title="Evaluation" y_label="metric" testid="metric-chart" series=metric />
                <LineChart title="Learning rate" y_label="lr" testid="lr-chart" series=lr />
            </div>
            <pre class="hidden" data-testid="losses">{move || app.run.get().history.steps.iter().map(|p| format!("{} {} {:.1} {}", p.report.step, p.report.loss, p.ms, p.report.tokens)).collect::<Vec<_>>().join("\n")}</pre>
        </section>
    }
}
