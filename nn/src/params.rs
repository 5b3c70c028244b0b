//! A named collection of parameter tensors that goes onto a tape and takes gradients back.

use ad_core::nalgebra::{self, DMatrix};
use ad_core::{Gradients, Precision, Scalar, Tape, Var};

use crate::error::{Error, Result};

/// Named parameter tensors (`"layers.0.weight"`, ...), in a fixed order.
///
/// The values are `f64` (the default) or `f32` ([`ParamSet::cast`] converts);
/// [`ParamSet::to_tape`] and [`ParamSet::to_tape_with`] put them on a tape of any scalar, so
/// one model runs in `f32` or `f64`, in reverse mode (`f64`), forward mode (`Dual64`:
/// seed a direction) or forward-over-reverse (Hessian-vector products) without copying
/// weights by hand. A whole [`crate::NeuralOde`] in forward mode, its dual part checked
/// against a central difference of the `f64` loss:
///
/// ```
/// use nn::nalgebra::DMatrix;
/// use nn::num_dual::Dual64;
/// use nn::rand::SeedableRng;
/// use nn::{Activation, NeuralOde, OdeFunc, Strategy};
/// use ad_core::Tape;
///
/// let func = OdeFunc::new(2, &[8], Activation::Tanh)?;
/// let mut rng = nn::rand::rngs::StdRng::seed_from_u64(1);
/// let params = func.mlp.init_params(&mut rng);
/// let direction = func.mlp.init_params(&mut rng); // any tensors of the same shapes
/// let mut model = NeuralOde::new(func, Strategy::Taped);
/// model.options = model.options.tolerances(1e-10, 1e-10);
/// let h0 = DMatrix::from_row_slice(2, 2, &[1.0, 0.5, -0.5, 0.25]);
/// let grid = DMatrix::from_row_slice(1, 3, &[0.0, 0.5, 1.0]);
///
/// // Forward mode: parameters lifted with the direction as their dual part.
/// let tape = Tape::<Dual64>::new();
/// let p = params.to_tape_with(&tape, |k, value| {
///     value.zip_map(&direction.values()[k], Dual64::new)
/// })?;
/// let lift = |m: &DMatrix<f64>| tape.constant(m.map(Dual64::from));
/// let sol = model.forward(&tape, lift(&h0), lift(&grid), &p)?;
/// let loss = sol.last().square().sum().scalar_value()?;
///
/// // The f64 loss at params ± eps · direction.
/// let f64_loss = |eps: f64| -> nn::Result<f64> {
///     let mut moved = params.clone();
///     for (v, d) in moved.values_mut().iter_mut().zip(direction.values()) {
///         *v += d * eps;
///     }
///     let tape = Tape::<f64>::new();
///     let p = moved.to_tape(&tape);
///     let sol = model.forward(&tape, tape.constant(h0.clone()), tape.constant(grid.clone()), &p)?;
///     Ok(sol.last().square().sum().scalar_value()?)
/// };
/// let eps = 1e-5;
/// let central = (f64_loss(eps)? - f64_loss(-eps)?) / (2.0 * eps);
/// assert!((loss.re - f64_loss(0.0)?).abs() < 1e-12 * loss.re.abs());
/// assert!((loss.eps - central).abs() < 1e-6 * central.abs(), "{} vs {central}", loss.eps);
/// # Ok::<(), nn::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet<P: Precision = f64> {
    names: Vec<String>,
    values: Vec<DMatrix<P>>,
}

impl<P: Precision> Default for ParamSet<P> {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl ParamSet {
    /// An empty `f64` collection (`ParamSet::<f32>::default()` for `f32`, or
    /// [`ParamSet::cast`] an `f64` one).
    pub fn new() -> Self {
        Self::default()
    }
}

impl<P: Precision> ParamSet<P> {
    /// The same tensors in precision `Q` (rounded to nearest for `f64` → `f32`); a finite
    /// entry beyond `Q`'s range is an [`Error::Overflow`] naming it (NaN and ±inf pass as
    /// they are).
    ///
    /// ```
    /// use nn::rand::SeedableRng;
    /// use nn::{Activation, Mlp};
    /// let mlp = Mlp::new(&[2, 8, 2], Activation::Tanh)?;
    /// let mut params = mlp.init_params(&mut nn::rand::rngs::StdRng::seed_from_u64(0));
    /// let narrow = params.cast::<f32>()?;
    /// assert_eq!(narrow.values()[0][(0, 0)], params.values()[0][(0, 0)] as f32);
    /// assert_eq!(narrow.cast::<f64>()?.names(), params.names());
    /// params.values_mut()[1][(0, 3)] = 1e39;
    /// assert!(matches!(params.cast::<f32>(), Err(nn::Error::Overflow { col: 3, .. })));
    /// # Ok::<(), nn::Error>(())
    /// ```
    pub fn cast<Q: Precision>(&self) -> Result<ParamSet<Q>> {
        let values = self
            .names
            .iter()
            .zip(&self.values)
            .map(|(name, v)| lower(name, v))
            .collect::<Result<_>>()?;
        Ok(ParamSet {
            names: self.names.clone(),
            values,
        })
    }

    /// Append a tensor.
    pub fn push(&mut self, name: impl Into<String>, value: DMatrix<P>) {
        self.names.push(name.into());
        self.values.push(value);
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there is no tensor.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.values.iter().map(|v| v.len()).sum()
    }

    /// The names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The values, in order.
    pub fn values(&self) -> &[DMatrix<P>] {
        &self.values
    }

    /// Mutable access to the values (shapes must be kept).
    pub fn values_mut(&mut self) -> &mut [DMatrix<P>] {
        &mut self.values
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&DMatrix<P>> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.values[i])
    }

    /// Put every tensor on `tape` as a gradient-requiring leaf, in order, lifted to the
    /// tape's scalar with zero derivative parts (rounded if the tape's precision is lower).
    pub fn to_tape<'t, T: Scalar>(&self, tape: &'t Tape<T>) -> Vec<Var<'t, T>> {
        self.values
            .iter()
            .map(|v| tape.var(v.map(|x| T::constant(x.as_f64()))))
            .collect()
    }

    /// Put every tensor on `tape` as a gradient-requiring leaf, in order, with the value
    /// `lift(k, value)` for tensor `k`: seed forward-mode tangents (`Dual64::new(x, d)`, a
    /// `HyperDual64`'s two directions, ...) without copying the weights by hand. A lifted
    /// tensor of another shape is an [`Error::Mismatch`] naming it.
    pub fn to_tape_with<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        mut lift: impl FnMut(usize, &DMatrix<P>) -> DMatrix<T>,
    ) -> Result<Vec<Var<'t, T>>> {
        self.values
            .iter()
            .zip(&self.names)
            .enumerate()
            .map(|(k, (v, name))| Ok(tape.var(lifted(name, v, lift(k, v))?)))
            .collect()
    }

    /// The gradients of `vars` (as returned by [`ParamSet::to_tape`]), zeros where the loss
    /// does not depend on a tensor.
    ///
    /// The gradients are **moved out** of `grads` (hence `&mut`), with no copy: afterwards
    /// `grads.get(v)` is `None` for these variables, and a second call returns zeros. Read
    /// anything else you need from `grads` (e.g. [`ode::Solution::backward_stats`]'s
    /// report, or a gradient to log) first.
    pub fn grads<T: Scalar>(
        &self,
        grads: &mut Gradients<T>,
        vars: &[Var<'_, T>],
    ) -> Result<Vec<DMatrix<T>>> {
        if vars.len() != self.len() {
            return Err(Error::Mismatch(format!(
                "{} variables for {} parameter tensors",
                vars.len(),
                self.len()
            )));
        }
        Ok(vars
            .iter()
            .map(|&v| grads.take_or_zeros(v))
            .collect::<ad_core::Result<_>>()?)
    }

    /// Check that `other` (gradients, optimiser state) has one tensor of the same shape per
    /// parameter.
    pub fn check_matches<Q: nalgebra::Scalar>(
        &self,
        other: &[DMatrix<Q>],
        what: &str,
    ) -> Result<()> {
        if other.len() != self.len() {
            return Err(Error::Mismatch(format!(
                "{what}: {} tensors for {} parameters",
                other.len(),
                self.len()
            )));
        }
        for ((name, p), o) in self.names.iter().zip(&self.values).zip(other) {
            if p.shape() != o.shape() {
                return Err(Error::Mismatch(format!(
                    "{what}: `{name}` is {:?} but got {:?}",
                    p.shape(),
                    o.shape()
                )));
            }
        }
        Ok(())
    }
}

/// `value` in precision `Q`, or [`Error::Overflow`] at its first finite entry that does not
/// fit.
pub(crate) fn lower<P: Precision, Q: Precision>(
    name: &str,
    value: &DMatrix<P>,
) -> Result<DMatrix<Q>> {
    let out = value.map(|x| Q::round_from(x.as_f64()));
    let overflow = value
        .iter()
        .zip(out.iter())
        .position(|(x, y)| x.as_f64().is_finite() && !y.as_f64().is_finite());
    match overflow {
        None => Ok(out),
        Some(k) => Err(Error::Overflow {
            tensor: name.to_owned(),
            row: k % value.nrows(),
            col: k / value.nrows(),
            value: value[k].as_f64(),
            precision: Q::NAME,
        }),
    }
}

/// `lifted`, the lift of the tensor `name` (of value `value`), if it kept the shape.
pub(crate) fn lifted<P: nalgebra::Scalar, T: Scalar>(
    name: &str,
    value: &DMatrix<P>,
    lifted: DMatrix<T>,
) -> Result<DMatrix<T>> {
    if lifted.shape() == value.shape() {
        Ok(lifted)
    } else {
        Err(Error::Mismatch(format!(
            "the lift of `{name}` is {:?} but the tensor is {:?}; a lift must keep the shape",
            lifted.shape(),
            value.shape()
        )))
    }
}
