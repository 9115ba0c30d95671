//! The WGSL kernels, one file per op family, embedded at compile time.
//!
//! [`ALL`] lists every kernel file; a unit test parses and validates each one with naga on
//! the CPU, and another checks that no `.wgsl` file in `src/kernels/` is missing from it.

/// Elementwise ops: add, mul, axpby, scale, scale-by, GELU and tanh with their backward.
pub const ELEMENTWISE: &str = include_str!("kernels/elementwise.wgsl");

/// What the matmul kernels share (parameters, split-K jobs), prepended to each.
pub const MATMUL_COMMON: &str = include_str!("kernels/matmul_common.wgsl");

/// Tiled matmul with transpose flags, batching and a fused bias (scalar loads).
pub const MATMUL: &str = concat!(
    include_str!("kernels/matmul_common.wgsl"),
    include_str!("kernels/matmul.wgsl")
);

/// Bias add, column sums (bias gradient) and the sum of squares (gradient norm).
pub const REDUCE: &str = include_str!("kernels/reduce.wgsl");

/// The AdamW update.
pub const OPTIM: &str = include_str!("kernels/optim.wgsl");

/// Fused softmax cross-entropy (per-row losses, gradient) with an ignore index.
pub const LOSS: &str = include_str!("kernels/loss.wgsl");

/// Layer norm forward.
pub const LAYER_NORM: &str = include_str!("kernels/layer_norm.wgsl");

/// Layer norm backward: `dx` per row, `dgamma`/`dbeta` per column.
pub const LAYER_NORM_BACKWARD: &str = include_str!("kernels/layer_norm_backward.wgsl");

/// Embedding gather, deterministic scatter-add gradient, fill.
pub const EMBEDDING: &str = include_str!("kernels/embedding.wgsl");

/// Concatenation and slicing along the sequence axis.
pub const SEQUENCE: &str = include_str!("kernels/sequence.wgsl");

/// Fused multi-head attention forward and backward with padding and causal masks.
pub const ATTENTION: &str = include_str!("kernels/attention.wgsl");

/// Attention for head sizes 16, 32 and 64: a template (see [`attention_tiled`]).
pub const ATTENTION_TILED: &str = include_str!("kernels/attention_tiled.wgsl");

/// The head sizes [`attention_tiled`] is compiled for.
pub const ATTENTION_TILED_HEAD_SIZES: [u32; 3] = [16, 32, 64];

/// `attention_tiled.wgsl` specialised for head size `d` as `(pipeline-cache name, source)`,
/// or None for head sizes it does not cover (the general `attention.wgsl` serves those).
pub fn attention_tiled(d: u32) -> Option<(&'static str, &'static str)> {
    use std::sync::OnceLock;
    static SOURCES: OnceLock<[String; 3]> = OnceLock::new();
    const NAMES: [&str; 3] = [
        "attention_tiled.wgsl(D=16)",
        "attention_tiled.wgsl(D=32)",
        "attention_tiled.wgsl(D=64)",
    ];
    let slot = ATTENTION_TILED_HEAD_SIZES.iter().position(|&x| x == d)?;
    let sources =
        SOURCES.get_or_init(|| ATTENTION_TILED_HEAD_SIZES.map(|d| specialise(ATTENTION_TILED, d)));
    Some((NAMES[slot], sources[slot].as_str()))
}

/// Sets a template's head size: the `const D: u32 = 32u;` line becomes `d`, and every line
/// holding `$e` is repeated for e = 0 .. d/4 - 1 with `$e` replaced by e.
fn specialise(template: &str, d: u32) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    for line in template.lines() {
        if line.trim() == "const D: u32 = 32u;" {
            out.push_str(&format!("const D: u32 = {d}u;\n"));
        } else if line.contains("$e") {
            for e in 0..d / 4 {
                out.push_str(&line.replace("$e", &e.to_string()));
                out.push('\n');
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Matmul on vec4 loads for shapes whose M, N and K are multiples of 4: a template (see
/// [`matmul_vec4`]).
pub const MATMUL_VEC4: &str = concat!(
    include_str!("kernels/matmul_common.wgsl"),
    include_str!("kernels/matmul_vec4.wgsl")
);

/// The tiles [`matmul_vec4`] is compiled for, as (row groups, column groups, K slice,
/// row padding in vec4s): the tile is `64 * row groups` by `64 * column groups`.
pub const MATMUL_VEC4_TILES: [(u32, u32, u32, u32); 4] =
    [(1, 1, 16, 1), (2, 1, 16, 1), (2, 2, 8, 1), (2, 2, 16, 0)];

/// `matmul_vec4.wgsl` specialised for `MATMUL_VEC4_TILES[slot]`, as `(pipeline-cache name,
/// source)`.
pub fn matmul_vec4(slot: usize) -> (&'static str, &'static str) {
    use std::sync::OnceLock;
    static SOURCES: OnceLock<[String; 4]> = OnceLock::new();
    const NAMES: [&str; 4] = [
        "matmul_vec4.wgsl(64x64)",
        "matmul_vec4.wgsl(128x64)",
        "matmul_vec4.wgsl(128x128)",
        "matmul_vec4.wgsl(128x128,k16)",
    ];
    let sources = SOURCES.get_or_init(|| {
        MATMUL_VEC4_TILES.map(|(rg, cg, bk, pad)| {
            // vec4 loads per thread and slice of each input (256 threads).
            let (la, lb) = (64 * rg * bk / 1024, 64 * cg * bk / 1024);
            expand(
                MATMUL_VEC4,
                &[
                    ("RG", rg),
                    ("CG", cg),
                    ("BK", bk),
                    ("LA", la),
                    ("LB", lb),
                    ("PAD", pad),
                ],
            )
        })
    });
    (NAMES[slot], sources[slot].as_str())
}

/// Specialises a template: each `const NAME: u32 = ...;` line whose NAME is in `consts`
/// takes the given value, and the lines between `//# for $x in 0..N` and `//# end` (N a
/// number or one of `consts`; blocks nest) are repeated for x = 0 .. N - 1 with `$x`
/// replaced by x. The templates are part of the crate, so a malformed one is a bug that the
/// validation tests catch (a malformed block is left unexpanded).
fn expand(template: &str, consts: &[(&str, u32)]) -> String {
    fn block(
        lines: &[&str],
        consts: &[(&str, u32)],
        vars: &mut Vec<(String, u32)>,
        out: &mut String,
    ) {
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let t = line.trim();
            // `$x in 0..N`: the variable and its bound (a malformed header stays as a comment,
            // its block unrepeated, so the validation test sees the leftover `$`).
            let header = t.strip_prefix("//# for ").and_then(|head| {
                let (var, range) = head.split_once(" in 0..")?;
                let n = range
                    .parse()
                    .ok()
                    .or_else(|| consts.iter().find(|(c, _)| *c == range).map(|(_, v)| *v))?;
                Some((var, n))
            });
            if let Some((var, n)) = header {
                let mut depth = 0;
                let end = (i + 1..lines.len())
                    .find(|&j| {
                        let t = lines[j].trim();
                        if t.starts_with("//# for ") {
                            depth += 1;
                        } else if t == "//# end" {
                            if depth == 0 {
                                return true;
                            }
                            depth -= 1;
                        }
                        false
                    })
                    .unwrap_or(lines.len());
                for x in 0..n {
                    vars.push((var.to_string(), x));
                    block(&lines[i + 1..end], consts, vars, out);
                    vars.pop();
                }
                i = end + 1;
                continue;
            }
            let konst = t
                .strip_prefix("const ")
                .and_then(|r| r.split_once(": u32 ="))
                .and_then(|(name, _)| consts.iter().find(|(c, _)| *c == name));
            match konst {
                Some((name, value)) => out.push_str(&format!("const {name}: u32 = {value}u;")),
                None => {
                    let mut l = line.to_string();
                    for (var, x) in vars.iter() {
                        l = l.replace(var.as_str(), &x.to_string());
                    }
                    out.push_str(&l);
                }
            }
            out.push('\n');
            i += 1;
        }
    }
    let lines: Vec<&str> = template.lines().collect();
    let mut out = String::with_capacity(template.len() * 4);
    block(&lines, consts, &mut Vec::new(), &mut out);
    out
}

/// Parts prepended to other kernels, never compiled alone (listed for the file check).
pub const PRELUDES: &[(&str, &str)] = &[("matmul_common.wgsl", MATMUL_COMMON)];

/// Templates, compiled only through their specialisations (listed for the file check).
pub const TEMPLATES: &[(&str, &str)] = &[
    ("attention_tiled.wgsl", ATTENTION_TILED),
    ("matmul_vec4.wgsl", MATMUL_VEC4),
];

/// Every kernel as `(file name, source)`.
pub const ALL: &[(&str, &str)] = &[
    ("elementwise.wgsl", ELEMENTWISE),
    ("matmul.wgsl", MATMUL),
    ("reduce.wgsl", REDUCE),
    ("optim.wgsl", OPTIM),
    ("loss.wgsl", LOSS),
    ("layer_norm.wgsl", LAYER_NORM),
    ("layer_norm_backward.wgsl", LAYER_NORM_BACKWARD),
    ("embedding.wgsl", EMBEDDING),
    ("sequence.wgsl", SEQUENCE),
    ("attention.wgsl", ATTENTION),
];

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::ALL;

    /// Parses and validates `source` with naga, panicking with the error shown in the source.
    fn validate(name: &str, source: &str) -> naga::Module {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        module
    }

    #[test]
    fn every_kernel_parses_and_validates_with_naga() {
        for (name, source) in ALL {
            let module = validate(name, source);
            assert!(!module.entry_points.is_empty(), "{name} has no entry point");
        }
    }

    /// Each head size's specialisation of the tiled attention kernel validates too, and
    /// really is specialised.
    #[test]
    fn tiled_attention_specialisations_validate() {
        for d in super::ATTENTION_TILED_HEAD_SIZES {
            let (name, source) = super::attention_tiled(d).unwrap();
            assert!(source.contains(&format!("const D: u32 = {d}u;")), "{name}");
            assert!(!source.contains("$e"), "{name}");
            // One line per vec4 of a head: the last register of the query row is there.
            assert!(source.contains(&format!("let q{} = q[ib + {}u];", d / 4 - 1, d / 4 - 1)));
            validate(name, source);
        }
        assert!(super::attention_tiled(48).is_none());
    }

    /// Every tile of the vec4 matmul template validates, with its constants set and its
    /// blocks unrolled.
    #[test]
    fn vec4_matmul_specialisations_validate() {
        for (slot, (rg, cg, bk, _)) in super::MATMUL_VEC4_TILES.into_iter().enumerate() {
            let (name, source) = super::matmul_vec4(slot);
            assert!(!source.contains('$') && !source.contains("//# "), "{name}");
            assert!(
                source.contains(&format!("const BK: u32 = {bk}u;")),
                "{name}"
            );
            // The last accumulator and the last step of the K slice are there.
            let last = format!("acc{}3{}", rg - 1, cg - 1);
            assert!(source.contains(&format!("var {last} = ")), "{name}");
            assert!(source.contains(&format!("ash[1u][{}u]", bk - 1)), "{name}");
            validate(name, source);
        }
    }

    #[test]
    fn every_wgsl_file_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".wgsl") {
                assert!(
                    ALL.iter()
                        .chain(super::TEMPLATES)
                        .chain(super::PRELUDES)
                        .any(|(n, _)| *n == name),
                    "{name} is not listed in kernels::ALL, TEMPLATES or PRELUDES"
                );
            }
        }
    }
}
