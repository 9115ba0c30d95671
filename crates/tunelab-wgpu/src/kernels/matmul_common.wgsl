// What the matmul kernels (matmul.wgsl and the matmul_vec4.wgsl template) share: the
// uniform parameters and the split of the z workgroup id into a batch entry and a K range.
//
// Each operand is a view: `lda`, `ldb` and `ldc` are the row strides of A, B and C as
// stored, `a_off`, `b_off` and `c_off` their first elements in the bound buffer (a block of a
// larger matrix when a product is processed in parts; the dense matrix otherwise), and the
// bias starts at `bias_off`. With accumulate = 1 the product is added to C.
// Prepended to each of them (kernels.rs); not a kernel of its own.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    ta: u32,
    tb: u32,
    has_bias: u32,
    a_batch: u32,
    b_batch: u32,
    c_batch: u32,
    row_tile0: u32,
    z0: u32,
    // Split-K: the z workgroup id counts (batch entry, split) pairs; split s covers
    // K in [s * k_chunk, (s + 1) * k_chunk) and writes its partial C at s * c_split.
    splits: u32,
    k_chunk: u32,
    c_split: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    bias_off: u32,
    accumulate: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// The batch entry, the K range and the output offset of workgroup z (split-K partials are
// dense, c_off = 0).
struct Job {
    batch: u32,
    k_lo: u32,
    k_hi: u32,
    c_base: u32,
}

fn job(z: u32) -> Job {
    let zz = z + p.z0;
    let batch = zz / p.splits;
    let split = zz % p.splits;
    let k_lo = split * p.k_chunk;
    let c_base = p.c_off + split * p.c_split + batch * p.c_batch;
    return Job(batch, k_lo, min(k_lo + p.k_chunk, p.k), c_base);
}
