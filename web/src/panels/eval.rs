//! 6. Evaluation: metrics, the confusion matrix, per-label reports.

use leptos::prelude::*;
use tunelab_core::metrics::Confusion;
use tunelab_core::trainer::EvalReport;

use crate::app::*;

pub(crate) fn confusion_view(c: &Confusion) -> impl IntoView {
    view! {
        <table class="confusion" data-testid="confusion">
            <thead><tr><th>"gold \\ predicted"</th>{c.labels.iter().map(|l| view! { <th>{l.clone()}</th> }).collect_view()}</tr></thead>
            <tbody>
                {c.labels.iter().zip(&c.counts).map(|(l, row)| view! {
                    <tr><th>{l.clone()}</th>{row.iter().map(|n| view! { <td>{*n}</td> }).collect_view()}</tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

pub(crate) fn report_view(r: &EvalReport) -> impl IntoView {
    let metrics = r
        .metrics
        .iter()
        .map(|(k, v)| {
            view! { <tr><th>{k.clone()}</th><td data-testid=format!("metric-{k}")>{format!("{v:.4}")}</td></tr> }
        })
        .collect_view();
    let per = |title: &'static str,
               testid: &'static str,
               m: &std::collections::BTreeMap<String, tunelab_core::metrics::Prf>| {
        (!m.is_empty()).then(|| {
            view! {
                <table data-testid=testid>
                    <thead><tr><th>{title}</th><th>"precision"</th><th>"recall"</th><th>"F1"</th><th>"support"</th></tr></thead>
                    <tbody>
                        {m.iter().map(|(k, p)| view! {
                            <tr><th>{k.clone()}</th><td>{format!("{:.3}", p.precision)}</td><td>{format!("{:.3}", p.recall)}</td><td>{format!("{:.3}", p.f1)}</td><td>{p.support}</td></tr>
                        }).collect_view()}
                    </tbody>
                </table>
            }
        })
    };
    view! {
        <p>{format!("{} validation examples", r.examples)}</p>
        <table class="metrics" data-testid="metrics"><tbody>{metrics}</tbody></table>
        {per("class", "per-class", &r.per_class)}
        {r.confusion.as_ref().map(confusion_view)}
        {per("entity type", "per-entity", &r.per_entity)}
    }
}

#[component]
pub(crate) fn EvalPanel(app: App) -> impl IntoView {
    view! {
        <section class="panel" data-testid="eval-panel">
            <h2>"6. Evaluate"</h2>
            {move || match app.run.get().history.evals.last() {
                None => view! { <p class="muted">"Evaluation runs every few steps and at the end."</p> }.into_any(),
                Some((step, r)) => view! {
                    <p data-testid="eval-step">{format!("At step {step}")}</p>
                    {report_view(r)}
                }.into_any(),
            }}
        </section>
    }
}
