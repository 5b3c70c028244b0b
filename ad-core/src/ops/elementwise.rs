//! Elementwise ops: unary maps, same-shape binary ops, scaling, powers, linear combinations.

use std::ops;

use nalgebra::DMatrix;
use num_dual::{Dual32, Dual64, DualNum};
use smallvec::SmallVec;

use super::reduce::{sum_cols, sum_rows};
use super::threads::{self, split_mut};
use super::{buffer, fast, same_shape, Grads, Op};
use crate::error::{Error, Result, Shape};
use crate::scalar::{carries_derivatives, Precision, Scalar};
use crate::tape::Var;

/// Whether the real part is NaN (piecewise ops must pass NaN on, not pick a branch for it).
fn is_nan<T: Scalar>(x: T) -> bool {
    x.primal().is_nan()
}

/// `xᵉ` for any integer exponent, without integer overflow: neither in `n − 1` (`e` is an
/// `i64`) nor in num-dual's derivative coefficients (`n(n−1)(n−2)` in `i32`). `f64` uses
/// `powi` for every `i32` exponent; dual numbers use it up to |e| = 1000 and beyond that
/// `powf` with the exponent in the scalar's precision. That exponent is exact for `f64`
/// (|e| ≤ 2³¹ + 1) but may round for `f32`, which could flip its parity; so a negative base
/// goes through `±|x|ᵉ` with the sign from `e` itself.
fn ipow<T: Scalar>(x: T, e: i64) -> T {
    match i32::try_from(e) {
        Ok(n) if !carries_derivatives::<T>() || n.unsigned_abs() <= 1000 => DualNum::powi(&x, n),
        _ => {
            let exponent = Precision::round_from(e as f64);
            if x.primal() < 0.0 {
                let magnitude = DualNum::powf(&-x, exponent);
                if e % 2 == 0 {
                    magnitude
                } else {
                    -magnitude
                }
            } else {
                DualNum::powf(&x, exponent)
            }
        }
    }
}

fn sigmoid<T: Scalar>(x: T) -> T {
    // Split on the sign so that exp never overflows.
    if x >= T::zero() {
        T::one() / (T::one() + DualNum::exp(&-x))
    } else {
        let e = DualNum::exp(&x);
        e / (T::one() + e)
    }
}

/// Defines the elementwise unary ops: each line gives the forward `y = f(x)` and the
/// VJP `x̄ = ȳ · f'(x)` (written with x, y = f(x) and the cotangent g).
macro_rules! unary_ops {
    ($( $(#[$doc:meta])* $variant:ident $method:ident : |$x:ident| $fwd:expr, |$vx:ident, $vy:ident, $vg:ident| $bwd:expr; )*) => {
        /// Elementwise unary op kinds.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Unary { $($variant,)* }

        impl Unary {
            /// What the VJP reads: `(output y, input x)`, as [`Op::vjp_reads`] reports it.
            pub(crate) fn vjp_reads(self) -> (bool, bool) {
                match self {
                    Unary::Neg => (false, false),
                    Unary::Tanh | Unary::Sigmoid | Unary::Exp | Unary::Sqrt => (true, false),
                    _ => (false, true),
                }
            }

            pub(crate) fn name(self) -> &'static str {
                match self { $(Unary::$variant => stringify!($method),)* }
            }

            fn forward<T: Scalar>(self, x: &DMatrix<T>) -> DMatrix<T> {
                if let Some(y) = self.forward_f64(x) {
                    return y;
                }
                match self { $(Unary::$variant => x.map(|$x: T| $fwd),)* }
            }

            #[allow(unused_variables)]
            pub(crate) fn vjp<T: Scalar>(self, x: &DMatrix<T>, y: &DMatrix<T>, mut g: DMatrix<T>) -> DMatrix<T> {
                if self.vjp_f64(y, &mut g) {
                    return g;
                }
                // The value an op's VJP does not read may have been released (an empty
                // matrix, see `Unary::reads`); it then stands in as zero, unread.
                let (xs, ys) = (x.as_slice(), y.as_slice());
                let at = |v: &[T], i: usize| if v.is_empty() { T::zero() } else { v[i] };
                match self {
                    $(Unary::$variant => {
                        for (i, g) in g.iter_mut().enumerate() {
                            let ($vx, $vy, $vg): (T, T, T) = (at(xs, i), at(ys, i), *g);
                            *g = $bwd;
                        }
                    })*
                }
                g
            }
        }

        // `neg` is also `std::ops::Neg` (implemented below); the method spares a `use`.
        #[allow(clippy::should_implement_trait)]
        impl<'t, T: Scalar> Var<'t, T> {
            $( $(#[$doc])* pub fn $method(self) -> Var<'t, T> { self.unary(Unary::$variant) } )*
        }
    };
}

unary_ops! {
    /// Elementwise negation `-x`.
    Neg neg: |x| -x, |x, y, g| -g;
    /// Elementwise hyperbolic tangent.
    Tanh tanh: |x| DualNum::tanh(&x), |x, y, g| g * (T::one() - y * y);
    /// Elementwise logistic sigmoid `1 / (1 + e^-x)`.
    Sigmoid sigmoid: |x| sigmoid(x), |x, y, g| g * y * (T::one() - y);
    /// Elementwise `max(x, 0)`; its derivative at 0 is taken as 0. NaN stays NaN (and so
    /// does its gradient).
    Relu relu: |x| if x > T::zero() || is_nan(x) { x } else { T::zero() },
        |x, y, g| if x > T::zero() { g } else if is_nan(x) { g * x } else { T::zero() };
    /// Elementwise `ln(1 + e^x)`, computed without overflow.
    Softplus softplus: |x| if x > T::zero() { x + DualNum::ln_1p(&DualNum::exp(&-x)) } else { DualNum::ln_1p(&DualNum::exp(&x)) },
        |x, y, g| g * sigmoid(x);
    /// Elementwise `e^x`.
    Exp exp: |x| DualNum::exp(&x), |x, y, g| g * y;
    /// Elementwise natural logarithm (NaN or -inf for x ≤ 0, as in IEEE arithmetic).
    Log log: |x| DualNum::ln(&x), |x, y, g| g / x;
    /// Elementwise sine.
    Sin sin: |x| DualNum::sin(&x), |x, y, g| g * DualNum::cos(&x);
    /// Elementwise cosine.
    Cos cos: |x| DualNum::cos(&x), |x, y, g| -g * DualNum::sin(&x);
    /// Elementwise absolute value; its derivative at 0 is taken as 0 (forward mode too: |±0|
    /// is +0 with no derivative part). NaN stays NaN (and so does its gradient).
    Abs abs: |x| if x < T::zero() { -x } else if x > T::zero() || is_nan(x) { x } else { T::zero() },
        |x, y, g| if x > T::zero() { g } else if x < T::zero() { -g } else if is_nan(x) { g * x } else { T::zero() };
    /// Elementwise square `x²`.
    Square square: |x| x * x, |x, y, g| g * (x + x);
    /// Elementwise square root (NaN for x < 0).
    Sqrt sqrt: |x| DualNum::sqrt(&x), |x, y, g| g / (y + y);
}

impl Unary {
    /// The vectorised `f64`/`f32` forward, for the ops that have one (`None` otherwise).
    fn forward_f64<T: Scalar>(self, x: &DMatrix<T>) -> Option<DMatrix<T>> {
        match self {
            Unary::Tanh => {
                if let Some(x) = fast::as_real::<T, f64>(x) {
                    fast::from_real(fast::tanh(x)?)
                } else if let Some(x) = fast::as_real::<T, f32>(x) {
                    fast::from_real(fast::tanh_f32(x)?)
                } else {
                    dual_tanh(x)
                }
            }
            _ => None,
        }
    }

    /// The `f64`/`f32` VJP written over slices so it vectorises, for the ops that have one;
    /// returns whether it ran (then `g` holds the input's cotangent).
    fn vjp_f64<T: Scalar>(self, y: &DMatrix<T>, g: &mut DMatrix<T>) -> bool {
        fn tanh_vjp<F: Copy + ops::Mul<Output = F> + ops::Sub<Output = F> + ops::MulAssign>(
            one: F,
            y: &[F],
            g: &mut [F],
        ) {
            for (g, &y) in g.iter_mut().zip(y) {
                *g *= one - y * y;
            }
        }
        if self != Unary::Tanh {
            return false;
        }
        if let (Some(y), Some(g)) = (fast::as_real::<T, f64>(y), fast::as_real_mut::<T, f64>(g)) {
            let y = y.as_slice();
            split_mut(g.as_mut_slice(), &|at, g| {
                tanh_vjp(1.0, &y[at..at + g.len()], g)
            });
            return true;
        }
        if let (Some(y), Some(g)) = (fast::as_real::<T, f32>(y), fast::as_real_mut::<T, f32>(g)) {
            let y = y.as_slice();
            split_mut(g.as_mut_slice(), &|at, g| {
                tanh_vjp(1.0, &y[at..at + g.len()], g)
            });
            return true;
        }
        false
    }
}

/// tanh on `Dual64` (`Dual32`) through the vectorised `f64` (`f32`) kernel: the real part is
/// `t = tanh(x)`, bitwise the real tape's (so both take the same adaptive steps), and the ε
/// part `ε·(1 − t²)` (num-dual's own tanh goes through sinh and cosh, several times slower).
/// `None` for other scalars or without the fast kernel.
fn dual_tanh<T: Scalar>(x: &DMatrix<T>) -> Option<DMatrix<T>> {
    if let Some(x) = fast::as_real::<T, Dual64>(x) {
        let t = fast::tanh(&x.map(|v| v.re))?;
        return fast::from_real(t.zip_map(x, |t, v| Dual64::new(t, v.eps * (1.0 - t * t))));
    }
    let x = fast::as_real::<T, Dual32>(x)?;
    let t = fast::tanh_f32(&x.map(|v| v.re))?;
    fast::from_real(t.zip_map(x, |t, v| Dual32::new(t, v.eps * (1.0 - t * t))))
}

impl<'t, T: Scalar> Var<'t, T> {
    fn unary(self, u: Unary) -> Var<'t, T> {
        self.or_faulty(
            self.tape
                .apply(u.name(), &[self], |x| Ok((u.forward(x[0]), Op::Unary(u)))),
        )
    }

    /// Elementwise integer power `xⁿ`.
    pub fn powi(self, n: i32) -> Var<'t, T> {
        self.or_faulty(self.tape.apply("powi", &[self], |x| {
            Ok((x[0].map(|v| ipow(v, i64::from(n))), Op::Powi(n)))
        }))
    }

    /// The powers `[1, x, x², …, xⁿ]` (1×(n+1)) of a 1×1 variable: one node for a
    /// polynomial basis, e.g. `x.powers(n)?.matmul(coeffs)` evaluates polynomials in x.
    /// More than [`crate::MAX_ELEMENTS`] powers is [`Error::TooLarge`].
    pub fn powers(self, n: usize) -> Result<Var<'t, T>> {
        self.tape.apply("powers", &[self], |x| {
            if x[0].shape() != (1, 1) {
                return Err(Error::ShapeMismatch {
                    op: "powers",
                    left: x[0].shape(),
                    right: (1, 1),
                    expected: "the base must be 1x1",
                });
            }
            let base = x[0][(0, 0)];
            // n + 1 overflows only for n = usize::MAX, far over the limit anyway.
            let cols = n.saturating_add(1);
            let mut data = buffer("powers", 1, cols)?;
            let mut p = T::one();
            data.extend((0..cols).map(|_| {
                let v = p;
                p *= base;
                v
            }));
            Ok((DMatrix::from_vec(1, cols, data), Op::Powers))
        })
    }

    /// Multiply every entry by the constant `c` (no gradient flows to `c`).
    pub fn scale(self, c: T) -> Var<'t, T> {
        self.or_faulty(
            self.tape
                .apply("scale", &[self], |x| Ok((x[0] * c, Op::Scale(c)))),
        )
    }

    /// Add the constant `c` to every entry (no gradient flows to `c`).
    pub fn add_scalar(self, c: T) -> Var<'t, T> {
        self.or_faulty(self.tape.apply("add_scalar", &[self], |x| {
            Ok((x[0].add_scalar(c), Op::AddScalar))
        }))
    }

    /// `self + other`, elementwise. Operands of the same shape, or one of them 1×1, 1×n
    /// (a row, repeated over the rows) or n×1 (a column, repeated over the columns), as in
    /// NumPy; the VJP sums the cotangent back over the repeated dimensions.
    ///
    /// ```
    /// use ad_core::Tape;
    /// use ad_core::nalgebra::{self, dmatrix};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.var(dmatrix![1.0, 2.0; 3.0, 4.0]);
    /// let b = tape.var(dmatrix![10.0, 20.0]); // 1×2: added to every row
    /// let y = x.add(b)?;
    /// assert_eq!(y.value()?, dmatrix![11.0, 22.0; 13.0, 24.0]);
    /// let g = tape.backward(y.sum())?;
    /// assert_eq!(g.get(b).unwrap(), &dmatrix![2.0, 2.0]); // summed over the 2 rows
    /// # Ok::<(), ad_core::Error>(())
    /// ```
    #[allow(clippy::should_implement_trait)] // `std::ops::Add` is implemented too, below
    pub fn add(self, other: Var<'t, T>) -> Result<Var<'t, T>> {
        self.binary(Binary::Add, other)
    }

    /// `self - other`, elementwise, broadcasting as [`Var::add`] does.
    #[allow(clippy::should_implement_trait)] // `std::ops::Sub` is implemented too, below
    pub fn sub(self, other: Var<'t, T>) -> Result<Var<'t, T>> {
        self.binary(Binary::Sub, other)
    }

    /// Elementwise (Hadamard) product, broadcasting as [`Var::add`] does (a 1×1 operand
    /// scales, a 1×n one scales each column).
    #[allow(clippy::should_implement_trait)] // `std::ops::Mul` is implemented too, below
    pub fn mul(self, other: Var<'t, T>) -> Result<Var<'t, T>> {
        self.binary(Binary::Mul, other)
    }

    /// Elementwise quotient, broadcasting as [`Var::add`] does.
    #[allow(clippy::should_implement_trait)] // `std::ops::Div` is implemented too, below
    pub fn div(self, other: Var<'t, T>) -> Result<Var<'t, T>> {
        self.binary(Binary::Div, other)
    }

    fn binary(self, b: Binary, other: Var<'t, T>) -> Result<Var<'t, T>> {
        self.tape.apply(b.name(), &[self, other], |x| {
            let (sa, sb) = (x[0].shape(), x[1].shape());
            if sa == sb {
                return Ok((b.forward(x[0], x[1]), Op::Binary(b)));
            }
            // A 1×1, 1×n or n×1 operand broadcasts over the other's rows / columns.
            let out = broadcast_shape(b.name(), sa, sb)?;
            crate::ops::checked_len::<T>(b.name(), out.0, out.1)?;
            let (a, c) = (expand(x[0], out), expand(x[1], out));
            Ok((b.forward(&a, &c), Op::BroadcastBinary(b, sa, sb)))
        })
    }
}

/// y = xⁿ:  x̄ = ȳ · n xⁿ⁻¹, with n − 1 taken in `i64` (n may be `i32::MIN`).
pub(crate) fn powi_vjp<T: Scalar>(n: i32, x: &DMatrix<T>, mut g: DMatrix<T>) -> DMatrix<T> {
    if n == 0 {
        // x⁰ = 1 is constant: its derivative is 0 everywhere, also at x = 0, where
        // n · xⁿ⁻¹ would be 0 · ∞ = NaN.
        g.fill(T::zero());
        return g;
    }
    let nt = T::constant(f64::from(n));
    let m = i64::from(n) - 1;
    for (g, &x) in g.iter_mut().zip(x.iter()) {
        *g *= nt * ipow(x, m);
    }
    g
}

/// y_j = x^j:  x̄ = Σ_j ȳ_j · j x^(j−1) = Σ_j ȳ_j · j · y_(j−1).
pub(crate) fn powers_vjp<T: Scalar>(y: &DMatrix<T>, g: &DMatrix<T>) -> DMatrix<T> {
    let mut xbar = T::zero();
    for j in 1..y.ncols() {
        xbar += g[(0, j)] * T::constant(j as f64) * y[(0, j - 1)];
    }
    DMatrix::from_element(1, 1, xbar)
}

pub(crate) fn scale_vjp<T: Scalar>(c: T, mut g: DMatrix<T>) -> DMatrix<T> {
    g *= c;
    g
}

/// The shape two operands broadcast to: each dimension equal, or 1 in one of them.
fn broadcast_shape(op: &'static str, a: Shape, b: Shape) -> Result<Shape> {
    let dim = |x: usize, y: usize| match (x, y) {
        _ if x == y => Some(x),
        (1, y) => Some(y),
        (x, 1) => Some(x),
        _ => None,
    };
    match (dim(a.0, b.0), dim(a.1, b.1)) {
        (Some(r), Some(c)) => Ok((r, c)),
        _ => Err(Error::ShapeMismatch {
            op,
            left: a,
            right: b,
            expected: "the same shape, or one operand 1x1, 1xn (a row, broadcast over rows) or nx1 (a column, broadcast over columns)",
        }),
    }
}

/// `m` repeated to `shape` along its dimensions of size 1.
fn expand<T: Scalar>(m: &DMatrix<T>, shape: Shape) -> DMatrix<T> {
    if m.shape() == shape {
        return m.clone();
    }
    let (r1, c1) = (m.nrows() == 1, m.ncols() == 1);
    DMatrix::from_fn(shape.0, shape.1, |i, j| {
        m[(if r1 { 0 } else { i }, if c1 { 0 } else { j })]
    })
}

/// The cotangent `g` of a broadcast result summed back to an operand of shape `to`.
fn reduce_to<T: Scalar>(g: DMatrix<T>, to: Shape) -> DMatrix<T> {
    // Sums over rows (→ 1×c) and over columns (→ r×1), as the operand was repeated; the
    // reductions' own sums (in order; `f32` accumulated in `f64`).
    let g = if to.0 == 1 && g.nrows() != 1 {
        sum_rows(&g)
    } else {
        g
    };
    if to.1 == 1 && g.ncols() != 1 {
        sum_cols(&g)
    } else {
        g
    }
}

/// Same-shape elementwise binary op kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

impl Binary {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
        }
    }

    fn forward<T: Scalar>(self, a: &DMatrix<T>, b: &DMatrix<T>) -> DMatrix<T> {
        match self {
            Binary::Add => threads::zip_map(a, b, |a, b| a + b),
            Binary::Sub => threads::zip_map(a, b, |a, b| a - b),
            Binary::Mul => threads::zip_map(a, b, |a, b| a * b),
            Binary::Div => threads::zip_map(a, b, |a, b| a / b),
        }
    }

    pub(crate) fn vjp<T: Scalar>(
        self,
        a: &DMatrix<T>,
        b: &DMatrix<T>,
        y: &DMatrix<T>,
        g: DMatrix<T>,
        wants: &[bool],
    ) -> Grads<T> {
        let (ga, gb) = match self {
            // d(a+b) = da + db
            Binary::Add => (wants[0].then(|| g.clone()), Some(g)),
            // d(a-b) = da - db
            Binary::Sub => (wants[0].then(|| g.clone()), Some(threads::map(&g, |g| -g))),
            // d(ab) = b da + a db
            Binary::Mul => (
                wants[0].then(|| threads::zip_map(&g, b, |g, b| g * b)),
                Some(threads::zip_map(&g, a, |g, a| g * a)),
            ),
            // d(a/b) = da / b - (a/b) db / b
            Binary::Div => {
                let ga = threads::zip_map(&g, b, |g, b| g / b);
                let gb = wants[1].then(|| threads::zip_map(&ga, y, |ga, y| -(ga * y)));
                (Some(ga), gb)
            }
        };
        let mut out = Grads::new();
        out.push(ga);
        out.push(if wants[1] { gb } else { None });
        out
    }
}

impl Binary {
    /// The VJP of a broadcast binary op: the same-shape VJP on the expanded operands, each
    /// cotangent summed back over the dimensions its operand was broadcast along.
    pub(crate) fn broadcast_vjp<T: Scalar>(
        self,
        inputs: &[&DMatrix<T>],
        (sa, sb): (Shape, Shape),
        y: &DMatrix<T>,
        g: DMatrix<T>,
        wants: &[bool],
    ) -> Grads<T> {
        let out = g.shape();
        // Add and Sub read no input (their values may have been released).
        let (a, b) = match self {
            Binary::Add | Binary::Sub => (DMatrix::zeros(0, 0), DMatrix::zeros(0, 0)),
            Binary::Mul | Binary::Div => (expand(inputs[0], out), expand(inputs[1], out)),
        };
        let grads = self.vjp(&a, &b, y, g, wants);
        let mut reduced = Grads::new();
        for (g, s) in grads.into_iter().zip([sa, sb]) {
            reduced.push(g.map(|g| reduce_to(g, s)));
        }
        reduced
    }
}

macro_rules! binary_operators {
    ($($trait:ident $method:ident $op:ident;)*) => {$(
        impl<'t, T: Scalar> ops::$trait<Var<'t, T>> for Var<'t, T> {
            type Output = Result<Var<'t, T>>;
            /// Elementwise, broadcasting as [`Var::add`] does; fails on shapes that do not
            /// broadcast, a foreign or a stale Var.
            fn $method(self, rhs: Var<'t, T>) -> Self::Output {
                self.binary(Binary::$op, rhs)
            }
        }
        impl<'t, T: Scalar> ops::$trait<&Var<'t, T>> for &Var<'t, T> {
            type Output = Result<Var<'t, T>>;
            /// Elementwise, broadcasting as [`Var::add`] does; fails on shapes that do not
            /// broadcast, a foreign or a stale Var.
            fn $method(self, rhs: &Var<'t, T>) -> Self::Output {
                self.binary(Binary::$op, *rhs)
            }
        }
    )*};
}

binary_operators! {
    Add add Add;
    Sub sub Sub;
    Mul mul Mul;
    Div div Div;
}

impl<'t, T: Scalar> ops::Neg for Var<'t, T> {
    type Output = Var<'t, T>;
    fn neg(self) -> Var<'t, T> {
        self.unary(Unary::Neg)
    }
}

impl<'t, T: Scalar> ops::Neg for &Var<'t, T> {
    type Output = Var<'t, T>;
    fn neg(self) -> Var<'t, T> {
        self.unary(Unary::Neg)
    }
}

impl<T: Scalar> crate::tape::Tape<T> {
    /// The linear combination `Σ cᵢ xᵢ` of same-shape variables, as one node (one output
    /// tensor instead of one per term).
    pub fn fixed_weighted_sum<'t>(&'t self, terms: &[(T, Var<'t, T>)]) -> Result<Var<'t, T>> {
        let vars: SmallVec<[Var<'t, T>; 8]> = terms.iter().map(|t| t.1).collect();
        self.apply("fixed_weighted_sum", &vars, |x| {
            let Some(first) = x.first() else {
                return Err(Error::InvalidArgument {
                    op: "fixed_weighted_sum",
                    message: "needs at least one term".into(),
                });
            };
            for xi in x {
                same_shape("fixed_weighted_sum", first.shape(), xi.shape())?;
            }
            let coeffs: SmallVec<[T; 8]> = terms.iter().map(|t| t.0).collect();
            let y = combination(&coeffs, x);
            Ok((y, Op::FixedWeightedSum(terms.iter().map(|t| t.0).collect())))
        })
    }
}

impl<T: crate::scalar::Scalar> crate::tape::Tape<T> {
    /// `Σⱼ wⱼ xⱼ` with differentiable weights: `weights` is 1×m, `terms` are m same-shape
    /// variables. Gradients flow to the weights (`w̄ⱼ = ⟨ḡ, xⱼ⟩`) and to every term.
    pub fn weighted_sum<'t>(
        &'t self,
        weights: Var<'t, T>,
        terms: &[Var<'t, T>],
    ) -> Result<Var<'t, T>> {
        let mut vars: SmallVec<[Var<'t, T>; 8]> = SmallVec::with_capacity(terms.len() + 1);
        vars.push(weights);
        vars.extend_from_slice(terms);
        self.apply("weighted_sum", &vars, |x| {
            let (w, terms) = (x[0], &x[1..]);
            let Some(first) = terms.first() else {
                return Err(Error::InvalidArgument {
                    op: "weighted_sum",
                    message: "needs at least one term".into(),
                });
            };
            if w.shape() != (1, terms.len()) {
                return Err(Error::ShapeMismatch {
                    op: "weighted_sum",
                    left: w.shape(),
                    right: (1, terms.len()),
                    expected: "the weights must be one row with one entry per term",
                });
            }
            for xi in terms {
                same_shape("weighted_sum", first.shape(), xi.shape())?;
            }
            Ok((combination(w.as_slice(), terms), Op::WeightedSum))
        })
    }
}

/// y = Σ wⱼ xⱼ:  w̄ⱼ = ⟨ȳ, xⱼ⟩,  x̄ⱼ = wⱼ ȳ.
pub(crate) fn weighted_sum_vjp<T: Scalar>(
    inputs: &[&DMatrix<T>],
    g: DMatrix<T>,
    wants: &[bool],
) -> Grads<T> {
    let (w, terms) = (inputs[0], &inputs[1..]);
    let mut out = Grads::with_capacity(inputs.len());
    out.push(
        wants[0].then(|| DMatrix::from_iterator(1, terms.len(), terms.iter().map(|x| g.dot(x)))),
    );
    for (j, &want) in wants[1..].iter().enumerate() {
        out.push(want.then(|| &g * w[(0, j)]));
    }
    out
}

/// `Σ cᵢ xᵢ` over same-shape matrices (at least one): `c₀x₀ + c₁x₁` in one pass, then two
/// more terms per pass, half the memory traffic of one pass per term. Large ones are split
/// into bands over the threads, each running the passes on its own range (cache-resident);
/// each entry is the same arithmetic whichever band computes it.
fn combination<T: Scalar>(c: &[T], x: &[&DMatrix<T>]) -> DMatrix<T> {
    let (rows, cols) = x[0].shape();
    let terms: SmallVec<[(T, &[T]); 8]> =
        c.iter().zip(x).map(|(&c, m)| (c, m.as_slice())).collect();
    fast::filled(rows, cols, |y| {
        split_mut(y, &|at, y| {
            let n = y.len();
            fn seg<T>(m: &[T], at: usize, n: usize) -> &[T] {
                &m[at..at + n]
            }
            match *terms.as_slice() {
                [(c0, x0), (c1, x1), ..] => {
                    for (y, (&a, &b)) in y.iter_mut().zip(seg(x0, at, n).iter().zip(seg(x1, at, n)))
                    {
                        y.write(c0 * a + c1 * b);
                    }
                }
                [(c0, x0)] => {
                    for (y, &a) in y.iter_mut().zip(seg(x0, at, n)) {
                        y.write(a * c0);
                    }
                }
                [] => return,
            }
            // SAFETY: the pass above wrote every entry of the band.
            let y = unsafe { &mut *(std::ptr::from_mut(y) as *mut [T]) };
            for pair in terms.get(2..).unwrap_or_default().chunks(2) {
                match *pair {
                    [(c, a), (d, b)] => {
                        for (y, (&a, &b)) in
                            y.iter_mut().zip(seg(a, at, n).iter().zip(seg(b, at, n)))
                        {
                            *y += c * a + d * b;
                        }
                    }
                    [(c, a)] => {
                        for (y, &a) in y.iter_mut().zip(seg(a, at, n)) {
                            *y += c * a;
                        }
                    }
                    _ => {}
                }
            }
        })
    })
}

pub(crate) fn fixed_weighted_sum_vjp<T: Scalar>(
    c: &[T],
    g: DMatrix<T>,
    wants: &[bool],
) -> Grads<T> {
    c.iter()
        .zip(wants)
        .map(|(&c, &w)| w.then(|| &g * c))
        .collect()
}
