//! Layers: `Linear` (PyTorch convention), activations, and the `Mlp` that chains them.

use ad_core::nalgebra::DMatrix;
use ad_core::{Precision, Result as TapeResult, Scalar, Var};
use rand::{Rng, RngCore};

use crate::error::{Error, ModelPart, Result};
use crate::params::ParamSet;

/// Elementwise nonlinearities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `tanh(x)`.
    Tanh,
    /// `max(x, 0)`.
    Relu,
    /// `ln(1 + eˣ)`.
    Softplus,
    /// `1 / (1 + e⁻ˣ)`.
    Sigmoid,
    /// `x` (no nonlinearity).
    Identity,
}

impl Activation {
    /// Apply to every entry.
    pub fn apply<'t, T: Scalar>(self, x: Var<'t, T>) -> Var<'t, T> {
        match self {
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.relu(),
            Activation::Softplus => x.softplus(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Identity => x,
        }
    }

    /// Its name, as [`Activation::from_name`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Softplus => "softplus",
            Activation::Sigmoid => "sigmoid",
            Activation::Identity => "identity",
        }
    }

    /// The activation called `name` (`"tanh"`, `"relu"`, `"softplus"`, `"sigmoid"`, `"identity"`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "tanh" => Activation::Tanh,
            "relu" => Activation::Relu,
            "softplus" => Activation::Softplus,
            "sigmoid" => Activation::Sigmoid,
            "identity" | "none" => Activation::Identity,
            _ => return None,
        })
    }
}

impl std::str::FromStr for Activation {
    type Err = Error;

    /// [`Activation::from_name`], with an [`Error::Model`] at [`ModelPart::Activation`]
    /// listing the known names.
    fn from_str(name: &str) -> Result<Self> {
        Activation::from_name(name).ok_or_else(|| {
            Error::model(
                ModelPart::Activation,
                format!(
                    "unknown activation {name:?}; expected \"tanh\", \"relu\", \"softplus\", \
                     \"sigmoid\" or \"identity\""
                ),
            )
        })
    }
}

/// An affine layer `y = x Wᵀ + b` with `W` out × in and `b` 1 × out, as in PyTorch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
}

impl Linear {
    /// A layer `in_features → out_features`.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self {
            in_features,
            out_features,
        }
    }

    /// PyTorch's default initialisation: weight and bias ~ U(−1/√in, 1/√in).
    pub fn init(&self, rng: &mut dyn RngCore) -> (DMatrix<f64>, DMatrix<f64>) {
        let bound = 1.0 / (self.in_features.max(1) as f64).sqrt();
        let mut u = || rng.random_range(-bound..=bound);
        let w = DMatrix::from_fn(self.out_features, self.in_features, |_, _| u());
        let b = DMatrix::from_fn(1, self.out_features, |_, _| u());
        (w, b)
    }

    /// `x Wᵀ + b` on the tape.
    pub fn forward<'t, T: Scalar>(
        &self,
        x: Var<'t, T>,
        weight: Var<'t, T>,
        bias: Var<'t, T>,
    ) -> TapeResult<Var<'t, T>> {
        x.linear(weight, bias)
    }
}

/// A multilayer perceptron: `Linear` layers with the activation between them (not after
/// the last). Holds the architecture only; weights live in a [`ParamSet`] so the same model
/// runs on any tape and scalar type.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    /// The layers, input first.
    pub layers: Vec<Linear>,
    /// The nonlinearity between layers.
    pub activation: Activation,
}

impl Mlp {
    /// An MLP through the given widths, e.g. `[64, 64, 64, 64]` is three 64 → 64 layers.
    pub fn new(widths: &[usize], activation: Activation) -> Result<Self> {
        if widths.len() < 2 {
            return Err(Error::model(
                ModelPart::Layers,
                format!("an MLP needs at least two widths (input and output), got {widths:?}"),
            ));
        }
        let mlp = Self {
            layers: widths.windows(2).map(|w| Linear::new(w[0], w[1])).collect(),
            activation,
        };
        mlp.check_layers()?;
        Ok(mlp)
    }

    /// The MLP whose layers the weights in `params` imply (`layers.{i}.weight` out × in,
    /// then `layers.{i}.bias` 1 × out, per layer), checked by [`Mlp::check_layers`] and
    /// [`Mlp::check_params`]: the single place where weights read from a file are validated
    /// against each other.
    ///
    /// ```
    /// use nn::{nalgebra::DMatrix, Activation, Error, Mlp, ModelPart, ParamSet};
    /// let mut p = ParamSet::new();
    /// p.push("layers.0.weight", DMatrix::zeros(3, 2));
    /// p.push("layers.0.bias", DMatrix::zeros(1, 3));
    /// p.push("layers.1.weight", DMatrix::zeros(2, 4)); // reads 4, but layer 0 outputs 3
    /// p.push("layers.1.bias", DMatrix::zeros(1, 2));
    /// let err = Mlp::from_params(&p, Activation::Tanh).unwrap_err();
    /// assert!(matches!(err, Error::Model { part: ModelPart::Weight(1), .. }), "{err}");
    /// # Ok::<(), nn::Error>(())
    /// ```
    pub fn from_params<P: Precision>(params: &ParamSet<P>, activation: Activation) -> Result<Self> {
        if params.len() % 2 == 1 {
            return Err(Error::model(
                ModelPart::Bias(params.len() / 2),
                format!(
                    "is missing: {} tensors, but every layer needs a weight and a bias",
                    params.len()
                ),
            ));
        }
        let mlp = Self {
            layers: params
                .values()
                .iter()
                .step_by(2)
                .map(|w| Linear::new(w.ncols(), w.nrows()))
                .collect(),
            activation,
        };
        mlp.check_layers()?;
        mlp.check_params(params)?;
        Ok(mlp)
    }

    /// Check the architecture: at least one layer, positive widths, and each layer reading
    /// what the one before outputs.
    pub fn check_layers(&self) -> Result<()> {
        if self.layers.is_empty() {
            return Err(Error::model(
                ModelPart::Layers,
                "has no layer: an MLP needs at least one",
            ));
        }
        if let Some(i) = self
            .layers
            .iter()
            .position(|l| l.in_features == 0 || l.out_features == 0)
        {
            let l = self.layers[i];
            return Err(Error::model(
                ModelPart::Weight(i),
                format!(
                    "is {} × {}: a layer needs positive widths",
                    l.out_features, l.in_features
                ),
            ));
        }
        if let Some(i) = self
            .layers
            .windows(2)
            .position(|w| w[0].out_features != w[1].in_features)
        {
            return Err(Error::model(
                ModelPart::Weight(i + 1),
                format!(
                    "reads {} features (columns) but layer {i} outputs {}",
                    self.layers[i + 1].in_features,
                    self.layers[i].out_features
                ),
            ));
        }
        Ok(())
    }

    /// Input width (0 for an MLP without layers).
    pub fn in_features(&self) -> usize {
        self.layers.first().map_or(0, |l| l.in_features)
    }

    /// Output width (0 for an MLP without layers).
    pub fn out_features(&self) -> usize {
        self.layers.last().map_or(0, |l| l.out_features)
    }

    /// Fresh parameters (`layers.{i}.weight`, `layers.{i}.bias`) with PyTorch's default
    /// initialisation.
    pub fn init_params(&self, rng: &mut dyn RngCore) -> ParamSet {
        let mut p = ParamSet::new();
        for (i, l) in self.layers.iter().enumerate() {
            let (w, b) = l.init(rng);
            p.push(format!("layers.{i}.weight"), w);
            p.push(format!("layers.{i}.bias"), b);
        }
        p
    }

    /// A `rows × cols` matrix of independent normal samples with this mean and standard
    /// deviation (rand_distr's `Normal`); a negative or non-finite `std` is an error.
    ///
    /// ```
    /// use nn::rand::SeedableRng;
    /// let mut rng = nn::rand::rngs::StdRng::seed_from_u64(0);
    /// let h0 = nn::Mlp::normal(32, 64, 0.0, 1.0, &mut rng)?;
    /// let mean = h0.mean();
    /// assert!(mean.abs() < 0.1 && (h0.variance() - 1.0).abs() < 0.1);
    /// assert!(nn::Mlp::normal(2, 2, 0.0, f64::NAN, &mut rng).is_err());
    /// # Ok::<(), nn::Error>(())
    /// ```
    pub fn normal(
        rows: usize,
        cols: usize,
        mean: f64,
        std: f64,
        rng: &mut dyn RngCore,
    ) -> Result<DMatrix<f64>> {
        if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
            return Err(Error::Mismatch(format!(
                "a normal distribution needs a finite mean and a finite std >= 0, not mean {mean}, std {std}"
            )));
        }
        let normal = rand_distr::Normal::new(mean, std)
            .map_err(|e| Error::Mismatch(format!("normal distribution: {e}")))?;
        Ok(DMatrix::from_fn(rows, cols, |_, _| {
            rand_distr::Distribution::sample(&normal, rng)
        }))
    }

    /// Check that `params` fits this architecture (two tensors per layer, right shapes);
    /// errors are [`Error::Model`] naming the layer's weight or bias.
    pub fn check_params<P: Precision>(&self, params: &ParamSet<P>) -> Result<()> {
        let shapes: Vec<(usize, usize)> = self
            .layers
            .iter()
            .flat_map(|l| [(l.out_features, l.in_features), (1, l.out_features)])
            .collect();
        if shapes.len() != params.len() {
            return Err(Error::model(
                ModelPart::Layers,
                format!(
                    "the MLP has {} parameter tensors, the set has {}",
                    shapes.len(),
                    params.len()
                ),
            ));
        }
        for (k, ((shape, value), name)) in shapes
            .iter()
            .zip(params.values())
            .zip(params.names())
            .enumerate()
        {
            if value.shape() == *shape {
                continue;
            }
            let (part, what) = if k % 2 == 0 {
                (ModelPart::Weight(k / 2), "out × in")
            } else {
                (ModelPart::Bias(k / 2), "1 × out")
            };
            return Err(Error::model(
                part,
                format!(
                    "`{name}` is {} × {} but layer {} needs {} × {} ({what})",
                    value.nrows(),
                    value.ncols(),
                    k / 2,
                    shape.0,
                    shape.1
                ),
            ));
        }
        Ok(())
    }

    /// Run the MLP on `x` (batch × in) with `params` in [`Mlp::init_params`] order.
    pub fn forward<'t, T: Scalar>(
        &self,
        x: Var<'t, T>,
        params: &[Var<'t, T>],
    ) -> TapeResult<Var<'t, T>> {
        if params.len() != 2 * self.layers.len() {
            return Err(ad_core::Error::InvalidArgument {
                op: "Mlp::forward",
                message: format!(
                    "{} parameter variables for {} layers (need weight and bias per layer)",
                    params.len(),
                    self.layers.len()
                ),
            });
        }
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, params[2 * i], params[2 * i + 1])?;
            if i + 1 < self.layers.len() {
                x = self.activation.apply(x);
            }
        }
        Ok(x)
    }
}
