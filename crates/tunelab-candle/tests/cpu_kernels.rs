//! What only the candle CPU backend has: its fused kernels against the composite candle ops
//! CUDA runs, and results that do not depend on the thread count. Every op's forward and
//! backward on every backend is the shared conformance suite's (`tests/conformance.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use tunelab_candle::Candle;
use tunelab_core::Shape;
use tunelab_core::backend::{AdamW, Backend};

fn host(t: &candle_core::Tensor) -> Vec<f32> {
    pollster::block_on(Candle::cpu().download(t)).unwrap()
}

/// Deterministic values in about [-1, 1].
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The fused CPU kernels (GELU, layer norm, attention with its masks) against candle's
/// composite ops, which CUDA runs: the same values forward and backward.
#[test]
fn fused_cpu_kernels_match_the_composite_ops() {
    let (fused, plain) = (Candle::cpu(), Candle::cpu_composite());
    let up = |be: &Candle, dims: &[usize], seed: u64| {
        let s = Shape::new(dims);
        be.upload(&data(s.numel(), seed), &s).unwrap()
    };
    let same = |name: &str, a: &candle_core::Tensor, b: &candle_core::Tensor, tol: f32| {
        assert_eq!(a.dims(), b.dims(), "{name}: shapes");
        let (a, b) = (host(a), host(b));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{name}[{i}]: fused {x} vs composite {y}"
            );
        }
    };
    // Scaled up so the activations see their tails, odd sizes so no loop is a multiple of 8.
    let x: Vec<_> = [&fused, &plain]
        .iter()
        .map(|be| be.scale(&up(be, &[3, 5, 13], 1), 4.0).unwrap())
        .collect();
    let dy: Vec<_> = [&fused, &plain]
        .iter()
        .map(|be| up(be, &[3, 5, 13], 2))
        .collect();
    for act in tunelab_core::backend::Activation::ALL {
        same(
            &format!("{act:?}"),
            &fused.activation(&x[0], act).unwrap(),
            &plain.activation(&x[1], act).unwrap(),
            1e-6,
        );
        same(
            &format!("{act:?} backward"),
            &fused.activation_backward(&x[0], &dy[0], act).unwrap(),
            &plain.activation_backward(&x[1], &dy[1], act).unwrap(),
            1e-6,
        );
    }
    let g: Vec<_> = [&fused, &plain].iter().map(|be| up(be, &[13], 3)).collect();
    let bta: Vec<_> = [&fused, &plain].iter().map(|be| up(be, &[13], 4)).collect();
    let (yf, sf) = fused.layer_norm(&x[0], &g[0], &bta[0], 1e-5).unwrap();
    let (yp, sp) = plain.layer_norm(&x[1], &g[1], &bta[1], 1e-5).unwrap();
    same("layer_norm", &yf, &yp, 1e-5);
    same("layer_norm mean", &sf.mean, &sp.mean, 1e-6);
    same("layer_norm rstd", &sf.rstd, &sp.rstd, 1e-5);
    let bf = fused
        .layer_norm_backward(&x[0], &g[0], &sf, &dy[0])
        .unwrap();
    let bp = plain
        .layer_norm_backward(&x[1], &g[1], &sp, &dy[1])
        .unwrap();
    same("layer_norm dx", &bf.0, &bp.0, 1e-5);
    same("layer_norm dgamma", &bf.1, &bp.1, 1e-5);
    same("layer_norm dbeta", &bf.2, &bp.2, 1e-5);
    same(
        "add_bias",
        &fused.add_bias(&x[0], &g[0]).unwrap(),
        &plain.add_bias(&x[1], &g[1]).unwrap(),
        0.0,
    );
    let w: Vec<_> = [&fused, &plain]
        .iter()
        .map(|be| up(be, &[7, 13], 5))
        .collect();
    let wb: Vec<_> = [&fused, &plain].iter().map(|be| up(be, &[7], 6)).collect();
    same(
        "linear",
        &fused.linear(&x[0], &w[0], Some(&wb[0])).unwrap(),
        &plain.linear(&x[1], &w[1], Some(&wb[1])).unwrap(),
        1e-5,
    );
    same(
        "sum_to_last",
        &fused.sum_to_last(&x[0]).unwrap(),
        &plain.sum_to_last(&x[1]).unwrap(),
        1e-5,
    );

    // Element-wise ops and the optimiser over several of the kernels' blocks (4096 values),
    // the last one partial: the same values as candle's ops (AdamW to the bit).
    let n = 3 * 4096 + 5;
    let vecs: Vec<Vec<_>> = [&fused, &plain]
        .iter()
        .map(|be| (0..4).map(|i| up(be, &[n], 20 + i)).collect())
        .collect();
    let (vf, vp) = (&vecs[0], &vecs[1]);
    for (name, f, p) in [
        ("add", fused.add(&vf[0], &vf[1]), plain.add(&vp[0], &vp[1])),
        ("mul", fused.mul(&vf[0], &vf[1]), plain.mul(&vp[0], &vp[1])),
        ("scale", fused.scale(&vf[0], 0.3), plain.scale(&vp[0], 0.3)),
    ] {
        same(name, &f.unwrap(), &p.unwrap(), 0.0);
    }
    same(
        "sum_squares",
        &fused.sum_squares(&vf[0]).unwrap(),
        &plain.sum_squares(&vp[0]).unwrap(),
        1e-5,
    );
    for step in [1, 7] {
        let hp = AdamW {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
            step,
        };
        // m from data in [-1, 1], v from its squares: a state a few steps in.
        let (vf3, vp3) = (
            fused.mul(&vf[3], &vf[3]).unwrap(),
            plain.mul(&vp[3], &vp[3]).unwrap(),
        );
        let f = fused.adamw(&vf[0], &vf[1], &vf[2], &vf3, 0.7, hp).unwrap();
        let p = plain.adamw(&vp[0], &vp[1], &vp[2], &vp3, 0.7, hp).unwrap();
        same(&format!("adamw step {step} param"), &f.0, &p.0, 0.0);
        same(&format!("adamw step {step} m"), &f.1, &p.1, 0.0);
        same(&format!("adamw step {step} v"), &f.2, &p.2, 0.0);
    }

    // Attention, batch 2 × 9 tokens × 2 heads of 6, the second sequence padded after 5.
    let mut m = vec![1f32; 18];
    m[14..].fill(0.0);
    for causal in [false, true] {
        for masked in [false, true] {
            let qkv: Vec<Vec<_>> = [&fused, &plain]
                .iter()
                .map(|be| (0..4).map(|i| up(be, &[2, 9, 12], 10 + i)).collect())
                .collect();
            let masks: Vec<_> = [&fused, &plain]
                .iter()
                .map(|be| be.upload(&m, &Shape::new([2, 9])).unwrap())
                .collect();
            let name = format!("attention causal={causal} masked={masked}");
            let run = |be: &Candle, v: &[candle_core::Tensor], mask: &candle_core::Tensor| {
                let mask = masked.then_some(mask);
                let (out, lse) = be.attention(&v[0], &v[1], &v[2], 2, mask, causal).unwrap();
                let grads = be
                    .attention_backward(&v[0], &v[1], &v[2], &out, &lse, &v[3], 2, mask, causal)
                    .unwrap();
                (out, lse, grads)
            };
            let (of, pf, gf) = run(&fused, &qkv[0], &masks[0]);
            let (op, lp, gp) = run(&plain, &qkv[1], &masks[1]);
            same(&format!("{name} out"), &of, &op, 1e-5);
            // The fused forward saved the probabilities (these are small): rows of one.
            assert_eq!(pf.dims(), [2, 2, 9, 9], "{name}: saved probabilities");
            for (i, row) in host(&pf).chunks(9).enumerate() {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{name}: row {i} sums to {sum}");
            }
            same(&format!("{name} dq"), &gf.0, &gp.0, 1e-5);
            same(&format!("{name} dk"), &gf.1, &gp.1, 1e-5);
            same(&format!("{name} dv"), &gf.2, &gp.2, 1e-5);
            // The kernel's other mode saves the log-sum-exp and rebuilds the probabilities.
            let (v, mask) = (&qkv[0], masked.then_some(&masks[0]));
            let (ol, lse) =
                tunelab_candle::cpu::attention(&v[0], &v[1], &v[2], 2, mask, causal, false)
                    .unwrap();
            let gl = tunelab_candle::cpu::attention_backward(
                &v[0], &v[1], &v[2], &ol, &lse, &v[3], 2, mask, causal,
            )
            .unwrap();
            same(&format!("{name} out (lse)"), &ol, &op, 1e-5);
            same(&format!("{name} lse"), &lse, &lp, 1e-5);
            same(&format!("{name} dq (lse)"), &gl.0, &gp.0, 1e-5);
            same(&format!("{name} dk (lse)"), &gl.1, &gp.1, 1e-5);
            same(&format!("{name} dv (lse)"), &gl.2, &gp.2, 1e-5);
        }
    }
    // A query subset: 3 queries against the 9 keys (not causal), masked.
    let qkv: Vec<Vec<_>> = [&fused, &plain]
        .iter()
        .map(|be| {
            let dims = [[2, 3, 12], [2, 9, 12], [2, 9, 12], [2, 3, 12]];
            dims.iter()
                .zip(20..)
                .map(|(d, seed)| up(be, d, seed))
                .collect()
        })
        .collect();
    let run = |be: &Candle, v: &[candle_core::Tensor], mask: &candle_core::Tensor| {
        let (out, lse) = be
            .attention(&v[0], &v[1], &v[2], 2, Some(mask), false)
            .unwrap();
        let grads = be
            .attention_backward(&v[0], &v[1], &v[2], &out, &lse, &v[3], 2, Some(mask), false)
            .unwrap();
        (out, lse, grads)
    };
    let mf = fused.upload(&m, &Shape::new([2, 9])).unwrap();
    let mp = plain.upload(&m, &Shape::new([2, 9])).unwrap();
    let (of, pf, gf) = run(&fused, &qkv[0], &mf);
    let (op, lp, gp) = run(&plain, &qkv[1], &mp);
    assert_eq!(of.dims(), [2, 3, 12]);
    assert_eq!(pf.dims(), [2, 2, 3, 9]);
    assert_eq!(lp.dims(), [2, 2, 3]);
    assert_eq!(
        (gf.0.dims(), gf.1.dims()),
        ([2, 3, 12].as_slice(), [2, 9, 12].as_slice())
    );
    same("attention query subset out", &of, &op, 1e-5);
    let v = &qkv[0];
    let (_, lse) =
        tunelab_candle::cpu::attention(&v[0], &v[1], &v[2], 2, Some(&mf), false, false).unwrap();
    same("attention query subset lse", &lse, &lp, 1e-5);
    same("attention query subset dq", &gf.0, &gp.0, 1e-5);
    same("attention query subset dk", &gf.1, &gp.1, 1e-5);
    same("attention query subset dv", &gf.2, &gp.2, 1e-5);
}

/// The fused CPU attention runs its sequences on rayon's threads: with 1, 2 and 3 threads
/// (5 sequences, each with its own padding), the outputs and gradients are bit-identical.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn fused_attention_is_independent_of_the_thread_count() {
    let be = Candle::cpu();
    let (bsz, t, heads, c) = (5, 7, 2, 8);
    let sh = Shape::new([bsz, t, c]);
    let qkvd: Vec<_> = (0..4)
        .map(|i| be.upload(&data(sh.numel(), 40 + i), &sh).unwrap())
        .collect();
    // Sequence i keeps its first 7 - i tokens.
    let m: Vec<f32> = (0..bsz * t)
        .map(|k| if k % t < t - k / t { 1.0 } else { 0.0 })
        .collect();
    let mask = be.upload(&m, &Shape::new([bsz, t])).unwrap();
    let run = || {
        let (out, lse) = be
            .attention(&qkvd[0], &qkvd[1], &qkvd[2], heads, Some(&mask), false)
            .unwrap();
        let (dq, dk, dv) = be
            .attention_backward(
                &qkvd[0],
                &qkvd[1],
                &qkvd[2],
                &out,
                &lse,
                &qkvd[3],
                heads,
                Some(&mask),
                false,
            )
            .unwrap();
        assert_eq!(out.dims(), [bsz, t, c]);
        assert_eq!(lse.dims(), [bsz, heads, t, t]);
        [out, lse, dq, dk, dv].map(|x| host(&x))
    };
    let whole = tunelab_candle::on_pool(1, run).unwrap();
    for n in [2, 3] {
        assert_eq!(
            tunelab_candle::on_pool(n, run).unwrap(),
            whole,
            "{n} threads"
        );
    }
    // Padding is per sequence: the last sequence's keys after its 3rd token get no weight,
    // so its values there get no gradient.
    let dv = &whole[4];
    for pos in 3..t {
        let row = &dv[((bsz - 1) * t + pos) * c..][..c];
        assert!(
            row.iter().all(|&g| g == 0.0),
            "dv at padded key {pos}: {row:?}"
        );
    }
}
