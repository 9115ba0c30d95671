//! Embedding gather and scatter-add, sequence concat and slice, cross-entropy with an ignore index, the AdamW update, and the tape's own contract.

use crate::{close, data, grad_check, host, input};
use tunelab_core::Shape;
use tunelab_core::backend::{AdamW, Backend, IGNORE_INDEX};
use tunelab_core::tape::Tape;

pub async fn embedding_gather_and_scatter_add<B: Backend>(be: &B) {
    let ids = be
        .upload_u32(&[3, 0, 3, 10, 1, 3], &Shape::new([2, 3]))
        .unwrap();
    let table = data(11 * 4, 51);
    let y = be
        .embedding(&be.upload(&table, &Shape::new([11, 4])).unwrap(), &ids)
        .unwrap();
    assert_eq!(be.shape(&y), Shape::new([2, 3, 4]));
    let got = host(be, &y).await;
    assert_eq!(&got[12..16], &table[40..44], "row 10");
    let ids2 = ids.clone();
    grad_check(
        be,
        "embedding with repeated ids",
        vec![input(&[11, 4], 52, true)],
        &move |t, v| t.embedding(v[0], &ids2),
    )
    .await;
    let bad = be.upload_u32(&[11], &Shape::new([1, 1])).unwrap();
    let err = be
        .embedding(&be.upload(&table, &Shape::new([11, 4])).unwrap(), &bad)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("token id 11 is outside the vocabulary of 11"),
        "{err}"
    );
}

pub async fn sequence_concat_and_slice<B: Backend>(be: &B) {
    grad_check(
        be,
        "concat_seq",
        vec![input(&[2, 1, 3], 61, true), input(&[2, 4, 3], 62, true)],
        &|t, v| t.concat_seq(v[0], v[1]),
    )
    .await;
    grad_check(
        be,
        "slice_seq middle",
        vec![input(&[2, 5, 3], 63, true)],
        &|t, v| t.slice_seq(v[0], 1, 3),
    )
    .await;
    grad_check(
        be,
        "slice_seq head",
        vec![input(&[1, 4, 2], 64, true)],
        &|t, v| t.slice_seq(v[0], 0, 1),
    )
    .await;
}

pub async fn cross_entropy_with_ignore_index<B: Backend>(be: &B) {
    let (n, k) = (5, 7);
    let logits = data(n * k, 71);
    let labels = [3u32, IGNORE_INDEX, 0, 6, 6];
    let lt = be.upload_u32(&labels, &Shape::new([n])).unwrap();
    let sum = host(
        be,
        &be.cross_entropy_sum(&be.upload(&logits, &Shape::new([n, k])).unwrap(), &lt)
            .unwrap(),
    )
    .await;
    let mut want = 0.0;
    for (r, &l) in labels.iter().enumerate() {
        if l == IGNORE_INDEX {
            continue;
        }
        let row: Vec<f64> = logits[r * k..(r + 1) * k]
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        want += lse - row[l as usize];
    }
    close("cross_entropy_sum", &sum, &[want], 1e-5);

    // Through the tape, the loss is the output itself (not squared): check d loss directly.
    let mut tape = Tape::new(be.clone());
    let x = tape.leaf(be.upload(&logits, &Shape::new([n, k])).unwrap(), true);
    let loss = tape.cross_entropy(x, &lt, 0.25).unwrap();
    tape.backward(loss).unwrap();
    let g = host(be, tape.grad(x).unwrap()).await;
    assert!(
        g[k..2 * k].iter().all(|&v| v == 0.0),
        "ignored row has zero gradient"
    );
    for r in [0usize, 2, 3] {
        let row: Vec<f64> = logits[r * k..(r + 1) * k]
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        for j in 0..k {
            let onehot = if j as u32 == labels[r] { 1.0 } else { 0.0 };
            let want = 0.25 * (row[j].exp() / z - onehot);
            assert!(
                (f64::from(g[r * k + j]) - want).abs() < 1e-6,
                "row {r} class {j}"
            );
        }
    }
    let lt2 = lt.clone();
    grad_check(
        be,
        "cross_entropy inside a larger graph",
        vec![input(&[5, 7], 72, true)],
        &move |t, v| t.cross_entropy(v[0], &lt2, 0.5),
    )
    .await;
}

pub async fn adamw_matches_pytorch_formula<B: Backend>(be: &B) {
    let p = data(6, 81);
    let g = data(6, 82);
    let hp = AdamW {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        step: 1,
    };
    let sh = Shape::new([6]);
    let z = be.zeros(&sh).unwrap();
    let (p1, m1, v1) = be
        .adamw(
            &be.upload(&p, &sh).unwrap(),
            &be.upload(&g, &sh).unwrap(),
            &z,
            &z,
            0.5,
            hp,
        )
        .unwrap();
    let (p1, m1, v1) = (
        host(be, &p1).await,
        host(be, &m1).await,
        host(be, &v1).await,
    );
    for i in 0..6 {
        let (p, g) = (f64::from(p[i]), 0.5 * f64::from(g[i]));
        let m = 0.1 * g;
        let v = 0.001 * g * g;
        let decayed = p * (1.0 - 1e-2 * 0.01);
        let want = decayed - (1e-2 / 0.1) * m / ((v.sqrt() / 0.001f64.sqrt()) + 1e-8);
        assert!((f64::from(m1[i]) - m).abs() < 1e-7);
        assert!((f64::from(v1[i]) - v).abs() < 1e-9);
        assert!(
            (f64::from(p1[i]) - want).abs() < 1e-6,
            "{i}: {} vs {want}",
            p1[i]
        );
    }
}

pub async fn tape_frees_intermediates_and_skips_frozen_work<B: Backend>(be: &B) {
    let mut tape = Tape::new(be.clone());
    let x = tape.leaf(be.upload(&data(6, 91), &Shape::new([2, 3])).unwrap(), false);
    let w_frozen = tape.leaf(
        be.upload(&data(12, 92), &Shape::new([4, 3])).unwrap(),
        false,
    );
    let w = tape.leaf(be.upload(&data(8, 93), &Shape::new([2, 4])).unwrap(), true);
    let h = tape.matmul(x, w_frozen, false, true).unwrap();
    assert!(
        !tape.needs_grad(h),
        "ops on frozen values are not recorded for backward"
    );
    let y = tape.matmul(h, w, false, true).unwrap();
    let loss = tape.sum_squares(y).unwrap();
    tape.backward(loss).unwrap();
    assert!(tape.grad(w).is_some());
    assert!(tape.grad(w_frozen).is_none() && tape.grad(x).is_none());
    assert!(
        tape.value(y).is_err(),
        "intermediate activations are freed after backward"
    );
    assert!(tape.value(w).is_ok(), "leaves stay");

    let mut tape = Tape::new(be.clone());
    let x = tape.leaf(be.upload(&[1.0, 2.0], &Shape::new([2])).unwrap(), false);
    let not_scalar = tape.scale(x, 2.0).unwrap();
    assert!(tape.backward(not_scalar).is_err());
    let l = tape.sum_squares(x).unwrap();
    let err = tape.backward(l).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not depend on any trainable parameter"),
        "{err}"
    );
}
