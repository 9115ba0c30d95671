//! Elementwise ops and per-feature ops: bias add, add, multiply, scale, `scale_features`, the activations
//! (GELU in its erf and tanh forms, SiLU, ReLU), tanh, reshape.

use crate::{Input, close, data, grad_check, host, input};
use tunelab_core::Shape;
use tunelab_core::backend::{Activation, Backend};

/// `erf` in f64 (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7).
pub(crate) fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    if x < 0.0 { -y } else { y }
}

/// An activation in f64, as transformers defines it.
pub(crate) fn activation_ref(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044_715 * x * x * x)).tanh())
        }
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Relu => x.max(0.0),
    }
}

/// The values moved at least 0.1 away from 0, where ReLU has its kink (finite differences
/// step across it otherwise).
pub(crate) fn away_from_zero(mut i: Input) -> Input {
    for v in &mut i.values {
        *v += 0.1f32.copysign(*v);
    }
    i
}

pub async fn elementwise_ops<B: Backend>(be: &B) {
    grad_check(
        be,
        "add_bias",
        vec![input(&[2, 3, 5], 1, true), input(&[5], 2, true)],
        &|t, v| t.add_bias(v[0], v[1]),
    )
    .await;
    grad_check(
        be,
        "scale_features",
        vec![input(&[2, 3, 5], 11, true), input(&[5], 12, true)],
        &|t, v| t.scale_features(v[0], v[1]),
    )
    .await;
    grad_check(
        be,
        "scale_features, length 1, frozen scale",
        vec![input(&[1, 1, 3], 13, true), input(&[3], 14, false)],
        &|t, v| t.scale_features(v[0], v[1]),
    )
    .await;
    let (x, s) = (data(2 * 3 * 5, 15), data(5, 16));
    let y = be
        .scale_features(
            &be.upload(&x, &Shape::new([2, 3, 5])).unwrap(),
            &be.upload(&s, &Shape::new([5])).unwrap(),
        )
        .unwrap();
    let want: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| f64::from(v) * f64::from(s[i % 5]))
        .collect();
    close("scale_features", &host(be, &y).await, &want, 1e-6);
    assert!(
        be.scale_features(
            &be.upload(&x, &Shape::new([2, 3, 5])).unwrap(),
            &be.upload(&s[..3], &Shape::new([3])).unwrap(),
        )
        .is_err(),
        "a scale of the wrong length is refused"
    );
    grad_check(
        be,
        "add",
        vec![input(&[3, 1, 2], 3, true), input(&[3, 1, 2], 4, true)],
        &|t, v| t.add(v[0], v[1]),
    )
    .await;
    grad_check(
        be,
        "mul",
        vec![input(&[7], 5, true), input(&[7], 6, true)],
        &|t, v| t.mul(v[0], v[1]),
    )
    .await;
    grad_check(be, "scale", vec![input(&[2, 3], 7, true)], &|t, v| {
        t.scale(v[0], -1.7)
    })
    .await;
    for act in Activation::ALL {
        let x = away_from_zero(input(&[3, 7], 8, true));
        grad_check(be, &format!("{act:?}"), vec![x], &|t, v| {
            t.activation(v[0], act)
        })
        .await;
    }
    grad_check(be, "tanh", vec![input(&[1, 5], 9, true)], &|t, v| {
        t.tanh(v[0])
    })
    .await;
    grad_check(be, "reshape", vec![input(&[2, 3, 4], 10, true)], &|t, v| {
        t.reshape(v[0], &Shape::new([6, 4]))
    })
    .await;
}

pub async fn gelu_forward_is_the_erf_form<B: Backend>(be: &B) {
    let x: Vec<f32> = vec![-3.0, -1.0, -0.1, 0.0, 0.5, 2.0];
    let y = host(
        be,
        &be.activation(&be.upload(&x, &Shape::new([6])).unwrap(), Activation::Gelu)
            .unwrap(),
    )
    .await;
    // 0.5 x (1 + erf(x / sqrt 2)), erf values from tables.
    let erf = [
        -0.997_300_203_936_7,
        -0.682_689_492_137_1,
        -0.079_655_674_554_1,
        0.0,
        0.382_924_922_548_0,
        0.954_499_736_103_6,
    ];
    let want: Vec<f64> = x
        .iter()
        .zip(erf)
        .map(|(&x, e)| 0.5 * f64::from(x) * (1.0 + e))
        .collect();
    close("gelu", &y, &want, 1e-6);
}
