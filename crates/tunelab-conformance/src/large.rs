//! The ops again at the shapes where kernels split their work: past one workgroup (257
//! rows, 1,031 to 300,001 values), past one reduction pass (2048² + 5 values), across
//! vocabularies as wide as BERT's (30,522), attention past its 32-row tiles, and AdamW over
//! several steps. Forward against f64; backward along a random direction, two forward passes
//! per input however large it is. A backend whose storage bindings are capped runs these
//! through its binding-chunked paths too.

use crate::attention::attention_ref;
use crate::elementwise::{activation_ref, away_from_zero};
use crate::norm::layer_norm_ref;
use crate::{Input, close, data, directional_check, host, input};
use tunelab_core::Shape;
use tunelab_core::backend::{Activation, AdamW, Backend, IGNORE_INDEX};

/// Values spread over [-12, 12], reaching GELU's and tanh's flat tails.
fn wide(n: usize, seed: u64) -> Input {
    let mut i = input(&[n], seed, true);
    for v in &mut i.values {
        *v *= 12.0;
    }
    i
}

pub async fn ops_past_one_workgroup<B: Backend>(be: &B) {
    elementwise(be).await;
    bias_and_norm(be).await;
    attention(be).await;
    embedding_and_sequence(be).await;
    cross_entropy(be).await;
    reductions(be).await;
    adamw(be).await;
}

async fn elementwise<B: Backend>(be: &B) {
    for n in [1031usize, 70_001, 300_001] {
        let (a, b) = (wide(n, 101), input(&[n], 102, true));
        let sh = Shape::new([n]);
        let (ta, tb) = (
            be.upload(&a.values, &sh).unwrap(),
            be.upload(&b.values, &sh).unwrap(),
        );
        let pairs = a
            .values
            .iter()
            .zip(&b.values)
            .map(|(&x, &y)| (f64::from(x), f64::from(y)));
        let want_add: Vec<f64> = pairs.clone().map(|(x, y)| x + y).collect();
        let want_mul: Vec<f64> = pairs.map(|(x, y)| x * y).collect();
        let xs = || a.values.iter().map(|&x| f64::from(x));
        let want_tanh: Vec<f64> = xs().map(f64::tanh).collect();
        let want_scale: Vec<f64> = xs().map(|x| -1.75 * x).collect();
        close(
            &format!("add {n}"),
            &host(be, &be.add(&ta, &tb).unwrap()).await,
            &want_add,
            1e-6,
        );
        close(
            &format!("mul {n}"),
            &host(be, &be.mul(&ta, &tb).unwrap()).await,
            &want_mul,
            1e-6,
        );
        let scale = be.scale(&ta, -1.75).unwrap();
        close(
            &format!("scale {n}"),
            &host(be, &scale).await,
            &want_scale,
            1e-6,
        );
        for act in Activation::ALL {
            let want: Vec<f64> = xs().map(|x| activation_ref(act, x)).collect();
            close(
                &format!("{act:?} {n}"),
                &host(be, &be.activation(&ta, act).unwrap()).await,
                &want,
                1e-5,
            );
        }
        close(
            &format!("tanh {n}"),
            &host(be, &be.tanh(&ta).unwrap()).await,
            &want_tanh,
            1e-5,
        );
        let s = be.upload(&[0.37], &Shape::new([1])).unwrap();
        let want: Vec<f64> = xs().map(|x| x * f64::from(0.37f32)).collect();
        close(
            &format!("scale_by {n}"),
            &host(be, &be.scale_by(&ta, &s).unwrap()).await,
            &want,
            1e-6,
        );
        // Gradients at moderate values (away from the tails, where they vanish).
        let mid = input(&[n], 103, true);
        for act in Activation::ALL {
            let x = if act == Activation::Relu {
                away_from_zero(mid.clone())
            } else {
                mid.clone()
            };
            directional_check(be, &format!("{act:?} {n}"), vec![x], &|t, v| {
                t.activation(v[0], act)
            })
            .await;
        }
        directional_check(be, &format!("tanh {n}"), vec![mid.clone()], &|t, v| {
            t.tanh(v[0])
        })
        .await;
        directional_check(be, &format!("mul {n}"), vec![mid, b.clone()], &|t, v| {
            t.mul(v[0], v[1])
        })
        .await;
    }
}

async fn bias_and_norm<B: Backend>(be: &B) {
    for (rows, cols) in [(257usize, 33usize), (1, 385), (700, 3)] {
        let (x, bias) = (input(&[rows, cols], 111, true), input(&[cols], 112, true));
        let y = be
            .add_bias(
                &be.upload(&x.values, &x.shape).unwrap(),
                &be.upload(&bias.values, &bias.shape).unwrap(),
            )
            .unwrap();
        let want: Vec<f64> = x
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| f64::from(v) + f64::from(bias.values[i % cols]))
            .collect();
        close(
            &format!("add_bias {rows}x{cols}"),
            &host(be, &y).await,
            &want,
            1e-6,
        );
        // The bias gradient is the column sums (`sum_to_last`).
        directional_check(
            be,
            &format!("add_bias {rows}x{cols}"),
            vec![x.clone(), bias.clone()],
            &|t, v| t.add_bias(v[0], v[1]),
        )
        .await;
        directional_check(
            be,
            &format!("scale_features {rows}x{cols}"),
            vec![x, bias],
            &|t, v| t.scale_features(v[0], v[1]),
        )
        .await;
    }
    for (rows, c) in [(17usize, 384usize), (2, 1031), (300, 7)] {
        let (x, g, b) = (
            input(&[rows, c], 121, true),
            input(&[c], 122, true),
            input(&[c], 123, true),
        );
        let (y, _) = be
            .layer_norm(
                &be.upload(&x.values, &x.shape).unwrap(),
                &be.upload(&g.values, &g.shape).unwrap(),
                &be.upload(&b.values, &b.shape).unwrap(),
                1e-12,
            )
            .unwrap();
        let want = layer_norm_ref(&x.values, &g.values, &b.values, c, 1e-12);
        close(
            &format!("layer_norm {rows}x{c}"),
            &host(be, &y).await,
            &want,
            1e-5,
        );
        directional_check(
            be,
            &format!("layer_norm {rows}x{c}"),
            vec![x, g, b],
            &|t, v| t.layer_norm(v[0], v[1], v[2], 1e-12),
        )
        .await;
    }
}

async fn attention<B: Backend>(be: &B) {
    // (batch, length, heads, head size, causal, padded): rows and keys past the tiled
    // kernel's 32-row blocks, head sizes 1 to 65.
    for (bsz, t, heads, hd, causal, padded) in [
        (2usize, 70usize, 2usize, 16usize, true, true),
        (1, 130, 1, 65, false, true),
        (2, 37, 3, 32, true, true),
        (1, 33, 2, 64, false, true),
        (1, 129, 1, 32, false, false),
    ] {
        let c = heads * hd;
        let name =
            format!("attention B={bsz} T={t} H={heads} D={hd} causal={causal} padded={padded}");
        // Batch row b pads its last 3b + 1 positions (position 0 always attends).
        let mask: Vec<f32> = (0..bsz * t)
            .map(|i| {
                if padded && i % t >= t - 3 * (i / t) - 1 && i % t > 0 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let qkv: Vec<Input> = (0..3).map(|s| input(&[bsz, t, c], 131 + s, true)).collect();
        let m = be.upload(&mask, &Shape::new([bsz, t])).unwrap();
        let up = |i: &Input| be.upload(&i.values, &i.shape).unwrap();
        let (o, _) = be
            .attention(
                &up(&qkv[0]),
                &up(&qkv[1]),
                &up(&qkv[2]),
                heads,
                padded.then_some(&m),
                causal,
            )
            .unwrap();
        let want = attention_ref(
            &qkv[0].values,
            &qkv[1].values,
            &qkv[2].values,
            (bsz, t, c),
            heads,
            padded.then_some(mask.as_slice()),
            causal,
        );
        close(&name, &host(be, &o).await, &want, 1e-4);
        directional_check(be, &name, qkv, &move |tp, v| {
            tp.attention(v[0], v[1], v[2], heads, padded.then_some(&m), causal)
        })
        .await;
    }
}

async fn embedding_and_sequence<B: Backend>(be: &B) {
    for (vocab, c, n) in [(61usize, 16usize, 37usize), (300, 7, 1000)] {
        let table = input(&[vocab, c], 141, true);
        let id_values: Vec<u32> = (0..n).map(|i| ((i * 7 + i / 3) % vocab) as u32).collect();
        let ids = be.upload_u32(&id_values, &Shape::new([1, n])).unwrap();
        let rows = host(
            be,
            &be.embedding(&be.upload(&table.values, &table.shape).unwrap(), &ids)
                .unwrap(),
        )
        .await;
        let want: Vec<f64> = id_values
            .iter()
            .flat_map(|&i| {
                table.values[i as usize * c..(i as usize + 1) * c]
                    .iter()
                    .map(|&v| f64::from(v))
            })
            .collect();
        close(
            &format!("embedding {vocab}x{c}, {n} ids"),
            &rows,
            &want,
            0.0,
        );
        // Ids repeat: the table's gradient adds every position of an id.
        directional_check(
            be,
            &format!("embedding {vocab}x{c}, {n} ids"),
            vec![table],
            &move |t, v| t.embedding(v[0], &ids),
        )
        .await;
    }
    let (a, b) = (
        input(&[3, 20, 16], 151, true),
        input(&[3, 1, 16], 152, true),
    );
    directional_check(
        be,
        "concat_seq (3, 20 + 1, 16)",
        vec![a.clone(), b],
        &|t, v| t.concat_seq(v[0], v[1]),
    )
    .await;
    directional_check(be, "slice_seq (3, 20, 16) [1, 18)", vec![a], &|t, v| {
        t.slice_seq(v[0], 1, 17)
    })
    .await;
}

async fn cross_entropy<B: Backend>(be: &B) {
    for (rows, k) in [(7usize, 257usize), (3, 30_522), (300, 2)] {
        let mut logits = input(&[rows, k], 161, true);
        for v in &mut logits.values {
            *v *= 4.0;
        }
        let labels: Vec<u32> = (0..rows)
            .map(|r| {
                if r % 4 == 3 {
                    IGNORE_INDEX
                } else {
                    ((r * 7) % k) as u32
                }
            })
            .collect();
        let lt = be.upload_u32(&labels, &Shape::new([rows])).unwrap();
        let sum = be
            .cross_entropy_sum(&be.upload(&logits.values, &logits.shape).unwrap(), &lt)
            .unwrap();
        let mut want = 0.0;
        for (r, &l) in labels.iter().enumerate() {
            if l == IGNORE_INDEX {
                continue;
            }
            let row: Vec<f64> = logits.values[r * k..(r + 1) * k]
                .iter()
                .map(|&x| f64::from(x))
                .collect();
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            want += lse - row[l as usize];
        }
        close(
            &format!("cross_entropy_sum {rows}x{k}"),
            &host(be, &sum).await,
            &[want],
            1e-5,
        );
        directional_check(
            be,
            &format!("cross_entropy {rows}x{k}"),
            vec![logits],
            &move |t, v| t.cross_entropy(v[0], &lt, 0.25),
        )
        .await;
    }
}

async fn reductions<B: Backend>(be: &B) {
    // One workgroup's worth, one more, and enough for two and three reduction passes.
    for n in [2047usize, 2049, 70_001, 2048 * 2048 + 5] {
        let x = data(n, 171);
        let got = host(
            be,
            &be.sum_squares(&be.upload(&x, &Shape::new([n])).unwrap())
                .unwrap(),
        )
        .await;
        let want: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
        // f32 accumulation over millions of values: candle's own sum (the composite path)
        // drifts by ~2e-5 at 4M values.
        close(&format!("sum_squares {n}"), &got, &[want], 1e-4);
    }
    // Several tensors folded together: single values and enough partials for two passes.
    let many: Vec<Vec<f32>> = [1usize, 2047, 2049, 5, 2048 * 2100 + 3, 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| data(n, 180 + i as u64))
        .collect();
    let tensors: Vec<B::Tensor> = many
        .iter()
        .map(|v| be.upload(v, &Shape::new([v.len()])).unwrap())
        .collect();
    let refs: Vec<&B::Tensor> = tensors.iter().collect();
    let got = host(be, &be.sum_squares_many(&refs).unwrap().unwrap()).await;
    let want: f64 = many.iter().flatten().map(|&v| f64::from(v).powi(2)).sum();
    close("sum_squares_many", &got, &[want], 1e-4);
    assert!(
        be.sum_squares_many(&[]).unwrap().is_none(),
        "no tensors: no sum"
    );
}

/// Five AdamW steps on 1,003 values against PyTorch's formula in f64.
async fn adamw<B: Backend>(be: &B) {
    let n = 1003;
    let sh = Shape::new([n]);
    let (mut p, mut m, mut v) = (
        be.upload(&data(n, 191), &sh).unwrap(),
        be.zeros(&sh).unwrap(),
        be.zeros(&sh).unwrap(),
    );
    let mut want_p: Vec<f64> = data(n, 191).iter().map(|&x| f64::from(x)).collect();
    let (mut want_m, mut want_v) = (vec![0f64; n], vec![0f64; n]);
    let (lr, b1, b2, eps, wd, scale) = (1e-2, 0.9, 0.999, 1e-8, 0.01, 0.5f32);
    for step in 1..=5u32 {
        let g = data(n, 200 + u64::from(step));
        let hp = AdamW {
            lr,
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
            step,
        };
        (p, m, v) = be
            .adamw(&p, &be.upload(&g, &sh).unwrap(), &m, &v, scale, hp)
            .unwrap();
        let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        for i in 0..n {
            let gi = f64::from(scale) * f64::from(g[i]);
            want_m[i] = b1 * want_m[i] + (1.0 - b1) * gi;
            want_v[i] = b2 * want_v[i] + (1.0 - b2) * gi * gi;
            want_p[i] *= 1.0 - lr * wd;
            want_p[i] -= lr / c1 * want_m[i] / ((want_v[i] / c2).sqrt() + eps);
        }
        close(
            &format!("adamw step {step} param"),
            &host(be, &p).await,
            &want_p,
            1e-5,
        );
        close(
            &format!("adamw step {step} m"),
            &host(be, &m).await,
            &want_m,
            1e-5,
        );
        close(
            &format!("adamw step {step} v"),
            &host(be, &v).await,
            &want_v,
            1e-5,
        );
    }
}
