//! Elementwise ops and per-feature ops: bias add, add, multiply, scale, `scale_features`, GELU (the erf form), tanh, reshape.

use crate::{close, data, grad_check, host, input};
use tunelab_core::Shape;
use tunelab_core::backend::Backend;

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
    grad_check(be, "gelu", vec![input(&[3, 7], 8, true)], &|t, v| {
        t.gelu(v[0])
    })
    .await;
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
        &be.gelu(&be.upload(&x, &Shape::new([6])).unwrap()).unwrap(),
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
