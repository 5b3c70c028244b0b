//! What the examples print: medians, process memory, byte counts (tables are
//! `costate::ad_core::TextTable`).
//! (Charts are `super::chart`.)

/// The median of `xs` (0 for an empty slice).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Peak resident set size of this process in bytes (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes as a short human-readable string (`"1.23 MiB"`).
pub fn bytes(n: usize) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// The CPU's model name (`model name` in `/proc/cpuinfo` on Linux), or `"unknown CPU"`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// What large products run on in this process: the CPU, the kernel ad-core chose for it
/// (`ad_core::product_kernel`) and the threads, with the problem in `COSTATE_PRODUCT_KERNEL`
/// or `MATMUL_NUM_THREADS` if either was refused or capped.
pub fn product_setup() -> String {
    let threads = match costate::ad_core::thread_setting() {
        Ok(n) => format!("{n} thread{}", if n == 1 { "" } else { "s" }),
        Err(e) => format!("threads: {e}"),
    };
    let kernel = match costate::ad_core::product_kernel_setting() {
        Ok(kernel) => format!("{kernel} kernel"),
        Err(e) => format!("kernel: {e}"),
    };
    format!("{}, {kernel}, {threads}", cpu_model())
}
