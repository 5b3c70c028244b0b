//! Butcher tableaux as data. One generic explicit Runge–Kutta engine reads these.

/// An explicit Runge–Kutta method as data.
///
/// Stages: `k_i = f(t + c_i dt, y + dt Σ_{j<i} a_i[j] k_j)`; solution `y₁ = y + dt Σ b_i k_i`;
/// error estimate `dt Σ e_i k_i` with `e = b_error` (the difference between the propagated
/// solution's weights and the embedded solution's weights).
#[derive(Debug)]
pub struct Tableau {
    /// Name as used by torchdiffeq (`"dopri5"`, `"rk4"`, ...).
    pub name: &'static str,
    /// Order of the propagated solution.
    pub order: u32,
    /// Order of the embedded solution used for error estimation (`None`: fixed-step method).
    pub embedded_order: Option<u32>,
    /// Stage times `c`.
    pub c: &'static [f64],
    /// Lower-triangular coupling rows: `a[i]` has `i` entries (`a[0]` is empty).
    pub a: &'static [&'static [f64]],
    /// Solution weights `b`.
    pub b: &'static [f64],
    /// Error weights `e = b − b̂` (`None` for fixed-step methods).
    pub b_error: Option<&'static [f64]>,
    /// First-same-as-last: the last stage is evaluated at `(t + dt, y₁)`, so it is the next
    /// step's first stage.
    pub fsal: bool,
    /// The method's own continuous extension, if it has one: `interpolant[i][k]` is the
    /// coefficient of `θ^(k+1)` in `b_i(θ)`, and `y(t + θ dt) = y + dt Σ_i b_i(θ) k_i`.
    /// `None`: cubic Hermite interpolation on `(y, f(t, y), y₁, f(t + dt, y₁))`.
    pub interpolant: Option<&'static [&'static [f64]]>,
    /// How a step reads the arrays: the explicit Runge–Kutta step, or a scheme of its own
    /// for which the arrays give the stage times, order and error estimate.
    pub step: StepKind,
}

/// How a step reads a [`Tableau`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepKind {
    /// The explicit Runge–Kutta step `y₁ = y + dt Σ b_i k_i`.
    Explicit,
    /// Reversible Heun (Kidger, Foster, Li & Lyons 2021): the state is a pair `(y, z)`,
    /// `z₁ = 2y₀ − z₀ + dt f(t₀, z₀)`, `y₁ = y₀ + dt (f(t₀, z₀) + f(t₁, z₁)) / 2`, one
    /// evaluation per step (`f(t₁, z₁)` is the next step's first), and algebraically
    /// invertible: `z₀ = 2y₁ − z₁ − dt f(t₁, z₁)`, then `y₀` likewise. The arrays are
    /// Heun's with Euler embedded, so the error estimate is `dt (f(t₁, z₁) − f(t₀, z₀)) / 2`.
    ReversibleHeun,
    /// A diagonally implicit Runge–Kutta step: stage `i` solves
    /// `Z_i = y + dt Σ_{j<i} a_ij k_j + dt γ f(t + c_i dt, Z_i)` by Newton and `k_i = f(t_i, Z_i)`;
    /// `a` holds the strictly lower part, the diagonal is `γ` on every stage (but the
    /// first, when `explicit_first`: an ESDIRK, whose first stage is `f(t, y)`).
    DiagonallyImplicit {
        /// The diagonal entry.
        gamma: f64,
        /// Whether stage 0 is explicit (`a_00 = 0`).
        explicit_first: bool,
    },
}

// ---------------------------------------------------------------------------------------------
// Fixed-step methods (no error estimate, no own interpolant).
// ---------------------------------------------------------------------------------------------

/// Forward Euler, order 1.
pub static EULER: Tableau = Tableau {
    name: "euler",
    order: 1,
    embedded_order: None,
    c: &[0.0],
    a: &[&[]],
    b: &[1.0],
    b_error: None,
    fsal: false,
    interpolant: None,
    step: StepKind::Explicit,
};

/// Explicit midpoint rule, order 2.
pub static MIDPOINT: Tableau = Tableau {
    name: "midpoint",
    order: 2,
    embedded_order: None,
    c: &[0.0, 1.0 / 2.0],
    a: &[&[], &[1.0 / 2.0]],
    b: &[0.0, 1.0],
    b_error: None,
    fsal: false,
    interpolant: None,
    step: StepKind::Explicit,
};

/// Heun's second-order method (explicit trapezoidal rule), order 2.
pub static HEUN2: Tableau = Tableau {
    name: "heun2",
    order: 2,
    embedded_order: None,
    c: &[0.0, 1.0],
    a: &[&[], &[1.0]],
    b: &[1.0 / 2.0, 1.0 / 2.0],
    b_error: None,
    fsal: false,
    interpolant: None,
    step: StepKind::Explicit,
};

/// Heun's third-order method (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.1), order 3.
pub static HEUN3: Tableau = Tableau {
    name: "heun3",
    order: 3,
    embedded_order: None,
    c: &[0.0, 1.0 / 3.0, 2.0 / 3.0],
    a: &[&[], &[1.0 / 3.0], &[0.0, 2.0 / 3.0]],
    b: &[1.0 / 4.0, 0.0, 3.0 / 4.0],
    b_error: None,
    fsal: false,
    interpolant: None,
    step: StepKind::Explicit,
};

/// Kutta's 3/8 rule, order 4 (what torchdiffeq's `"rk4"` uses: `rk4_alt_step_func`).
pub static RK4: Tableau = Tableau {
    name: "rk4",
    order: 4,
    embedded_order: None,
    c: &[0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0],
    a: &[&[], &[1.0 / 3.0], &[-1.0 / 3.0, 1.0], &[1.0, -1.0, 1.0]],
    b: &[1.0 / 8.0, 3.0 / 8.0, 3.0 / 8.0, 1.0 / 8.0],
    b_error: None,
    fsal: false,
    interpolant: None,
    step: StepKind::Explicit,
};

/// The classic fourth-order Runge–Kutta method (Kutta 1901), order 4: `c = [0, ½, ½, 1]`,
/// `b = [1/6, 1/3, 1/3, 1/6]`. This is Diffrax's `RK4` (and the "RK4" of most texts);
/// torchdiffeq's `"rk4"`, and hence [`RK4`] here, is Kutta's 3/8 rule, a different method
/// of the same order whose solutions differ at O(dt⁴).
pub static RK4_CLASSIC: Tableau = Tableau {
    name: "rk4_classic",
    order: 4,
    embedded_order: None,
    c: &[0.0, 1.0 / 2.0, 1.0 / 2.0, 1.0],
    a: &[&[], &[1.0 / 2.0], &[0.0, 1.0 / 2.0], &[0.0, 0.0, 1.0]],
    b: &[1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
    b_error: None,
    fsal: false,
    interpolant: None,
    step: StepKind::Explicit,
};

// ---------------------------------------------------------------------------------------------
// Adaptive (embedded) methods.
// ---------------------------------------------------------------------------------------------

/// Runge–Kutta–Fehlberg 1(2) as in torchdiffeq's `fehlberg2`: the order-2 weights
/// `b = [1/512, 255/256, 1/512]` are propagated, the order-1 weights `b̂ = [1/256, 255/256, 0]`
/// are the embedded solution. The last row of `a` equals `b̂`, not `b`, so it is not FSAL.
///
/// It takes three evaluations per step where torchdiffeq takes two (~1.5× its NFE on the
/// same accepted steps; 268 against 184 on its test problem): torchdiffeq's step reuses the
/// last stage, f at the order-1 point `y + dt·(k₁/256 + 255 k₂/256)`, as the next step's
/// first stage although the step propagated the order-2 solution `y₁`. The next step then
/// starts from `f` at a point that is not its start state, an O(dt²) inconsistency that
/// changes the method. costate evaluates `f(t₁, y₁)`, as the tableau defines it. Measured on
/// the harmonic oscillator over [0, 10] at rtol 1e-6 / atol 1e-8: 473 steps in both,
/// NFE 1414 against 946, error 6.6e-4 against 6.5e-4.
pub static FEHLBERG2: Tableau = Tableau {
    name: "fehlberg2",
    order: 2,
    embedded_order: Some(1),
    c: &[0.0, 1.0 / 2.0, 1.0],
    a: &[&[], &[1.0 / 2.0], &[1.0 / 256.0, 255.0 / 256.0]],
    b: &[1.0 / 512.0, 255.0 / 256.0, 1.0 / 512.0],
    b_error: Some(&[-1.0 / 512.0, 0.0, 1.0 / 512.0]),
    fsal: false,
    interpolant: None,
    step: StepKind::Explicit,
};

/// Heun–Euler 2(1): Heun's trapezoidal rule with forward Euler (`b̂ = [1, 0]`) embedded.
///
/// It takes two evaluations per step where torchdiffeq takes one (~2× its NFE on the same
/// accepted steps; 2540 against 1277 on its large-norm test): torchdiffeq reuses the second
/// stage, f at the Euler predictor `y + dt·k₁`, as the next step's first stage, although the
/// step's result is Heun's `y₁ = y + dt·(k₁ + k₂)/2`. That stage is not `f(t₁, y₁)`, so the
/// steps it takes are no longer Heun's method and its error estimate no longer measures
/// them. costate keeps the method as defined; on long problems raise `max_num_steps`
/// (10,000 by default) for this low-order method. Measured on the harmonic oscillator over
/// [0, 10] at rtol 1e-6 / atol 1e-8: about 7,300 steps in both, NFE 14,611 against 7,306,
/// and costate's error 2.6e-6 against torchdiffeq's 6.6e-6.
pub static ADAPTIVE_HEUN: Tableau = Tableau {
    name: "adaptive_heun",
    order: 2,
    embedded_order: Some(1),
    c: &[0.0, 1.0],
    a: &[&[], &[1.0]],
    b: &[1.0 / 2.0, 1.0 / 2.0],
    b_error: Some(&[-1.0 / 2.0, 1.0 / 2.0]),
    fsal: false,
    interpolant: None,
    step: StepKind::Explicit,
};

/// Bogacki–Shampine 3(2) (1989), FSAL. Embedded weights `b̂ = [7/24, 1/4, 1/3, 1/8]`.
pub static BOSH3: Tableau = Tableau {
    name: "bosh3",
    order: 3,
    embedded_order: Some(2),
    c: &[0.0, 1.0 / 2.0, 3.0 / 4.0, 1.0],
    a: &[
        &[],
        &[1.0 / 2.0],
        &[0.0, 3.0 / 4.0],
        &[2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0],
    ],
    b: &[2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0, 0.0],
    b_error: Some(&[-5.0 / 72.0, 1.0 / 12.0, 1.0 / 9.0, -1.0 / 8.0]),
    fsal: true,
    interpolant: None,
    step: StepKind::Explicit,
};

/// Dormand–Prince 5(4) (1980), FSAL, 7 stages, as in Hairer & Wanner's `dopri5.f`.
///
/// The error weights are `dopri5.f`'s `E1..E7`, i.e. `b − b̂` with the original embedded
/// weights `b̂ = [5179/57600, 0, 7571/16695, 393/640, −92097/339200, 187/2100, 1/40]`
/// (torchdiffeq and Diffrax use Shampine's alternative 4th-order `b̂` instead).
///
/// Interpolant: the continuous extension of `dopri5.f` (`CONTD5`, Shampine 1986, with the
/// coefficients `D1..D7`), expanded into polynomials in θ:
/// `b_i(θ) = θ b_i + θ(1−θ)(δ_{i1} − b_i) + θ²(1−θ)(2b_i − δ_{i1} − δ_{i7}) + θ²(1−θ)² d_i`.
pub static DOPRI5: Tableau = Tableau {
    name: "dopri5",
    order: 5,
    embedded_order: Some(4),
    c: &[0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0],
    a: &[
        &[],
        &[1.0 / 5.0],
        &[3.0 / 40.0, 9.0 / 40.0],
        &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        &[
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
        ],
        &[
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
        ],
        &[
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ],
    b: &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
        0.0,
    ],
    // Shampine's alternative embedded 4th-order weights b̂ = [1951/21600, 0, 22642/50085,
    // 451/720, −12231/42400, 649/6300, 1/60], as torchdiffeq and Diffrax use: the same error
    // estimate gives the same accepted steps and NFE as those peers on the same problem.
    b_error: Some(&[
        35.0 / 384.0 - 1951.0 / 21600.0,
        0.0,
        500.0 / 1113.0 - 22642.0 / 50085.0,
        125.0 / 192.0 - 451.0 / 720.0,
        -2187.0 / 6784.0 + 12231.0 / 42400.0,
        11.0 / 84.0 - 649.0 / 6300.0,
        -1.0 / 60.0,
    ]),
    fsal: true,
    interpolant: Some(&[
        &[
            1.0,
            -8048581381.0 / 2820520608.0,
            8663915743.0 / 2820520608.0,
            -12715105075.0 / 11282082432.0,
        ],
        &[0.0, 0.0, 0.0, 0.0],
        &[
            0.0,
            131558114200.0 / 32700410799.0,
            -68118460800.0 / 10900136933.0,
            87487479700.0 / 32700410799.0,
        ],
        &[
            0.0,
            -1754552775.0 / 470086768.0,
            14199869525.0 / 1410260304.0,
            -10690763975.0 / 1880347072.0,
        ],
        &[
            0.0,
            127303824393.0 / 49829197408.0,
            -318862633887.0 / 49829197408.0,
            701980252875.0 / 199316789632.0,
        ],
        &[
            0.0,
            -282668133.0 / 205662961.0,
            2019193451.0 / 616988883.0,
            -1453857185.0 / 822651844.0,
        ],
        &[
            0.0,
            40617522.0 / 29380423.0,
            -110615467.0 / 29380423.0,
            69997945.0 / 29380423.0,
        ],
    ]),
    step: StepKind::Explicit,
};

/// Tsitouras 5(4) (Ch. Tsitouras, "Runge–Kutta pairs of order 5(4) satisfying only the first
/// column simplifying assumption", Comput. Math. Appl. 62 (2011) 770–775), FSAL, 7 stages.
///
/// The coefficients are the paper's, as tabulated to ~85 digits in OrdinaryDiffEq's
/// `tsit_tableaus.jl` (and copied by Diffrax and torchdiffeq), rounded to the nearest `f64`.
/// The embedded weights are
/// `b̂ = [0.09468075576583946, 0.009183565540343253, 0.4877705284247616, 1.234297566930479,
/// −2.7077123499835255, 1.866628418170587, 1/66]`; `b_error = b − b̂` was formed in high
/// precision before rounding. (torchdiffeq's `tsit5` propagates `b̂`; here `b` is propagated.)
///
/// Interpolant: the paper's 4th-order continuous extension, in the expanded form of
/// OrdinaryDiffEq's `Tsit5Interp` (`r_ij`), rounded to the nearest `f64`.
pub static TSIT5: Tableau = Tableau {
    name: "tsit5",
    order: 5,
    embedded_order: Some(4),
    c: &[0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0],
    a: &[
        &[],
        &[0.161],
        &[-0.008480655492356989, 0.335480655492357],
        &[2.8971530571054935, -6.359448489975075, 4.3622954328695815],
        &[
            5.325864828439257,
            -11.748883564062828,
            7.4955393428898365,
            -0.09249506636175525,
        ],
        &[
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.028269050394068383,
        ],
        &[
            0.09646076681806523,
            0.01,
            0.4798896504144996,
            1.379008574103742,
            -3.290069515436081,
            2.324710524099774,
        ],
    ],
    b: &[
        0.09646076681806523,
        0.01,
        0.4798896504144996,
        1.379008574103742,
        -3.290069515436081,
        2.324710524099774,
        0.0,
    ],
    b_error: Some(&[
        0.0017800110522257714,
        0.0008164344596567469,
        -0.007880878010261995,
        0.1447110071732629,
        -0.5823571654525552,
        0.45808210592918697,
        -1.0 / 66.0,
    ]),
    fsal: true,
    interpolant: Some(&[
        &[
            1.0,
            -2.763706197274826,
            2.9132554618219126,
            -1.0530884977290216,
        ],
        &[0.0, 0.13169999999999998, -0.2234, 0.1017],
        &[
            0.0,
            3.9302962368947516,
            -5.941033872131505,
            2.490627285651253,
        ],
        &[
            0.0,
            -12.411077166933676,
            30.33818863028232,
            -16.548102889244902,
        ],
        &[0.0, 37.50931341651104, -88.1789048947664, 47.37952196281928],
        &[
            0.0,
            -27.896526289197286,
            65.09189467479366,
            -34.87065786149661,
        ],
        &[0.0, 1.5, -4.0, 2.5],
    ]),
    step: StepKind::Explicit,
};

/// Prince–Dormand RK8(7)13M ("High order embedded Runge–Kutta formulae", J. Comput. Appl.
/// Math. 7 (1981) 67–75), 13 stages, order 8 with an embedded order-7 solution. The
/// coefficients are the paper's rational approximations (as also used by torchdiffeq's and
/// Diffrax's `dopri8` and GSL's `rk8pd`). Not FSAL (`b_13 = 1/4`); no own interpolant here.
///
/// Embedded weights: `b̂ = [13451932/455176623, 0, 0, 0, 0, −808719846/976000145,
/// 1757004468/5645159321, 656045339/265891186, −3867574721/1518517206,
/// 465885868/322736535, 53011238/667516719, 2/45, 0]`.
pub static DOPRI8: Tableau = Tableau {
    name: "dopri8",
    order: 8,
    embedded_order: Some(7),
    c: &[
        0.0,
        1.0 / 18.0,
        1.0 / 12.0,
        1.0 / 8.0,
        5.0 / 16.0,
        3.0 / 8.0,
        59.0 / 400.0,
        93.0 / 200.0,
        5490023248.0 / 9719169821.0,
        13.0 / 20.0,
        1201146811.0 / 1299019798.0,
        1.0,
        1.0,
    ],
    a: &[
        &[],
        &[1.0 / 18.0],
        &[1.0 / 48.0, 1.0 / 16.0],
        &[1.0 / 32.0, 0.0, 3.0 / 32.0],
        &[5.0 / 16.0, 0.0, -75.0 / 64.0, 75.0 / 64.0],
        &[3.0 / 80.0, 0.0, 0.0, 3.0 / 16.0, 3.0 / 20.0],
        &[
            29443841.0 / 614563906.0,
            0.0,
            0.0,
            77736538.0 / 692538347.0,
            -28693883.0 / 1125000000.0,
            23124283.0 / 1800000000.0,
        ],
        &[
            16016141.0 / 946692911.0,
            0.0,
            0.0,
            61564180.0 / 158732637.0,
            22789713.0 / 633445777.0,
            545815736.0 / 2771057229.0,
            -180193667.0 / 1043307555.0,
        ],
        &[
            39632708.0 / 573591083.0,
            0.0,
            0.0,
            -433636366.0 / 683701615.0,
            -421739975.0 / 2616292301.0,
            100302831.0 / 723423059.0,
            790204164.0 / 839813087.0,
            800635310.0 / 3783071287.0,
        ],
        &[
            246121993.0 / 1340847787.0,
            0.0,
            0.0,
            -37695042795.0 / 15268766246.0,
            -309121744.0 / 1061227803.0,
            -12992083.0 / 490766935.0,
            6005943493.0 / 2108947869.0,
            393006217.0 / 1396673457.0,
            123872331.0 / 1001029789.0,
        ],
        &[
            -1028468189.0 / 846180014.0,
            0.0,
            0.0,
            8478235783.0 / 508512852.0,
            1311729495.0 / 1432422823.0,
            -10304129995.0 / 1701304382.0,
            -48777925059.0 / 3047939560.0,
            15336726248.0 / 1032824649.0,
            -45442868181.0 / 3398467696.0,
            3065993473.0 / 597172653.0,
        ],
        &[
            185892177.0 / 718116043.0,
            0.0,
            0.0,
            -3185094517.0 / 667107341.0,
            -477755414.0 / 1098053517.0,
            -703635378.0 / 230739211.0,
            5731566787.0 / 1027545527.0,
            5232866602.0 / 850066563.0,
            -4093664535.0 / 808688257.0,
            3962137247.0 / 1805957418.0,
            65686358.0 / 487910083.0,
        ],
        &[
            403863854.0 / 491063109.0,
            0.0,
            0.0,
            -5068492393.0 / 434740067.0,
            -411421997.0 / 543043805.0,
            652783627.0 / 914296604.0,
            11173962825.0 / 925320556.0,
            -13158990841.0 / 6184727034.0,
            3936647629.0 / 1978049680.0,
            -160528059.0 / 685178525.0,
            248638103.0 / 1413531060.0,
            0.0,
        ],
    ],
    b: &[
        14005451.0 / 335480064.0,
        0.0,
        0.0,
        0.0,
        0.0,
        -59238493.0 / 1068277825.0,
        181606767.0 / 758867731.0,
        561292985.0 / 797845732.0,
        -1041891430.0 / 1371343529.0,
        760417239.0 / 1151165299.0,
        118820643.0 / 751138087.0,
        -528747749.0 / 2220607170.0,
        1.0 / 4.0,
    ],
    b_error: Some(&[
        14005451.0 / 335480064.0 - 13451932.0 / 455176623.0,
        0.0,
        0.0,
        0.0,
        0.0,
        -59238493.0 / 1068277825.0 + 808719846.0 / 976000145.0,
        181606767.0 / 758867731.0 - 1757004468.0 / 5645159321.0,
        561292985.0 / 797845732.0 - 656045339.0 / 265891186.0,
        -1041891430.0 / 1371343529.0 + 3867574721.0 / 1518517206.0,
        760417239.0 / 1151165299.0 - 465885868.0 / 322736535.0,
        118820643.0 / 751138087.0 - 53011238.0 / 667516719.0,
        -528747749.0 / 2220607170.0 - 2.0 / 45.0,
        1.0 / 4.0,
    ]),
    fsal: false,
    interpolant: None,
    step: StepKind::Explicit,
};

/// Reversible Heun (see [`StepKind::ReversibleHeun`]), order 2 with an order-1 error
/// estimate; algebraically reversible, so [`crate::Strategy::Reversible`] gives its exact
/// discrete gradient in O(state + parameters) memory at one evaluation per step.
pub static REVERSIBLE_HEUN: Tableau = Tableau {
    name: "reversible_heun",
    order: 2,
    embedded_order: Some(1),
    c: &[0.0, 1.0],
    a: &[&[], &[1.0]],
    b: &[1.0 / 2.0, 1.0 / 2.0],
    b_error: Some(&[-1.0 / 2.0, 1.0 / 2.0]),
    fsal: false,
    interpolant: None,
    step: StepKind::ReversibleHeun,
};

// ---------------------------------------------------------------------------------------------
// Diagonally implicit methods (L-stable, stiffly accurate: y₁ is the last stage's Z).
// ---------------------------------------------------------------------------------------------

/// Backward Euler, order 1, fixed step: `y₁ = y + dt f(t + dt, y₁)`.
pub static IMPLICIT_EULER: Tableau = Tableau {
    name: "implicit_euler",
    order: 1,
    embedded_order: None,
    c: &[1.0],
    a: &[&[]],
    b: &[1.0],
    b_error: None,
    fsal: false,
    interpolant: None,
    step: StepKind::DiagonallyImplicit {
        gamma: 1.0,
        explicit_first: false,
    },
};

/// Kvaerno's 3(2) ESDIRK (BIT 44, 2004): γ ≈ 0.4359, four stages, the first explicit, FSAL.
pub static KVAERNO3: Tableau = Tableau {
    name: "kvaerno3",
    order: 3,
    embedded_order: Some(2),
    c: &[0.0, KV3_G * 2.0, 1.0, 1.0],
    a: &[
        &[],
        &[KV3_G],
        &[KV3_A31, KV3_A32],
        &[KV3_A41, KV3_A42, KV3_A43],
    ],
    b: &[KV3_A41, KV3_A42, KV3_A43, KV3_G],
    b_error: Some(&[KV3_A41 - KV3_A31, KV3_A42 - KV3_A32, KV3_A43 - KV3_G, KV3_G]),
    fsal: true,
    interpolant: None,
    step: StepKind::DiagonallyImplicit {
        gamma: KV3_G,
        explicit_first: true,
    },
};

const KV3_G: f64 = 0.435_866_521_50;
const KV3_A31: f64 = (-4.0 * KV3_G * KV3_G + 6.0 * KV3_G - 1.0) / (4.0 * KV3_G);
const KV3_A32: f64 = (-2.0 * KV3_G + 1.0) / (4.0 * KV3_G);
const KV3_A41: f64 = (6.0 * KV3_G - 1.0) / (12.0 * KV3_G);
const KV3_A42: f64 = -1.0 / ((24.0 * KV3_G - 12.0) * KV3_G);
const KV3_A43: f64 = (-6.0 * KV3_G * KV3_G + 6.0 * KV3_G - 1.0) / (6.0 * KV3_G - 3.0);

/// Kvaerno's 5(4) ESDIRK (BIT 44, 2004): γ = 0.26, seven stages, the first explicit, FSAL.
// The coefficients as published, digits past f64's included.
#[allow(clippy::excessive_precision)]
pub static KVAERNO5: Tableau = Tableau {
    name: "kvaerno5",
    order: 5,
    embedded_order: Some(4),
    c: &[
        0.0,
        0.52,
        1.230_333_209_967_908,
        0.895_765_984_350_075_9,
        0.436_393_609_858_647_56,
        1.0,
        1.0,
    ],
    a: &[
        &[],
        &[0.26],
        &[0.13, 0.840_333_209_967_908_09],
        &[
            0.223_719_614_783_205_05,
            0.476_755_323_197_996_99,
            -0.064_708_953_631_126_15,
        ],
        &[
            0.166_485_643_232_483_21,
            0.104_500_188_415_917_20,
            0.036_314_822_720_987_15,
            -0.130_907_044_510_739_98,
        ],
        &[
            0.138_556_402_312_682_24,
            0.0,
            -0.042_453_372_017_520_43,
            0.024_466_578_980_031_41,
            0.619_430_390_724_806_76,
        ],
        &[
            0.136_597_511_776_402_91,
            0.0,
            -0.054_969_087_965_383_76,
            -0.041_186_267_283_210_46,
            0.629_933_048_990_164_03,
            0.069_624_794_482_027_28,
        ],
    ],
    b: &[
        0.136_597_511_776_402_91,
        0.0,
        -0.054_969_087_965_383_76,
        -0.041_186_267_283_210_46,
        0.629_933_048_990_164_03,
        0.069_624_794_482_027_28,
        0.26,
    ],
    b_error: Some(&[
        0.136_597_511_776_402_91 - 0.138_556_402_312_682_24,
        0.0,
        -0.054_969_087_965_383_76 + 0.042_453_372_017_520_43,
        -0.041_186_267_283_210_46 - 0.024_466_578_980_031_41,
        0.629_933_048_990_164_03 - 0.619_430_390_724_806_76,
        0.069_624_794_482_027_28 - 0.26,
        0.26,
    ]),
    fsal: true,
    interpolant: None,
    step: StepKind::DiagonallyImplicit {
        gamma: 0.26,
        explicit_first: true,
    },
};

/// The diagonally implicit methods (values only for now: no gradient strategy runs them).
pub static IMPLICIT: &[&Tableau] = &[&IMPLICIT_EULER, &KVAERNO3, &KVAERNO5];

/// Every explicit Runge–Kutta tableau above.
pub static ALL: &[&Tableau] = &[
    &EULER,
    &MIDPOINT,
    &HEUN2,
    &HEUN3,
    &RK4,
    &RK4_CLASSIC,
    &FEHLBERG2,
    &ADAPTIVE_HEUN,
    &BOSH3,
    &DOPRI5,
    &TSIT5,
    &DOPRI8,
];

/// The methods with a step of their own ([`StepKind`] other than `Explicit`).
pub static REVERSIBLE: &[&Tableau] = &[&REVERSIBLE_HEUN];

impl Tableau {
    /// Check that the arrays fit each other: `s = c.len() ≥ 1` stages, `a` lower triangular
    /// with `a[i].len() ≤ i`, `b` (and `b_error`) of length `s`, interpolant rows of at most
    /// `s` entries, every coefficient finite, a positive order, and for FSAL the last stage
    /// at `(t + dt, y₁)` (`c[s−1] = 1`, `a[s−1] = b`). The solvers call this before using a
    /// tableau, so a hand-built one that does not fit is an error, never an out-of-bounds
    /// panic.
    pub fn validate(&self) -> Result<(), TableauError> {
        let bad = |why: String| {
            Err(TableauError {
                name: self.name,
                why,
            })
        };
        let s = self.c.len();
        if s == 0 {
            return bad("it has no stages (c is empty)".into());
        }
        if self.order == 0 || self.embedded_order == Some(0) {
            return bad("its order must be at least 1".into());
        }
        if self.a.len() != s {
            return bad(format!("a has {} rows for {s} stages", self.a.len()));
        }
        if let Some(i) = (0..s).find(|&i| self.a[i].len() > i) {
            return bad(format!(
                "a[{i}] has {} entries; stage {i} may use at most the {i} before it",
                self.a[i].len()
            ));
        }
        if self.b.len() != s {
            return bad(format!("b has {} entries for {s} stages", self.b.len()));
        }
        if let Some(e) = self.b_error {
            if e.len() != s {
                return bad(format!("b_error has {} entries for {s} stages", e.len()));
            }
        }
        if let Some(rows) = self.interpolant {
            if rows.len() > s {
                return bad(format!(
                    "the interpolant has {} rows for {s} stages",
                    rows.len()
                ));
            }
        }
        let all = self
            .c
            .iter()
            .chain(self.a.iter().flat_map(|r| r.iter()))
            .chain(self.b)
            .chain(self.b_error.unwrap_or(&[]))
            .chain(
                self.interpolant
                    .unwrap_or(&[])
                    .iter()
                    .flat_map(|r| r.iter()),
            );
        if all.clone().any(|v| !v.is_finite()) {
            return bad("a coefficient is not finite".into());
        }
        if self.fsal {
            let last = &self.a[s - 1];
            // The last stage's own weight is its diagonal entry: 0 for an explicit method, γ
            // for a stiffly accurate implicit one (y₁ is the last stage's Z).
            let diagonal = match self.step {
                StepKind::DiagonallyImplicit { gamma, .. } => gamma,
                _ => 0.0,
            };
            let same = last.len() + 1 == s
                && last.iter().zip(self.b).all(|(x, y)| x == y)
                && self.b[s - 1] == diagonal;
            if s < 2 || self.c[s - 1] != 1.0 || !same {
                return bad(
                    "it is marked FSAL, but its last stage is not at (t + dt, y₁): c[s−1] must be 1, a[s−1] must equal b and b[s−1] must be 0".into(),
                );
            }
        }
        Ok(())
    }
}

/// A [`Tableau`] whose arrays do not fit each other (see [`Tableau::validate`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tableau `{name}` is malformed: {why}")]
pub struct TableauError {
    /// The tableau's name.
    pub name: &'static str,
    /// What does not fit.
    pub why: String,
}

/// The tableau with this (torchdiffeq) name, if any.
pub fn by_name(name: &str) -> Option<&'static Tableau> {
    ALL.iter()
        .chain(REVERSIBLE)
        .chain(IMPLICIT)
        .copied()
        .find(|t| t.name == name)
}
