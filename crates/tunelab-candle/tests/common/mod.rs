//! Helpers shared by the parity tests (native and wasm).

/// `||got - want|| / ||want||` in f64 (relative L2 error).
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - f64::from(*w)).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| f64::from(*w).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}
