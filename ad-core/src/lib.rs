//! # ad-core: a tensor-level reverse-mode tape, generic over the scalar
//!
//! Values are dense matrices (`nalgebra::DMatrix<T>`, rows = batch, columns = features).
//! Operations on [`Var`] handles append nodes to a [`Tape`]; [`Tape::backward`] walks them in
//! reverse. The scalar `T` is `f64` or `f32` for speed, or a `num-dual` number over either
//! (`Dual64`, `Dual32`, …), so the same code also yields forward-mode derivatives, e.g.
//! Hessian-vector products (forward-over-reverse). Controllers and reports read values in
//! `f64` through [`Scalar::primal`] whatever the precision ([`Precision`]).
//!
//! ```
//! use ad_core::Tape;
//! use ad_core::nalgebra::{self, dmatrix};
//!
//! // A one-layer network: loss = mean(tanh(x Wᵀ + b)²).
//! let tape = Tape::<f64>::new();
//! let x = tape.constant(dmatrix![1.0, 2.0; -1.0, 0.5]);
//! let w = tape.var(dmatrix![0.1, -0.2; 0.3, 0.4]);
//! let b = tape.var(dmatrix![0.0, 0.1]);
//! let y = x.matmul_t(w)?.add_row(b)?.tanh();
//! let loss = y.square().mean();
//! let grads = tape.backward(loss)?;
//! assert_eq!(grads.get(w).unwrap().shape(), (2, 2));
//! assert!(grads.get(x).is_none()); // constants get no gradient
//! println!("{} nodes, {} bytes held", tape.stats().nodes, tape.stats().held_bytes);
//! # Ok::<(), ad_core::Error>(())
//! ```
//!
//! Other crates add opaque nodes through [`CustomOp`]; [`Tape::no_grad`] runs the same code
//! recording values only, and [`Tape::mark`] / [`Tape::rewind`] reuse a scratch tape.
//!
//! [`heap`] measures *peak heap*: a counting global allocator and nested peak scopes, for
//! memory figures beside the tape's held bytes.
//!
//! The [`check`] module verifies gradients: [`gradcheck`] compares a function's reverse-mode
//! gradient with `Dual64` forward mode and finite differences, and [`check_custom_op`] a custom
//! op's VJP with `Dual64` JVPs of its own forward.
//!
//! ## Threads
//!
//! `f32` and `f64` products large enough to pay for it (at least 2²⁰ multiply-adds per
//! thread, e.g. a 256×128 batch through a 256-wide layer) are cut into bands of output
//! columns (or rows), one per thread; the calling thread computes one band and workers the
//! others. Elementwise passes over large tensors (tanh and its VJP, the RK stage
//! combinations; at least 2¹³ entries per band) are split the same way. Each band runs the
//! same single-threaded kernel with a blocking over k that depends on k alone, so values and
//! gradients are bitwise the same for any thread count on a given machine. The kernel is
//! chosen per CPU at run time ([`product_kernel`]): `gemm`'s AVX-512 kernels on Intel CPUs
//! with AVX-512F (two 512-bit FMA units on the server parts), `matrixmultiply`'s elsewhere
//! (which pick AVX-512, AVX2/FMA, AVX or SSE2 themselves); `COSTATE_PRODUCT_KERNEL` pins one
//! ([`product_kernel_setting`]). `MATMUL_NUM_THREADS` sets the threads (default
//! and cap: the available parallelism; above it only with `MATMUL_NUM_THREADS_FORCE=1`; read
//! once, at the first large product; a value refused or capped is reported by
//! [`thread_setting`], never printed), and
//! [`set_max_threads`] lowers the cap at run time. The workers start at
//! the first product that is split, stay hot (spinning, then yielding) for about a
//! millisecond after each job, since a solve alternates products with short elementwise
//! passes, and then park. Smaller products, such as a 32×64 batch through 64-wide layers,
//! stay on the calling thread; tiny ones (m·n·k ≤ 4000, e.g. a 20-row batch through a
//! 2→50→2 layer) skip the blocked kernels' packing for direct loops, also in a fixed order
//! per shape.
#![warn(missing_docs)]

mod backward;
pub mod check;
mod error;
pub mod heap;
mod ops;
mod scalar;
mod table;
mod tape;

pub use backward::Gradients;
pub use check::{
    check_custom_op, gradcheck, gradcheck_fd, CheckError, CustomOpReport, CustomOpSettings,
    GradcheckReport, GradcheckSettings, TapeFunction, TapeFunctionF64, Tolerance,
};
pub use error::{Error, Message, Result, Shape};
pub use ops::{
    in_bands, product_kernel, product_kernel_setting, set_max_threads, thread_setting, BoxError,
    CustomOp, ProductKernel, ProductKernelSettingError, Report, ReportedVjp, ThreadSettingError,
    MAX_ELEMENTS,
};
pub use scalar::{all_finite, carries_derivatives, Precision, Scalar};
pub use table::TextTable;
pub use tape::{Mark, NoGradGuard, Tape, TapeStats, Var};

/// Re-exported so users name the same matrix and dual types as this crate.
pub use nalgebra;
/// Re-exported so users name the same dual number types as this crate.
pub use num_dual;
