//! The keys and values of the positions a causal model has already read, kept between
//! decoding steps so each new token costs one position's work instead of the whole text's.

/// Per layer, the keys and values `(B, len, C)` (heads side by side in `C`) of the first
/// `len` positions; empty before the first step.
#[derive(Debug, Clone)]
pub struct KvCache<T> {
    pub layers: Vec<(T, T)>,
    /// Positions held (virtual tokens of a prompt included).
    pub len: usize,
}

impl<T> Default for KvCache<T> {
    fn default() -> Self {
        Self {
            layers: Vec::new(),
            len: 0,
        }
    }
}

impl<T> KvCache<T> {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
