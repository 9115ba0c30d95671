//! Fused multi-head attention: padding and causal masks, query subsets, against naive f64 attention and finite differences.

use crate::{close, data, grad_check, host, input};
use tunelab_core::Shape;
use tunelab_core::backend::Backend;

/// Naive attention in f64: `(B, T, H*D)` inputs.
pub(crate) fn attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: (usize, usize, usize),
    heads: usize,
    mask: Option<&[f32]>,
    causal: bool,
) -> Vec<f64> {
    let (bsz, t, c) = dims;
    let d = c / heads;
    let mut out = vec![0f64; bsz * t * c];
    for bi in 0..bsz {
        for h in 0..heads {
            for i in 0..t {
                let at =
                    |x: &[f32], pos: usize, e: usize| f64::from(x[(bi * t + pos) * c + h * d + e]);
                let mut s: Vec<f64> = (0..t)
                    .map(|j| {
                        let mut dot = (0..d).map(|e| at(q, i, e) * at(k, j, e)).sum::<f64>()
                            / (d as f64).sqrt();
                        if mask.is_some_and(|m| m[bi * t + j] == 0.0) || (causal && j > i) {
                            dot = f64::NEG_INFINITY;
                        }
                        dot
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s
                    .iter_mut()
                    .map(|x| {
                        *x = (*x - max).exp();
                        *x
                    })
                    .sum();
                for e in 0..d {
                    out[(bi * t + i) * c + h * d + e] =
                        (0..t).map(|j| s[j] / sum * at(v, j, e)).sum();
                }
            }
        }
    }
    out
}

pub async fn attention_forward_matches_naive_with_masks<B: Backend>(be: &B) {
    let (bsz, t, c, heads) = (2, 5, 6, 3);
    let q = data(bsz * t * c, 31);
    let k = data(bsz * t * c, 32);
    let v = data(bsz * t * c, 33);
    let mask = [1., 1., 1., 1., 1., 1., 1., 1., 0., 0.];
    let sh = Shape::new([bsz, t, c]);
    let up = |x: &[f32]| be.upload(x, &sh).unwrap();
    let m = be.upload(&mask, &Shape::new([bsz, t])).unwrap();
    for (mask_on, causal) in [(false, false), (true, false), (false, true), (true, true)] {
        let (y, _) = be
            .attention(
                &up(&q),
                &up(&k),
                &up(&v),
                heads,
                mask_on.then_some(&m),
                causal,
            )
            .unwrap();
        let want = attention_ref(
            &q,
            &k,
            &v,
            (bsz, t, c),
            heads,
            mask_on.then_some(&mask[..]),
            causal,
        );
        close(
            &format!("attention mask={mask_on} causal={causal}"),
            &host(be, &y).await,
            &want,
            1e-5,
        );
    }
    let err = be
        .attention(&up(&q), &up(&k), &up(&v), 4, None, false)
        .unwrap_err();
    assert!(err.to_string().contains("4 heads"), "{err}");

    // A query subset (the first 2 positions' queries) gives those rows of the full output,
    // where the backend takes one.
    if !be.attention_query_subset() {
        return;
    }
    let tq = 2;
    let q_sub: Vec<f32> = (0..bsz)
        .flat_map(|bi| q[bi * t * c..][..tq * c].to_vec())
        .collect();
    let (y, lse) = be
        .attention(
            &be.upload(&q_sub, &Shape::new([bsz, tq, c])).unwrap(),
            &up(&k),
            &up(&v),
            heads,
            Some(&m),
            false,
        )
        .unwrap();
    // What is saved for the backward: the log-sum-exp or the probabilities, per query.
    let saved = be.shape(&lse);
    assert!(
        saved.dims() == [bsz, heads, tq] || saved.dims() == [bsz, heads, tq, t],
        "saved {saved}"
    );
    let full = attention_ref(&q, &k, &v, (bsz, t, c), heads, Some(&mask[..]), false);
    let want: Vec<f64> = (0..bsz)
        .flat_map(|bi| full[bi * t * c..][..tq * c].to_vec())
        .collect();
    close("attention query subset", &host(be, &y).await, &want, 1e-5);
    // More queries than keys, or a causal subset, are refused with the shapes named.
    let q_long = be
        .upload(&data(bsz * 6 * c, 34), &Shape::new([bsz, 6, c]))
        .unwrap();
    let q_sub = be.upload(&q_sub, &Shape::new([bsz, tq, c])).unwrap();
    for (q, causal) in [(&q_long, false), (&q_sub, true)] {
        let err = be
            .attention(q, &up(&k), &up(&v), heads, None, causal)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Tq ≤ T"), "{err}");
    }
}

pub async fn attention_backward<B: Backend>(be: &B) {
    let mask = be
        .upload(&[1., 1., 1., 1., 1., 0.], &Shape::new([2, 3]))
        .unwrap();
    for (use_mask, causal) in [(false, false), (true, false), (true, true)] {
        let m = mask.clone();
        grad_check(
            be,
            &format!("attention mask={use_mask} causal={causal}"),
            vec![
                input(&[2, 3, 4], 41, true),
                input(&[2, 3, 4], 42, true),
                input(&[2, 3, 4], 43, true),
            ],
            &move |t, v| t.attention(v[0], v[1], v[2], 2, use_mask.then_some(&m), causal),
        )
        .await;
    }
    if be.attention_query_subset() {
        let m = mask.clone();
        grad_check(
            be,
            "attention, 2 queries against 3 keys",
            vec![
                input(&[2, 2, 4], 47, true),
                input(&[2, 3, 4], 48, true),
                input(&[2, 3, 4], 49, true),
            ],
            &move |t, v| t.attention(v[0], v[1], v[2], 2, Some(&m), false),
        )
        .await;
    }
    grad_check(
        be,
        "attention length 1",
        vec![
            input(&[1, 1, 3], 44, true),
            input(&[1, 1, 3], 45, true),
            input(&[1, 1, 3], 46, true),
        ],
        &|t, v| t.attention(v[0], v[1], v[2], 1, None, false),
    )
    .await;
}
