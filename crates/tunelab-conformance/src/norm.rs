//! Layer norm, forward against f64 and backward by finite differences.

use crate::{close, data, grad_check, host, input};
use tunelab_core::Shape;
use tunelab_core::backend::Backend;

pub async fn layer_norm_forward_and_backward<B: Backend>(be: &B) {
    let (rows, c) = (3, 7);
    let x = data(rows * c, 21);
    let g = data(c, 22);
    let bt = data(c, 23);
    let (y, _) = be
        .layer_norm(
            &be.upload(&x, &Shape::new([rows, c])).unwrap(),
            &be.upload(&g, &Shape::new([c])).unwrap(),
            &be.upload(&bt, &Shape::new([c])).unwrap(),
            1e-5,
        )
        .unwrap();
    let want = layer_norm_ref(&x, &g, &bt, c, 1e-5);
    close("layer_norm", &host(be, &y).await, &want, 1e-5);
    grad_check(
        be,
        "layer_norm (B,T,C)",
        vec![
            input(&[2, 3, 7], 24, true),
            input(&[7], 25, true),
            input(&[7], 26, true),
        ],
        &|t, v| t.layer_norm(v[0], v[1], v[2], 1e-5),
    )
    .await;
    grad_check(
        be,
        "layer_norm one row",
        vec![
            input(&[1, 1, 5], 27, true),
            input(&[5], 28, false),
            input(&[5], 29, true),
        ],
        &|t, v| t.layer_norm(v[0], v[1], v[2], 1e-12),
    )
    .await;
}

/// Layer norm of `x`'s rows of `c` in f64.
pub(crate) fn layer_norm_ref(x: &[f32], g: &[f32], bt: &[f32], c: usize, eps: f64) -> Vec<f64> {
    let mut want = Vec::with_capacity(x.len());
    for row in x.chunks(c) {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        for j in 0..c {
            want.push((row[j] - mean) / (var + eps).sqrt() * f64::from(g[j]) + f64::from(bt[j]));
        }
    }
    want
}
