//! Tensor shapes.
//!
//! A [`Shape`] is the list of dimensions of a dense, row-major tensor, e.g. `(B, T, C)` for
//! hidden states. Element `(i0, i1, .., in)` lives at offset `sum_k i_k * stride_k` where
//! `stride_n = 1` and `stride_k = stride_{k+1} * dim_{k+1}`.
//!
//! ```
//! use tunelab_core::Shape;
//! let s = Shape::new([2, 3, 4]);
//! assert_eq!(s.numel(), 24);
//! assert_eq!(s.strides(), vec![12, 4, 1]);
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;

/// Errors from shape arithmetic on user-provided shapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The number of elements does not fit in `usize`.
    #[error("shape {dims:?} has more elements than fit in memory")]
    Overflow { dims: Vec<usize> },
    /// Two shapes that must agree do not.
    #[error("{what}: expected shape {expected}, got {actual}")]
    Mismatch {
        what: String,
        expected: Shape,
        actual: Shape,
    },
}

/// The dimensions of a dense row-major tensor.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions, outermost first.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Self(dims.into())
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The number of elements (1 for a scalar). Saturates at `usize::MAX`; use
    /// [`Shape::checked_numel`] on shapes read from files.
    pub fn numel(&self) -> usize {
        self.checked_numel().unwrap_or(usize::MAX)
    }

    /// The number of elements, or an error if it overflows `usize`.
    pub fn checked_numel(&self) -> Result<usize, ShapeError> {
        self.0
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| ShapeError::Overflow {
                dims: self.0.clone(),
            })
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for k in (0..self.0.len().saturating_sub(1)).rev() {
            strides[k] = strides[k + 1] * self.0[k + 1];
        }
        strides
    }

    /// Fails with [`ShapeError::Mismatch`] unless `self == expected`.
    pub fn expect(&self, expected: &Shape, what: impl Into<String>) -> Result<(), ShapeError> {
        if self == expected {
            Ok(())
        } else {
            Err(ShapeError::Mismatch {
                what: what.into(),
                expected: expected.clone(),
                actual: self.clone(),
            })
        }
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Self {
        Self(dims.to_vec())
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Self(dims.to_vec())
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(Shape::new([5]).strides(), vec![1]);
        assert_eq!(Shape::new([2, 3]).strides(), vec![3, 1]);
        assert_eq!(Shape::new([7, 1, 5, 3]).strides(), vec![15, 15, 3, 1]);
        assert_eq!(Shape::new([]).strides(), Vec::<usize>::new());
    }

    #[test]
    fn numel_of_scalar_is_one_and_zero_dims_give_zero() {
        assert_eq!(Shape::new([]).numel(), 1);
        assert_eq!(Shape::new([3, 0, 2]).numel(), 0);
    }

    #[test]
    fn overflowing_shape_is_an_error_not_a_panic() {
        let s = Shape::new([usize::MAX, 3]);
        assert!(matches!(
            s.checked_numel(),
            Err(ShapeError::Overflow { .. })
        ));
    }

    #[test]
    fn mismatch_error_names_both_shapes() {
        let err = Shape::new([2, 3])
            .expect(
                &Shape::new([3, 2]),
                "encoder.layer.0.attention.self.query.weight",
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "encoder.layer.0.attention.self.query.weight: expected shape [3, 2], got [2, 3]"
        );
    }
}
