//! One conformance suite for every [`Backend`]: each op through the tape, forward against
//! naive f64 loops, backward against central finite differences, on awkward shapes (odd
//! sizes, batch 1, length 1), and the tape's own contract. The candle CPU backend, its
//! composite path (what CUDA runs) and wgpu (lavapipe natively, the browser's WebGPU in the
//! wasm group) all run [`run`]. A new op adds its case here once.
//!
//! The checks panic on a mismatch (they are tests); each case is also public so a backend's
//! test can run one alone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a test failure

use tunelab_core::Shape;
use tunelab_core::backend::{AdamW, Backend, IGNORE_INDEX, Result};
use tunelab_core::tape::{Tape, Var};

/// Every case on `be`, in order; the first mismatch panics with the case and element.
pub async fn run<B: Backend>(be: &B) {
    matmul_linear_and_batched(be).await;
    matmul_forward_matches_loops(be).await;
    matmul_add_is_the_product_plus_the_accumulator(be).await;
    elementwise_ops(be).await;
    gelu_forward_is_the_erf_form(be).await;
    layer_norm_forward_and_backward(be).await;
    attention_forward_matches_naive_with_masks(be).await;
    attention_backward(be).await;
    embedding_gather_and_scatter_add(be).await;
    sequence_concat_and_slice(be).await;
    cross_entropy_with_ignore_index(be).await;
    adamw_matches_pytorch_formula(be).await;
    tape_frees_intermediates_and_skips_frozen_work(be).await;
}

async fn host<B: Backend>(be: &B, t: &B::Tensor) -> Vec<f32> {
    be.download(t).await.unwrap()
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

type Build<'a, B> = dyn Fn(&mut Tape<B>, &[Var]) -> Result<Var> + 'a;

/// Loss = sum of squares of `f`'s output times a fixed random weighting, so every output
/// element gets a distinct upstream gradient.
fn loss_of<B: Backend>(be: &B, inputs: &[Input], f: &Build<'_, B>) -> (Tape<B>, Vec<Var>, Var) {
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

async fn loss_value<B: Backend>(be: &B, inputs: &[Input], f: &Build<'_, B>) -> f64 {
    let (tape, _, loss) = loss_of(be, inputs, f);
    f64::from(host(be, tape.value(loss).unwrap()).await[0])
}

/// Checks every trainable input's gradient (up to 24 elements each) by central differences.
async fn grad_check<B: Backend>(be: &B, name: &str, mut inputs: Vec<Input>, f: &Build<'_, B>) {
    let (mut tape, vars, loss) = loss_of(be, &inputs, f);
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
            be,
            tape.grad(*var)
                .unwrap_or_else(|| panic!("{name}: input {k} has no gradient")),
        )
        .await;
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
            let up = loss_value(be, &inputs, f).await;
            inputs[k].values[i] = orig - eps;
            let down = loss_value(be, &inputs, f).await;
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

/// `got` within `tol` (relative, absolute below 1) of `want`; NaN never passes.
fn close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= tol * w.abs().max(1.0),
            "{name}[{i}]: {g} vs {w}"
        );
    }
}

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
