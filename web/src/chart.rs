//! Line charts drawn as SVG: labelled axes, min/max ticks, one or two series.

use leptos::prelude::*;

const W: f64 = 420.0;
const H: f64 = 180.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 34.0;

fn fmt(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// `points` in the plot area's coordinates, given the axes' ranges (non-finite ones dropped).
pub fn scale(points: &[(f64, f64)], (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> Vec<(f64, f64)> {
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0).max(1e-12) * (W - LEFT - RIGHT);
    let sy = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0).max(1e-12)) * (H - TOP - BOTTOM);
    points
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| (sx(x), sy(y)))
        .collect()
}

/// The SVG path of `points` within the plot area.
pub fn path(points: &[(f64, f64)], xr: (f64, f64), yr: (f64, f64)) -> String {
    scale(points, xr, yr)
        .iter()
        .enumerate()
        .map(|(i, (x, y))| format!("{}{x:.1},{y:.1}", if i == 0 { "M" } else { " L" }))
        .collect()
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

/// Series to draw: name, colour class (`a`, `b`, `c`) and points.
pub type Series = Vec<(String, &'static str, Vec<(f64, f64)>)>;

/// A chart of `series` against the step.
#[component]
pub fn LineChart(
    title: &'static str,
    y_label: &'static str,
    testid: &'static str,
    series: Signal<Series>,
) -> impl IntoView {
    view! {
        <figure class="chart" data-testid=testid>
            <figcaption>{title}</figcaption>
            {move || {
                let s = series.get();
                let all = || s.iter().flat_map(|(_, _, p)| p.iter().copied());
                let n: usize = s.iter().map(|(_, _, p)| p.len()).sum();
                if n == 0 {
                    return view! { <p class="muted">"No points yet."</p> }.into_any();
                }
                let xr = range(all().map(|p| p.0));
                let xr = (xr.0.min(0.0), xr.1);
                let yr = range(all().map(|p| p.1));
                let paths = s
                    .iter()
                    .map(|(name, class, p)| {
                        let d = path(p, xr, yr);
                        let last = p.last().map(|q| fmt(q.1)).unwrap_or_default();
                        // Sparse series (evaluations) also get a dot per point.
                        let dots = (p.len() <= 40)
                            .then(|| {
                                scale(p, xr, yr)
                                    .into_iter()
                                    .map(|(x, y)| view! { <circle class=format!("dot {class}") cx=x cy=y r=2.5 /> })
                                    .collect_view()
                            });
                        view! {
                            <path class=format!("series {class}") d=d>
                                <title>{format!("{name}: last {last}")}</title>
                            </path>
                            {dots}
                        }
                    })
                    .collect_view();
                let legend = s
                    .iter()
                    .map(|(name, class, p)| {
                        let last = p.last().map(|q| fmt(q.1)).unwrap_or_default();
                        view! { <span class=format!("legend {class}")>{format!("{name} {last}")}</span> }
                    })
                    .collect_view();
                view! {
                    <svg viewBox=format!("0 0 {W} {H}") role="img" aria-label=title>
                        <line class="axis" x1=LEFT y1=TOP x2=LEFT y2=H - BOTTOM />
                        <line class="axis" x1=LEFT y1=H - BOTTOM x2=W - RIGHT y2=H - BOTTOM />
                        <text class="tick" x=LEFT - 4.0 y=TOP + 4.0 text-anchor="end">{fmt(yr.1)}</text>
                        <text class="tick" x=LEFT - 4.0 y=H - BOTTOM text-anchor="end">{fmt(yr.0)}</text>
                        <text class="tick" x=LEFT y=H - BOTTOM + 14.0 text-anchor="middle">{fmt(xr.0)}</text>
                        <text class="tick" x=W - RIGHT y=H - BOTTOM + 14.0 text-anchor="end">{fmt(xr.1)}</text>
                        <text class="label" x=(LEFT + W) / 2.0 y=H - 4.0 text-anchor="middle">"step"</text>
                        <text class="label" x=12.0 y=(TOP + H - BOTTOM) / 2.0 text-anchor="middle"
                            transform=format!("rotate(-90 12 {})", (TOP + H - BOTTOM) / 2.0)>{y_label}</text>
                        {paths}
                    </svg>
                    <div class="legends">{legend}</div>
                }
                .into_any()
            }}
        </figure>
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_maps_the_range_onto_the_plot_area() {
        let p = super::path(&[(0.0, 1.0), (10.0, 0.0)], (0.0, 10.0), (0.0, 1.0));
        assert_eq!(p, "M56.0,14.0 L408.0,146.0");
        assert_eq!(super::range([2.0, 2.0].into_iter()), (1.5, 2.5));
    }
}
