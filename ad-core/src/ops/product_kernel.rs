//! Which blocked kernel large `f32`/`f64` products run on, chosen once per process for the
//! CPU.
//!
//! Both candidates pick their instruction set at run time. `matrixmultiply` (0.3.11 on Rust
//! ≥ 1.89) takes its AVX-512 kernel wherever the CPU has AVX-512F, else AVX2/FMA, AVX or
//! SSE2; its AVX-512 tile is 8×8, one broadcast load per FMA. `gemm` (the kernels `faer`
//! uses) has wider AVX-512 tiles that reuse each load for several FMAs.
//!
//! The choice follows where the vector width pays. On AMD (Zen 4 runs a 512-bit FMA as two
//! 256-bit halves; Zen 5 issues four 256-bit FMAs a cycle) AVX-512 does not raise the
//! peak multiply-add rate over AVX2, and `matrixmultiply` already runs at it: on an AMD EPYC
//! (Zen 4) it measured 53.4–53.8 GFLOP/s on one core at the large workload's shapes against
//! `gemm`'s 50.6–51.1. Intel's server cores with AVX-512 have two 512-bit FMA units, twice
//! the AVX2 peak, and `matrixmultiply` reached only 37.1 GFLOP/s a core on a Sapphire Rapids
//! (issue 21), so Intel CPUs with AVX-512F take `gemm`. `COSTATE_PRODUCT_KERNEL` pins the
//! choice (`matrixmultiply`, `gemm` or `auto`), e.g. to compare the two on a new machine.
//!
//! The two kernels sum in different orders, so results differ between them in the last
//! bits; on a given machine and setting, they are bitwise the same for any thread count.

use std::sync::OnceLock;

/// The blocked kernel large `f32` and `f64` products run on (see [`product_kernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProductKernel {
    /// `gemm`'s AVX-512 kernels (chosen on Intel CPUs with AVX-512F).
    GemmAvx512,
    /// `matrixmultiply`'s kernels, which pick AVX-512, AVX2/FMA, AVX or SSE2 themselves.
    MatrixMultiply,
}

impl ProductKernel {
    /// A short name with the instruction set in use, e.g. `"gemm AVX-512"` or
    /// `"matrixmultiply AVX-512"`.
    pub fn name(self) -> &'static str {
        match self {
            ProductKernel::GemmAvx512 => "gemm AVX-512",
            ProductKernel::MatrixMultiply => matrixmultiply_name(),
        }
    }
}

impl std::fmt::Display for ProductKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What was wrong with `COSTATE_PRODUCT_KERNEL`. The variable is read once, lazily, inside a
/// library, so ad-core prints nothing: it uses the CPU's own choice instead and
/// [`product_kernel_setting`] returns this error, for a program to report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProductKernelSettingError {
    /// The value is not one of the names.
    #[error(
        "COSTATE_PRODUCT_KERNEL={value:?} is not auto, matrixmultiply or gemm; using {using} \
         (this CPU's choice) instead. Set it to one of those names, or unset it"
    )]
    Invalid {
        /// The value as set.
        value: String,
        /// The kernel used instead.
        using: ProductKernel,
    },
    /// `gemm` was asked for on a CPU without AVX-512F, where only its AVX-512 kernels are
    /// compiled in.
    #[error(
        "COSTATE_PRODUCT_KERNEL=gemm needs a CPU with AVX-512F, and this one has none; using \
         {using} instead. Unset it, or set it to matrixmultiply"
    )]
    Unavailable {
        /// The kernel used instead.
        using: ProductKernel,
    },
}

/// What the CPU offers, as far as the choice goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cpu {
    /// The vendor string is `GenuineIntel`.
    pub intel: bool,
    /// The CPU has AVX-512F.
    pub avx512f: bool,
}

/// The kernel for `cpu` when nothing is pinned: `gemm` on Intel with AVX-512F (two 512-bit
/// FMA units on the server parts), `matrixmultiply` everywhere else.
pub(crate) fn auto_choice(cpu: Cpu) -> ProductKernel {
    if cpu.intel && cpu.avx512f {
        ProductKernel::GemmAvx512
    } else {
        ProductKernel::MatrixMultiply
    }
}

/// The kernel for `cpu` under the setting `value` (`COSTATE_PRODUCT_KERNEL`), and why the
/// setting was not followed, if it was not.
pub(crate) fn parse_kernel_setting(
    value: Option<&str>,
    cpu: Cpu,
) -> (ProductKernel, Option<ProductKernelSettingError>) {
    let auto = auto_choice(cpu);
    match value.map(str::trim) {
        None | Some("" | "auto") => (auto, None),
        Some("matrixmultiply") => (ProductKernel::MatrixMultiply, None),
        Some("gemm") if cpu.avx512f => (ProductKernel::GemmAvx512, None),
        Some("gemm") => (
            auto,
            Some(ProductKernelSettingError::Unavailable { using: auto }),
        ),
        Some(other) => (
            auto,
            Some(ProductKernelSettingError::Invalid {
                value: other.to_owned(),
                using: auto,
            }),
        ),
    }
}

#[cfg(target_arch = "x86_64")]
fn this_cpu() -> Cpu {
    // SAFETY: leaf 0 of CPUID exists on every x86-64 CPU; it returns the vendor string in
    // EBX, EDX, ECX.
    #[allow(unused_unsafe)]
    let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&leaf.ecx.to_le_bytes());
    Cpu {
        intel: &vendor == b"GenuineIntel",
        avx512f: std::is_x86_feature_detected!("avx512f"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn this_cpu() -> Cpu {
    Cpu {
        intel: false,
        avx512f: false,
    }
}

/// The process's setting: the kernel and, if `COSTATE_PRODUCT_KERNEL` was not followed, why.
fn process_setting() -> &'static (ProductKernel, Option<ProductKernelSettingError>) {
    static SETTING: OnceLock<(ProductKernel, Option<ProductKernelSettingError>)> = OnceLock::new();
    SETTING.get_or_init(|| {
        let value = std::env::var("COSTATE_PRODUCT_KERNEL").ok();
        parse_kernel_setting(value.as_deref(), this_cpu())
    })
}

/// The kernel this process's large `f32` and `f64` products run on: `gemm`'s AVX-512 kernels
/// on Intel CPUs with AVX-512F, `matrixmultiply`'s (AVX-512, AVX2/FMA, AVX or SSE2, its own
/// pick) elsewhere, unless `COSTATE_PRODUCT_KERNEL` pins one (see
/// [`product_kernel_setting`]). Chosen once, at the first call or the first large product.
/// Small and thin products keep `matrixmultiply` or direct loops whatever the choice.
///
/// ```
/// println!("products: {}", ad_core::product_kernel());
/// ```
pub fn product_kernel() -> ProductKernel {
    process_setting().0
}

/// The kernel this process uses, or, if `COSTATE_PRODUCT_KERNEL` was refused, what was
/// wrong and the kernel used instead. The variable takes `auto` (the default: the CPU's
/// choice, see [`product_kernel`]), `matrixmultiply`, or `gemm` (only on CPUs with
/// AVX-512F). ad-core prints nothing itself: a program that reports its kernel should report
/// this error too.
///
/// ```
/// match ad_core::product_kernel_setting() {
///     Ok(kernel) => println!("products on {kernel}"),
///     Err(e) => eprintln!("warning: {e}"),
/// }
/// ```
pub fn product_kernel_setting() -> Result<ProductKernel, ProductKernelSettingError> {
    match process_setting() {
        (kernel, None) => Ok(*kernel),
        (_, Some(e)) => Err(e.clone()),
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn matrixmultiply_name() -> &'static str {
    // matrixmultiply's own dispatch (its `detect`): AVX-512F, else FMA with AVX2, else AVX.
    if std::is_x86_feature_detected!("avx512f") {
        "matrixmultiply AVX-512"
    } else if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2") {
        "matrixmultiply AVX2/FMA"
    } else if std::is_x86_feature_detected!("avx") {
        "matrixmultiply AVX"
    } else {
        "matrixmultiply SSE2"
    }
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn matrixmultiply_name() -> &'static str {
    "matrixmultiply"
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL_512: Cpu = Cpu {
        intel: true,
        avx512f: true,
    };
    const AMD_512: Cpu = Cpu {
        intel: false,
        avx512f: true,
    };
    const INTEL_AVX2: Cpu = Cpu {
        intel: true,
        avx512f: false,
    };

    #[test]
    fn gemm_only_on_intel_with_avx512() {
        assert_eq!(auto_choice(INTEL_512), ProductKernel::GemmAvx512);
        assert_eq!(auto_choice(AMD_512), ProductKernel::MatrixMultiply);
        assert_eq!(auto_choice(INTEL_AVX2), ProductKernel::MatrixMultiply);
    }

    #[test]
    fn the_setting_pins_the_kernel() {
        for cpu in [INTEL_512, AMD_512, INTEL_AVX2] {
            for unset in [None, Some(""), Some(" auto ")] {
                assert_eq!(parse_kernel_setting(unset, cpu), (auto_choice(cpu), None));
            }
            assert_eq!(
                parse_kernel_setting(Some("matrixmultiply"), cpu),
                (ProductKernel::MatrixMultiply, None)
            );
        }
        assert_eq!(
            parse_kernel_setting(Some("gemm"), AMD_512),
            (ProductKernel::GemmAvx512, None)
        );
    }

    #[test]
    fn gemm_without_avx512_and_unknown_names_are_refused_by_name() {
        let (kernel, e) = parse_kernel_setting(Some("gemm"), INTEL_AVX2);
        assert_eq!(kernel, ProductKernel::MatrixMultiply);
        let text = e.unwrap().to_string();
        assert!(
            text.contains("AVX-512F") && text.contains("matrixmultiply"),
            "{text}"
        );
        let (kernel, e) = parse_kernel_setting(Some("mkl"), INTEL_512);
        assert_eq!(kernel, ProductKernel::GemmAvx512);
        let text = e.unwrap().to_string();
        assert!(
            text.contains("\"mkl\"") && text.contains("using gemm"),
            "{text}"
        );
    }
}
