//! Every op of the candle backend, through the tape: forward against naive f64 loops, backward
//! against central finite differences, on awkward shapes (odd sizes, batch 1, length 1).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use tunelab_candle::Candle;
use tunelab_core::Shape;
use tunelab_core::backend::{AdamW, Backend, IGNORE_INDEX, Result};
use tunelab_core::tape::{Tape, Var};

fn b() -> Candle {
    Candle::cpu()
}

fn host(t: &candle_core::Tensor) -> Vec<f32> {
    pollster::block_on(b().download(t)).unwrap()
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

struct Input {
    shape: Shape,
    values: Vec<f32>,
    trainable: bool,
}

fn input(dims: &[usize], seed: u64, trainable: bool) -> Input {
    let shape = Shape::new(dims);
    Input {
        values: data(shape.numel(), seed),
        shape,
        trainable,
    }
}

type Build<'a> = dyn Fn(&mut Tape<Candle>, &[Var]) -> Result<Var> + 'a;

/// Loss = sum of squares of `f`'s output times a fixed random weighting, so every output
/// element gets a distinct upstream gradient.
fn loss_of(inputs: &[Input], f: &Build<'_>) -> (Tape<Candle>, Vec<Var>, Var) {
    let be = b();
    let mut tape = Tape::new(be.clone());
    let vars: Vec<Var> = inputs
        .iter()
        .map(|i| tape.leaf(be.upload(&i.values, &i.shape).unwrap(), i.trainable))
        .collect();
    let y = f(&mut tape, &vars).unwrap();
    let shape = tape.shape(y).unwrap();
    let w = tape.leaf(be.upload(&data(shape.numel(), 777), &shape).unwrap(), false);
    let yw = tape.mul(y, w).unwrap();
    let loss = tape.sum_squares(yw).unwrap();
    (tape, vars, loss)
}

fn loss_value(inputs: &[Input], f: &Build<'_>) -> f64 {
    let (tape, _, loss) = loss_of(inputs, f);
    f64::from(host(tape.value(loss).unwrap())[0])
}

/// Checks every trainable input's gradient (up to 24 elements each) by central differences.
fn grad_check(name: &str, mut inputs: Vec<Input>, f: &Build<'_>) {
    let (mut tape, vars, loss) = loss_of(&inputs, f);
    tape.backward(loss).unwrap();
    let eps = 1e-2f32;
    for (k, var) in vars.iter().enumerate() {
        if !inputs[k].trainable {
            assert!(
                tape.grad(*var).is_none(),
                "{name}: frozen input {k} got a gradient"
            );
            continue;
        }
        let analytic = host(
            tape.grad(*var)
                .unwrap_or_else(|| panic!("{name}: input {k} has no gradient")),
        );
        assert_eq!(
            analytic.len(),
            inputs[k].values.len(),
            "{name}: gradient shape of input {k}"
        );
        let n = analytic.len();
        let stride = (n / 24).max(1);
        for i in (0..n).step_by(stride) {
            let orig = inputs[k].values[i];
            inputs[k].values[i] = orig + eps;
            let up = loss_value(&inputs, f);
            inputs[k].values[i] = orig - eps;
            let down = loss_value(&inputs, f);
            inputs[k].values[i] = orig;
            let numeric = (up - down) / (2.0 * f64::from(eps));
            let a = f64::from(analytic[i]);
            let tol = 2e-2 * a.abs().max(numeric.abs()).max(0.05);
            assert!(
                (a - numeric).abs() <= tol,
                "{name}: input {k}[{i}]: analytic {a}, numeric {numeric}"
            );
        }
    }
}

fn close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= tol * w.abs().max(1.0),
            "{name}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn matmul_linear_and_batched() {
    grad_check(
        "linear (B,T,in)@(out,in)^T",
        vec![input(&[2, 3, 5], 1, true), input(&[4, 5], 2, true)],
        &|t, v| t.matmul(v[0], v[1], false, true),
    );
    grad_check(
        "linear batch 1, length 1",
        vec![input(&[1, 1, 3], 3, true), input(&[2, 3], 4, true)],
        &|t, v| t.matmul(v[0], v[1], false, true),
    );
    grad_check(
        "batched (B,M,K)@(B,K,N)",
        vec![input(&[2, 3, 5], 5, true), input(&[2, 5, 3], 6, true)],
        &|t, v| t.matmul(v[0], v[1], false, false),
    );
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = if ta { [5, 3] } else { [3, 5] };
        let bb = if tb { [7, 5] } else { [5, 7] };
        grad_check(
            &format!("2-D ta={ta} tb={tb}"),
            vec![input(&a, 7, true), input(&bb, 8, true)],
            &move |t, v| t.matmul(v[0], v[1], ta, tb),
        );
    }
    // Frozen weight: only the input gets a gradient.
    grad_check(
        "frozen weight",
        vec![input(&[2, 3, 5], 9, true), input(&[4, 5], 10, false)],
        &|t, v| t.matmul(v[0], v[1], false, true),
    );
    // The fused linear op (the product starts from the bias rows on the CPU).
    grad_check(
        "linear op with bias",
        vec![
            input(&[2, 3, 5], 11, true),
            input(&[4, 5], 12, true),
            input(&[4], 13, true),
        ],
        &|t, v| t.linear(v[0], v[1], Some(v[2])),
    );
    grad_check(
        "linear op, length 1, frozen weight and bias",
        vec![
            input(&[1, 1, 3], 14, true),
            input(&[2, 3], 15, false),
            input(&[2], 16, false),
        ],
        &|t, v| t.linear(v[0], v[1], Some(v[2])),
    );
    // A linear layer with a LoRA update through the merged weight: every input's gradient,
    // with the base weight trainable or frozen.
    for (w_trainable, name) in [(true, "lora_linear"), (false, "lora_linear, frozen base")] {
        grad_check(
            name,
            vec![
                input(&[2, 3, 5], 19, true),
                input(&[4, 5], 20, w_trainable),
                input(&[4], 21, false),
                input(&[2, 5], 22, true),
                input(&[4, 2], 23, true),
            ],
            &|t, v| t.lora_linear(v[0], v[1], Some(v[2]), v[3], v[4], 1.5),
        );
    }
    grad_check(
        "linear op without bias, 2-D input",
        vec![input(&[3, 5], 17, true), input(&[4, 5], 18, true)],
        &|t, v| t.linear(v[0], v[1], None),
    );
}

#[test]
fn matmul_forward_matches_loops() {
    let be = b();
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
    close("x @ w^T", &host(&y), &want, 1e-5);
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

#[test]
fn elementwise_ops() {
    grad_check(
        "add_bias",
        vec![input(&[2, 3, 5], 1, true), input(&[5], 2, true)],
        &|t, v| t.add_bias(v[0], v[1]),
    );
    grad_check(
        "add",
        vec![input(&[3, 1, 2], 3, true), input(&[3, 1, 2], 4, true)],
        &|t, v| t.add(v[0], v[1]),
    );
    grad_check(
        "mul",
        vec![input(&[7], 5, true), input(&[7], 6, true)],
        &|t, v| t.mul(v[0], v[1]),
    );
    grad_check("scale", vec![input(&[2, 3], 7, true)], &|t, v| {
        t.scale(v[0], -1.7)
    });
    grad_check("gelu", vec![input(&[3, 7], 8, true)], &|t, v| t.gelu(v[0]));
    grad_check("tanh", vec![input(&[1, 5], 9, true)], &|t, v| t.tanh(v[0]));
    grad_check("reshape", vec![input(&[2, 3, 4], 10, true)], &|t, v| {
        t.reshape(v[0], &Shape::new([6, 4]))
    });
}

#[test]
fn gelu_forward_is_the_erf_form() {
    let be = b();
    let x: Vec<f32> = vec![-3.0, -1.0, -0.1, 0.0, 0.5, 2.0];
    let y = host(&be.gelu(&be.upload(&x, &Shape::new([6])).unwrap()).unwrap());
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

#[test]
fn layer_norm_forward_and_backward() {
    let be = b();
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
    let mut want = Vec::new();
    for r in 0..rows {
        let row: Vec<f64> = x[r * c..(r + 1) * c]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        for j in 0..c {
            want.push((row[j] - mean) / (var + 1e-5).sqrt() * f64::from(g[j]) + f64::from(bt[j]));
        }
    }
    close("layer_norm", &host(&y), &want, 1e-5);
    grad_check(
        "layer_norm (B,T,C)",
        vec![
            input(&[2, 3, 7], 24, true),
            input(&[7], 25, true),
            input(&[7], 26, true),
        ],
        &|t, v| t.layer_norm(v[0], v[1], v[2], 1e-5),
    );
    grad_check(
        "layer_norm one row",
        vec![
            input(&[1, 1, 5], 27, true),
            input(&[5], 28, false),
            input(&[5], 29, true),
        ],
        &|t, v| t.layer_norm(v[0], v[1], v[2], 1e-12),
    );
}

/// Naive attention in f64: `(B, T, H*D)` inputs.
fn attention_ref(
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

#[test]
fn attention_forward_matches_naive_with_masks() {
    let be = b();
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
            &host(&y),
            &want,
            1e-5,
        );
    }
    let err = be
        .attention(&up(&q), &up(&k), &up(&v), 4, None, false)
        .unwrap_err();
    assert!(
        err.to_string().contains("not divisible by 4 heads"),
        "{err}"
    );

    // A query subset (the first 2 positions' queries) gives those rows of the full output.
    assert!(be.attention_query_subset());
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
    // The saved probabilities (small here): queries × keys per head.
    assert_eq!(be.shape(&lse).dims(), [bsz, heads, tq, t]);
    let full = attention_ref(&q, &k, &v, (bsz, t, c), heads, Some(&mask[..]), false);
    let want: Vec<f64> = (0..bsz)
        .flat_map(|bi| full[bi * t * c..][..tq * c].to_vec())
        .collect();
    close("attention query subset", &host(&y), &want, 1e-5);
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

#[test]
fn attention_backward() {
    let be = b();
    let mask = be
        .upload(&[1., 1., 1., 1., 1., 0.], &Shape::new([2, 3]))
        .unwrap();
    for (use_mask, causal) in [(false, false), (true, false), (true, true)] {
        let m = mask.clone();
        grad_check(
            &format!("attention mask={use_mask} causal={causal}"),
            vec![
                input(&[2, 3, 4], 41, true),
                input(&[2, 3, 4], 42, true),
                input(&[2, 3, 4], 43, true),
            ],
            &move |t, v| t.attention(v[0], v[1], v[2], 2, use_mask.then_some(&m), causal),
        );
    }
    let m = mask.clone();
    grad_check(
        "attention, 2 queries against 3 keys",
        vec![
            input(&[2, 2, 4], 47, true),
            input(&[2, 3, 4], 48, true),
            input(&[2, 3, 4], 49, true),
        ],
        &move |t, v| t.attention(v[0], v[1], v[2], 2, Some(&m), false),
    );
    grad_check(
        "attention length 1",
        vec![
            input(&[1, 1, 3], 44, true),
            input(&[1, 1, 3], 45, true),
            input(&[1, 1, 3], 46, true),
        ],
        &|t, v| t.attention(v[0], v[1], v[2], 1, None, false),
    );
}

#[test]
fn embedding_gather_and_scatter_add() {
    let be = b();
    let ids = be
        .upload_u32(&[3, 0, 3, 10, 1, 3], &Shape::new([2, 3]))
        .unwrap();
    let table = data(11 * 4, 51);
    let y = be
        .embedding(&be.upload(&table, &Shape::new([11, 4])).unwrap(), &ids)
        .unwrap();
    assert_eq!(be.shape(&y), Shape::new([2, 3, 4]));
    let got = host(&y);
    assert_eq!(&got[12..16], &table[40..44], "row 10");
    let ids2 = ids.clone();
    grad_check(
        "embedding with repeated ids",
        vec![input(&[11, 4], 52, true)],
        &move |t, v| t.embedding(v[0], &ids2),
    );
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

#[test]
fn sequence_concat_and_slice() {
    grad_check(
        "concat_seq",
        vec![input(&[2, 1, 3], 61, true), input(&[2, 4, 3], 62, true)],
        &|t, v| t.concat_seq(v[0], v[1]),
    );
    grad_check(
        "slice_seq middle",
        vec![input(&[2, 5, 3], 63, true)],
        &|t, v| t.slice_seq(v[0], 1, 3),
    );
    grad_check(
        "slice_seq head",
        vec![input(&[1, 4, 2], 64, true)],
        &|t, v| t.slice_seq(v[0], 0, 1),
    );
}

#[test]
fn cross_entropy_with_ignore_index() {
    let be = b();
    let (n, k) = (5, 7);
    let logits = data(n * k, 71);
    let labels = [3u32, IGNORE_INDEX, 0, 6, 6];
    let lt = be.upload_u32(&labels, &Shape::new([n])).unwrap();
    let sum = host(
        &be.cross_entropy_sum(&be.upload(&logits, &Shape::new([n, k])).unwrap(), &lt)
            .unwrap(),
    );
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
    let g = host(tape.grad(x).unwrap());
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
        "cross_entropy inside a larger graph",
        vec![input(&[5, 7], 72, true)],
        &move |t, v| t.cross_entropy(v[0], &lt2, 0.5),
    );
}

#[test]
fn adamw_matches_pytorch_formula() {
    let be = b();
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
    let (p1, m1, v1) = (host(&p1), host(&m1), host(&v1));
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

#[test]
fn tape_frees_intermediates_and_skips_frozen_work() {
    let be = b();
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
    // Scaled up so GELU sees its tails, odd sizes so no loop is a multiple of 8.
    let x: Vec<_> = [&fused, &plain]
        .iter()
        .map(|be| be.scale(&up(be, &[3, 5, 13], 1), 4.0).unwrap())
        .collect();
    let dy: Vec<_> = [&fused, &plain]
        .iter()
        .map(|be| up(be, &[3, 5, 13], 2))
        .collect();
    same(
        "gelu",
        &fused.gelu(&x[0]).unwrap(),
        &plain.gelu(&x[1]).unwrap(),
        1e-6,
    );
    same(
        "gelu_backward",
        &fused.gelu_backward(&x[0], &dy[0]).unwrap(),
        &plain.gelu_backward(&x[1], &dy[1]).unwrap(),
        1e-6,
    );
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

/// `matmul_add`, how the tape adds a product to a gradient that already holds another
/// contribution, equals the product plus the accumulator on the fused CPU path and on
/// candle's ops, for the shapes the tape passes (a batched input by a shared weight, plain and
/// transposed 2-D products, a batched pair); an accumulator of another shape is refused.
#[test]
fn matmul_add_is_the_product_plus_the_accumulator() {
    // a, b and the product's dims; whether each operand is transposed.
    type Case<'a> = (&'a [usize], &'a [usize], &'a [usize], bool, bool);
    let cases: [Case; 4] = [
        (&[2, 3, 5], &[4, 5], &[2, 3, 4], false, true),
        (&[3, 5], &[5, 4], &[3, 4], false, false),
        (&[5, 3], &[5, 4], &[3, 4], true, false),
        (&[2, 3, 5], &[2, 5, 4], &[2, 3, 4], false, false),
    ];
    for be in [Candle::cpu(), Candle::cpu_composite()] {
        let up = |dims: &[usize], seed: u64| {
            let s = Shape::new(dims);
            be.upload(&data(s.numel(), seed), &s).unwrap()
        };
        for (i, &(ad, bd, cd, ta, tb)) in cases.iter().enumerate() {
            let (a, b, c) = (up(ad, 60), up(bd, 61), up(cd, 62));
            let want = host(&be.add(&c, &be.matmul(&a, &b, ta, tb).unwrap()).unwrap());
            let got = be.matmul_add(&c, &a, &b, ta, tb).unwrap();
            assert_eq!(got.dims(), cd, "case {i}");
            for (j, (x, y)) in host(&got).iter().zip(&want).enumerate() {
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
        assert!(
            err.contains("the accumulator has shape [3, 2, 4], expected the product's [2, 3] x 4"),
            "{err}"
        );
    }
}
