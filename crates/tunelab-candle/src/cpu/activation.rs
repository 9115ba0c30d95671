//! Activation functions and their backward as single passes over the values (GELU in its erf
//! and tanh forms, SiLU, ReLU). Each arm is its own loop, so the `match` is made once per
//! tensor and every loop body is branch-free and vectorises; `tanh` and the sigmoid are built
//! on [`exp`](super::exp).

use super::{exp, len_err, map, tensor, with_slices, zip_map};
use candle_core::{Result, Tensor};
use tunelab_core::backend::Activation;

const INV_SQRT_2PI: f32 = 0.398_942_3;
/// `√(2/π)`, GELU's tanh form.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// `erf(z)` and `e^(-z^2)` (Abramowitz & Stegun 7.1.26: absolute error < 1.5e-7 in exact
/// arithmetic, < 5e-7 in f32; GELU needs the absolute, not the relative, error small).
#[inline(always)]
pub(super) fn erf_and_gauss(z: f32) -> (f32, f32) {
    let a = z.abs();
    let t = 1.0 / (0.327_591_1 * a + 1.0);
    let mut poly = 1.061_405_4f32;
    for c in [-1.453_152, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        poly = poly * t + c;
    }
    let poly = poly * t;
    let g = exp(-a * a);
    let e = 1.0 - poly * g;
    (e.copysign(z), g)
}

/// `tanh(u)` as `1 - 2 / (e^(2u) + 1)`, `u` clamped to ±10 (where `tanh` is 1 in f32);
/// absolute error ~1e-7.
#[inline(always)]
fn tanh(u: f32) -> f32 {
    let u = u.clamp(-10.0, 10.0);
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// GELU's tanh form: the `tanh` and the derivative of its argument.
#[inline(always)]
fn gelu_tanh_parts(x: f32) -> (f32, f32) {
    let x2 = x * x;
    let t = tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x2 * x));
    (t, SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x2))
}

/// `act(x)` value by value.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    let y = with_slices([x], |[xs]| match act {
        Activation::Gelu => map(
            xs,
            #[inline(always)]
            |x| {
                let (e, _) = erf_and_gauss(x * std::f32::consts::FRAC_1_SQRT_2);
                0.5 * x * (1.0 + e)
            },
        ),
        Activation::GeluTanh => map(
            xs,
            #[inline(always)]
            |x| 0.5 * x * (1.0 + gelu_tanh_parts(x).0),
        ),
        Activation::Silu => map(
            xs,
            #[inline(always)]
            |x| x * sigmoid(x),
        ),
        Activation::Relu => map(
            xs,
            #[inline(always)]
            |x| x.max(0.0),
        ),
    })?;
    tensor(y, x.dims())
}

/// `dy * act'(x)`: GELU `Φ(x) + x φ(x)`; its tanh form `0.5 (1 + t) + 0.5 x (1 - t²) u'`;
/// SiLU `σ(x) (1 + x (1 - σ(x)))`; ReLU `1` where `x > 0`, else 0 (PyTorch's choice at 0).
pub fn activation_backward(x: &Tensor, dy: &Tensor, act: Activation) -> Result<Tensor> {
    if dy.elem_count() != x.elem_count() {
        return Err(len_err(
            "activation backward",
            "dy",
            dy.elem_count(),
            x.elem_count(),
        ));
    }
    let d = with_slices([x, dy], |[xs, dys]| match act {
        Activation::Gelu => zip_map(
            xs,
            dys,
            #[inline(always)]
            |x, dy| {
                let (e, g) = erf_and_gauss(x * std::f32::consts::FRAC_1_SQRT_2);
                dy * (0.5 * (1.0 + e) + x * g * INV_SQRT_2PI)
            },
        ),
        Activation::GeluTanh => zip_map(
            xs,
            dys,
            #[inline(always)]
            |x, dy| {
                let (t, du) = gelu_tanh_parts(x);
                dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
            },
        ),
        Activation::Silu => zip_map(
            xs,
            dys,
            #[inline(always)]
            |x, dy| {
                let s = sigmoid(x);
                dy * (s * (1.0 + x * (1.0 - s)))
            },
        ),
        Activation::Relu => zip_map(
            xs,
            dys,
            #[inline(always)]
            |x, dy| if x > 0.0 { dy } else { 0.0 },
        ),
    })?;
    tensor(d, x.dims())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tanh_and_sigmoid_match_the_library_functions() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            assert!((tanh(x) - x.tanh()).abs() < 3e-7, "tanh({x})");
            let s = 1.0 / (1.0 + (-x).exp());
            assert!((sigmoid(x) - s).abs() < 3e-7, "sigmoid({x})");
        }
        assert_eq!(tanh(1e30), 1.0);
        assert_eq!(tanh(-1e30), -1.0);
        assert!(sigmoid(-1e30) >= 0.0 && sigmoid(1e30) == 1.0);
    }
}
