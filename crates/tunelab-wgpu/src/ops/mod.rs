//! Rust side of each kernel: validation of inputs, bind groups and dispatch.

pub mod elementwise;
pub mod matmul;

/// Workgroup counts `(x, y)` covering `groups` workgroups when one dimension may hold at most
/// `max_per_dim`. Kernels rebuild the flat index as `wg.y * x + wg.x` and bound-check it.
pub fn split_dispatch(groups: u32, max_per_dim: u32) -> (u32, u32) {
    if groups <= max_per_dim {
        (groups.max(1), 1)
    } else {
        let x = max_per_dim;
        (x, groups.div_ceil(x))
    }
}

#[cfg(test)]
mod tests {
    use super::split_dispatch;

    #[test]
    fn split_dispatch_covers_every_group_within_limits() {
        for &(groups, max) in &[
            (0u32, 65535u32),
            (1, 65535),
            (65535, 65535),
            (65536, 65535),
            (200_000, 65535),
            (7, 3),
        ] {
            let (x, y) = split_dispatch(groups, max);
            assert!(x <= max && y <= max, "{groups}/{max} -> ({x}, {y})");
            assert!(u64::from(x) * u64::from(y) >= u64::from(groups));
            // No more than one partial row of idle workgroups.
            assert!(u64::from(x) * u64::from(y) < u64::from(groups) + u64::from(x) + 1);
        }
    }
}
