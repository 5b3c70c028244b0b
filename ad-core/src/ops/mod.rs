//! Every built-in operation: its forward (a method on `Var`) and its VJP, side by side.
//!
//! Each submodule holds one family of ops. [`Op`] is what a node stores: which VJP to run
//! and the few constants that VJP needs. Tensors the VJP reads (inputs, output) are not
//! copied: they are the values of the node and its parents in the arena.

mod affine;
mod custom;
mod elementwise;
mod fast;
mod linalg;
mod product_kernel;
mod reduce;
mod shape;
mod small_product;
mod threads;

pub use product_kernel::{
    product_kernel, product_kernel_setting, ProductKernel, ProductKernelSettingError,
};
pub use threads::{in_bands, set_max_threads, thread_setting, ThreadSettingError};

pub(crate) use custom::CustomNode;
pub use custom::{BoxError, CustomOp, Report, ReportedVjp};
pub(crate) use elementwise::{Binary, Unary};
pub(crate) use reduce::Reduce;

use nalgebra::DMatrix;
use smallvec::SmallVec;

use crate::error::{Error, Result, Shape};
use crate::scalar::Scalar;

/// Cotangents for a node's parents, `None` where a parent needs none.
pub(crate) type Grads<T> = SmallVec<[Option<DMatrix<T>>; 3]>;

/// What a node records: the op kind and the constants its VJP needs.
pub(crate) enum Op<T: Scalar> {
    /// A leaf gradients are taken with respect to.
    Leaf,
    /// A value with no gradient: data, or any result computed without a parameter upstream.
    Constant,
    Unary(Unary),
    Powi(i32),
    Powers,
    Scale(T),
    AddScalar,
    WeightedSum,
    Binary(Binary),
    /// A binary op whose operands of these shapes were broadcast to the output's.
    BroadcastBinary(Binary, Shape, Shape),
    MatMul,
    MatMulT,
    Linear,
    Transpose,
    AddRow,
    Broadcast,
    Reduce(Reduce),
    Mse,
    Concat,
    ConcatRows,
    SliceCols(usize),
    FixedWeightedSum(SmallVec<[T; 4]>),
    Custom(Box<CustomNode<T>>),
    CustomOutput,
}

impl<T: Scalar> Op<T> {
    /// The op's name, as reported in statistics.
    pub(crate) fn name(&self) -> &str {
        match self {
            Op::Leaf => "leaf",
            Op::Constant => "constant",
            Op::Unary(u) => u.name(),
            Op::Powi(_) => "powi",
            Op::Powers => "powers",
            Op::Scale(_) => "scale",
            Op::AddScalar => "add_scalar",
            Op::WeightedSum => "weighted_sum",
            Op::Binary(b) | Op::BroadcastBinary(b, ..) => b.name(),
            Op::MatMul => "matmul",
            Op::MatMulT => "matmul_t",
            Op::Linear => "linear",
            Op::Transpose => "transpose",
            Op::AddRow => "add_row",
            Op::Broadcast => "broadcast",
            Op::Reduce(r) => r.name(),
            Op::Mse => "mse",
            Op::Concat => "concat",
            Op::ConcatRows => "concat_rows",
            Op::SliceCols(_) => "slice_cols",
            Op::FixedWeightedSum(_) => "fixed_weighted_sum",
            Op::Custom(c) => c.op.name(),
            Op::CustomOutput => "custom_output",
        }
    }

    /// What this op's VJP reads. Values nothing reads may be released after recording
    /// (shapes count as reads: broadcast, reductions, slices and concatenation need their
    /// inputs' shapes).
    pub(crate) fn vjp_reads(&self) -> VjpReads {
        let (output, inputs) = match self {
            Op::Leaf | Op::Constant => (false, false),
            Op::Unary(u) => u.vjp_reads(),
            Op::Powi(_) => (false, true),
            Op::Powers => (true, false),
            Op::Scale(_) | Op::AddScalar | Op::Transpose | Op::AddRow | Op::FixedWeightedSum(_) => {
                (false, false)
            }
            Op::Binary(Binary::Add | Binary::Sub)
            | Op::BroadcastBinary(Binary::Add | Binary::Sub, ..) => (false, false),
            Op::Binary(Binary::Mul) | Op::BroadcastBinary(Binary::Mul, ..) => (false, true),
            Op::Binary(Binary::Div) | Op::BroadcastBinary(Binary::Div, ..) => (true, true),
            Op::MatMul | Op::MatMulT | Op::Linear | Op::Mse | Op::WeightedSum => (false, true),
            Op::Broadcast | Op::Reduce(_) | Op::Concat | Op::ConcatRows | Op::SliceCols(_) => {
                (false, true)
            }
            // A custom op's VJP gets its inputs and outputs (the output nodes' values).
            Op::Custom(_) => (false, true),
            Op::CustomOutput => (true, false),
        };
        VjpReads { output, inputs }
    }

    /// Bytes held for backward beyond the node's own value.
    pub(crate) fn extra_held_bytes(&self) -> usize {
        match self {
            Op::Custom(c) => c.op.held_bytes(),
            _ => 0,
        }
    }

    /// Pull the cotangent `g` of this node's output back to its parents. `wants[i]` says
    /// whether parent `i` needs a cotangent at all (so unneeded products are skipped).
    /// Custom nodes are pulled back by the backward walk itself (they have many outputs).
    pub(crate) fn vjp(
        &self,
        out: &DMatrix<T>,
        inputs: &[&DMatrix<T>],
        g: DMatrix<T>,
        wants: &[bool],
    ) -> Grads<T> {
        match self {
            Op::Leaf | Op::Constant | Op::Custom(_) => Grads::new(),
            Op::Unary(u) => one(u.vjp(inputs[0], out, g)),
            Op::Powi(n) => one(elementwise::powi_vjp(*n, inputs[0], g)),
            Op::Powers => one(elementwise::powers_vjp(out, &g)),
            Op::Scale(c) => one(elementwise::scale_vjp(*c, g)),
            Op::AddScalar => one(g),
            Op::WeightedSum => elementwise::weighted_sum_vjp(inputs, g, wants),
            Op::Binary(b) => b.vjp(inputs[0], inputs[1], out, g, wants),
            Op::BroadcastBinary(b, sa, sb) => b.broadcast_vjp(inputs, (*sa, *sb), out, g, wants),
            Op::MatMul => linalg::matmul_vjp(inputs[0], inputs[1], &g, wants),
            Op::MatMulT => linalg::matmul_t_vjp(inputs[0], inputs[1], &g, wants),
            Op::Linear => affine::linear_vjp(inputs[0], inputs[1], &g, wants),
            Op::Transpose => one(g.transpose()),
            Op::AddRow => shape::add_row_vjp(g, wants),
            Op::Broadcast => one(shape::broadcast_vjp(inputs[0].shape(), g)),
            Op::Reduce(r) => one(r.vjp(inputs[0].shape(), g)),
            Op::Mse => reduce::mse_vjp(inputs[0], inputs[1], &g, wants),
            Op::Concat => shape::concat_vjp(shape::Axis::Cols, inputs, &g, wants),
            Op::ConcatRows => shape::concat_vjp(shape::Axis::Rows, inputs, &g, wants),
            Op::SliceCols(start) => one(shape::slice_cols_vjp(inputs[0].shape(), *start, g)),
            Op::FixedWeightedSum(c) => elementwise::fixed_weighted_sum_vjp(c, g, wants),
            Op::CustomOutput => one(g),
        }
    }
}

fn one<T: Scalar>(g: DMatrix<T>) -> Grads<T> {
    let mut v = Grads::new();
    v.push(Some(g));
    v
}

/// The most entries one tensor may hold: ops whose result size comes from integers the
/// caller passes (`broadcast`, `powers`) or from combining their inputs' dimensions
/// (`matmul`, `matmul_t`, `linear`, `concat_cols`, `sum_rows`, `sum_cols`) refuse anything
/// larger with [`Error::TooLarge`] before allocating. An empty dimension counts as 1, so a
/// `0 × n` result may have at most this many columns too (its row sums would have `n`
/// entries). 2³² entries (32 GiB of `f64`) on 64-bit targets, `usize::MAX` on smaller ones
/// (where the address space is the limit).
pub const MAX_ELEMENTS: usize = if usize::BITS >= 64 {
    (1u64 << 32) as usize
} else {
    usize::MAX
};

/// The number of entries of a `rows × cols` result, or [`Error::TooLarge`] if it is over
/// [`MAX_ELEMENTS`] (an empty dimension counting as 1) or its bytes would not fit in an
/// allocation.
fn limited_len<T: Scalar>(op: &'static str, rows: usize, cols: usize) -> Result<usize> {
    let fits = rows.max(1).checked_mul(cols.max(1)).is_some_and(|n| {
        n <= MAX_ELEMENTS
            && n.checked_mul(std::mem::size_of::<T>())
                .is_some_and(|bytes| bytes <= isize::MAX as usize)
    });
    if fits {
        Ok(rows * cols)
    } else {
        Err(too_large(op, rows, cols))
    }
}

fn too_large(op: &'static str, rows: usize, cols: usize) -> Error {
    Error::TooLarge {
        op,
        rows,
        cols,
        limit: MAX_ELEMENTS,
    }
}

/// Results from this many bytes up are allocated once on trial before the op computes them.
const PROBED_BYTES: usize = 1 << 20;

/// [`limited_len`], and for a result of a mebibyte or more, whether the allocator can
/// provide it: a trial allocation, freed at once, so that an op whose result the process
/// cannot hold (under a memory cap, say) returns [`Error::TooLarge`] instead of aborting
/// in the infallible allocation of its kernel. Below a mebibyte a failed allocation is the
/// process running out of memory, not a size the op could have checked.
pub(crate) fn checked_len<T: Scalar>(op: &'static str, rows: usize, cols: usize) -> Result<usize> {
    let len = limited_len::<T>(op, rows, cols)?;
    if len.saturating_mul(std::mem::size_of::<T>()) >= PROBED_BYTES {
        Vec::<T>::new()
            .try_reserve_exact(len)
            .map_err(|_| too_large(op, rows, cols))?;
    }
    Ok(len)
}

/// An empty buffer with room for a `rows × cols` result: [`Error::TooLarge`] over the limit
/// or if the allocator cannot provide it (instead of aborting the process).
pub(crate) fn buffer<T: Scalar>(op: &'static str, rows: usize, cols: usize) -> Result<Vec<T>> {
    let len = limited_len::<T>(op, rows, cols)?;
    let mut data = Vec::new();
    data.try_reserve_exact(len)
        .map_err(|_| too_large(op, rows, cols))?;
    Ok(data)
}

/// Error unless `a` and `b` have the same shape.
pub(crate) fn same_shape(op: &'static str, a: Shape, b: Shape) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            left: a,
            right: b,
            expected: "both operands must have the same shape",
        })
    }
}

/// What an op's VJP reads besides the cotangent, so values nothing reads can be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VjpReads {
    /// The op's own output value.
    pub output: bool,
    /// The values of its inputs.
    pub inputs: bool,
}

/// `acc += g` entrywise (same shape), split over the threads for large tensors: the
/// gradient accumulation of backward.
pub(crate) fn add_into<T: Scalar>(acc: &mut DMatrix<T>, g: &DMatrix<T>) {
    threads::zip_apply(acc.as_mut_slice(), g.as_slice(), |a, b| a + b);
}
