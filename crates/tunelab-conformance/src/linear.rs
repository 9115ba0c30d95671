//! Products: matmul (every transpose, batched and shared weights), the linear layer with and without bias, LoRA's merged-weight linear, and `matmul_add`.

use crate::{close, data, grad_check, host, input};
use tunelab_core::Shape;
use tunelab_core::backend::Backend;

pub async fn matmul_linear_and_batched<B: Backend>(be: &B) {
    grad_check(
        be,
        "linear (B,T,in)@(out,in)^T",
        vec![input(&[2, 3, 5], 1, true), input(&[4, 5], 2, true)],
        &|t, v| t.matmul(v[0], v[1], false, true),
    )
    .await;
    grad_check(
        be,
        "linear batch 1, length 1",
        vec![input(&[1, 1, 3], 3, true), input(&[2, 3], 4, true)],
        &|t, v| t.matmul(v[0], v[1], false, true),
    )
    .await;
    grad_check(
        be,
        "batched (B,M,K)@(B,K,N)",
        vec![input(&[2, 3, 5], 5, true), input(&[2, 5, 3], 6, true)],
        &|t, v| t.matmul(v[0], v[1], false, false),
    )
    .await;
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = if ta { [5, 3] } else { [3, 5] };
        let bb = if tb { [7, 5] } else { [5, 7] };
        grad_check(
            be,
            &format!("2-D ta={ta} tb={tb}"),
            vec![input(&a, 7, true), input(&bb, 8, true)],
            &move |t, v| t.matmul(v[0], v[1], ta, tb),
        )
        .await;
    }
    // Frozen weight: only the input gets a gradient.
    grad_check(
        be,
        "frozen weight",
        vec![input(&[2, 3, 5], 9, true), input(&[4, 5], 10, false)],
        &|t, v| t.matmul(v[0], v[1], false, true),
    )
    .await;
    // The fused linear op (the product starts from the bias rows on the CPU).
    grad_check(
        be,
        "linear op with bias",
        vec![
            input(&[2, 3, 5], 11, true),
            input(&[4, 5], 12, true),
            input(&[4], 13, true),
        ],
        &|t, v| t.linear(v[0], v[1], Some(v[2])),
    )
    .await;
    grad_check(
        be,
        "linear op, length 1, frozen weight and bias",
        vec![
            input(&[1, 1, 3], 14, true),
            input(&[2, 3], 15, false),
            input(&[2], 16, false),
        ],
        &|t, v| t.linear(v[0], v[1], Some(v[2])),
    )
    .await;
    // A linear layer with a LoRA update through the merged weight: every input's gradient,
    // with the base weight trainable or frozen.
    for (w_trainable, name) in [(true, "lora_linear"), (false, "lora_linear, frozen base")] {
        grad_check(
            be,
            name,
            vec![
                input(&[2, 3, 5], 19, true),
                input(&[4, 5], 20, w_trainable),
                input(&[4], 21, false),
                input(&[2, 5], 22, true),
                input(&[4, 2], 23, true),
            ],
            &|t, v| t.lora_linear(v[0], v[1], Some(v[2]), v[3], v[4], 1.5),
        )
        .await;
    }
    grad_check(
        be,
        "linear op without bias, 2-D input",
        vec![input(&[3, 5], 17, true), input(&[4, 5], 18, true)],
        &|t, v| t.linear(v[0], v[1], None),
    )
    .await;
}

pub async fn matmul_forward_matches_loops<B: Backend>(be: &B) {
    let (m, k, n) = (3, 5, 4);
    let a = data(m * k, 11);
    let w = data(n * k, 12);
    let y = be
        .matmul(
            &be.upload(&a, &Shape::new([m, k])).unwrap(),
            &be.upload(&w, &Shape::new([n, k])).unwrap(),
            false,
            true,
        )
        .unwrap();
    let mut want = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k)
                .map(|p| f64::from(a[i * k + p]) * f64::from(w[j * k + p]))
                .sum();
        }
    }
    close("x @ w^T", &host(be, &y).await, &want, 1e-5);
    let err = be
        .matmul(
            &be.upload(&a, &Shape::new([m, k])).unwrap(),
            &be.upload(&w, &Shape::new([n, k])).unwrap(),
            false,
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("inner dims differ"), "{err}");
}

pub async fn matmul_add_is_the_product_plus_the_accumulator<B: Backend>(be: &B) {
    // a, b and the product's dims; whether each operand is transposed.
    type Case<'a> = (&'a [usize], &'a [usize], &'a [usize], bool, bool);
    let cases: [Case; 4] = [
        (&[2, 3, 5], &[4, 5], &[2, 3, 4], false, true),
        (&[3, 5], &[5, 4], &[3, 4], false, false),
        (&[5, 3], &[5, 4], &[3, 4], true, false),
        (&[2, 3, 5], &[2, 5, 4], &[2, 3, 4], false, false),
    ];
    {
        let up = |dims: &[usize], seed: u64| {
            let s = Shape::new(dims);
            be.upload(&data(s.numel(), seed), &s).unwrap()
        };
        for (i, &(ad, bd, cd, ta, tb)) in cases.iter().enumerate() {
            let (a, b, c) = (up(ad, 60), up(bd, 61), up(cd, 62));
            let want = host(
                be,
                &be.add(&c, &be.matmul(&a, &b, ta, tb).unwrap()).unwrap(),
            )
            .await;
            let got = be.matmul_add(&c, &a, &b, ta, tb).unwrap();
            assert_eq!(be.shape(&got).dims(), cd, "case {i}");
            for (j, (x, y)) in host(be, &got).await.iter().zip(&want).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                    "case {i}[{j}]: {x} vs {y}"
                );
            }
        }
        let err = be
            .matmul_add(
                &up(&[3, 2, 4], 63),
                &up(&[2, 3, 5], 60),
                &up(&[4, 5], 61),
                false,
                true,
            )
            .unwrap_err()
            .to_string();
        // The error names the accumulator's shape (each backend words it its own way).
        assert!(err.contains("[3, 2, 4]"), "{err}");
    }
}
