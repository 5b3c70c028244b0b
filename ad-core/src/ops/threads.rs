//! The threads large products are split over, and how work is handed to them.
//!
//! A product `C = op(A)·op(B)` with enough multiply-adds is cut into bands of C's columns
//! (or rows, when C is taller than wide), each at least eight wide; each band is a complete
//! single-threaded product of the same kernel. The sum over k is never split across threads,
//! and its blocking over k depends on k alone (see `linalg`), so every entry is computed in
//! the same order as by one thread: results are bitwise the same for any thread count. The
//! calling thread computes the first band itself and hands the others to `threads − 1` workers. Elementwise passes over large
//! tensors are cut into ranges the same way ([`split_mut`]).
//!
//! The workers stay hot between products (spinning, then yielding, for about a millisecond
//! before they park): a solve alternates products with elementwise passes of 50–200 µs, and
//! waking a parked thread costs tens of microseconds per product. The caller, done with its
//! own band, takes back any band no worker has started and runs it itself, so a worker that
//! is parked, or whose core is busy with another process, costs no more than one thread
//! would (measured with a busy loop on the second core of 2: 2-thread taped and backsolve
//! took 1.6–3.1× their 1-thread times before, 1.00–1.02× after). The pool starts at the first
//! product large enough to split, so small workloads never start it.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use nalgebra::DMatrix;

use super::fast;

/// Multiply-adds a band must have to be worth a hand-off to another thread (about 20 µs of
/// kernel time at 100 GFLOP/s).
const MIN_BAND_WORK: usize = 1 << 20;

/// How long an idle worker stays hot before it parks.
const HOT: Duration = Duration::from_millis(1);

/// What was wrong with the thread count the environment asked for. The value is read once,
/// lazily, inside a library, so ad-core prints nothing: it uses the count in `using` instead
/// and [`thread_setting`] returns this error, for a program to report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThreadSettingError {
    /// A variable holds something other than what it may hold.
    #[error(
        "{variable}={value:?} is not {expected}; using {using} thread{} (the available \
         parallelism) instead. Set {variable} to {expected}, or unset it",
        plural(*using)
    )]
    Invalid {
        /// `MATMUL_NUM_THREADS` or `MATMUL_NUM_THREADS_FORCE`.
        variable: &'static str,
        /// The value as set.
        value: String,
        /// What it may hold.
        expected: &'static str,
        /// The thread count used instead.
        using: usize,
    },
    /// `MATMUL_NUM_THREADS` is above the cores available and `MATMUL_NUM_THREADS_FORCE=1` is
    /// not set: more threads than cores only wait for each other.
    #[error(
        "MATMUL_NUM_THREADS={asked} is above the {cores} core{} available; using {cores}. Set \
         MATMUL_NUM_THREADS_FORCE=1 to start {asked} threads anyway",
        plural(*cores)
    )]
    AboveCores {
        /// The count asked for.
        asked: usize,
        /// The available parallelism, which is used.
        cores: usize,
    },
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The thread count large products and passes may use, from `MATMUL_NUM_THREADS` (`threads`),
/// `MATMUL_NUM_THREADS_FORCE` (`force`) and the available parallelism (`cores`):
/// unset (or blank) means `cores`; a positive integer up to `cores` is used as given, and above
/// `cores` only with `force` = `1`; anything else (0, text, a negative number) is refused and
/// `cores` is used. Returns the count to use and, when the setting was not used as given, why.
pub(crate) fn parse_thread_setting(
    threads: Option<&str>,
    force: Option<&str>,
    cores: usize,
) -> (usize, Option<ThreadSettingError>) {
    let cores = cores.max(1);
    let force = match force.map(str::trim) {
        None | Some("" | "0") => false,
        Some("1") => true,
        Some(other) => {
            let e = ThreadSettingError::Invalid {
                variable: "MATMUL_NUM_THREADS_FORCE",
                value: other.to_owned(),
                expected: "1 or 0",
                using: cores,
            };
            return (cores, Some(e));
        }
    };
    let Some(text) = threads.map(str::trim).filter(|t| !t.is_empty()) else {
        return (cores, None);
    };
    match text.parse::<usize>() {
        Ok(n) if n > 0 && (n <= cores || force) => (n, None),
        Ok(n) if n > 0 => (
            cores,
            Some(ThreadSettingError::AboveCores { asked: n, cores }),
        ),
        _ => {
            let e = ThreadSettingError::Invalid {
                variable: "MATMUL_NUM_THREADS",
                value: text.to_owned(),
                expected: "a positive integer",
                using: cores,
            };
            (cores, Some(e))
        }
    }
}

/// The process's setting: the count and, if the environment's was not used as given, why.
/// Read once per process; the workers are sized by it.
fn process_setting() -> &'static (usize, Option<ThreadSettingError>) {
    static SETTING: OnceLock<(usize, Option<ThreadSettingError>)> = OnceLock::new();
    SETTING.get_or_init(|| {
        let threads = std::env::var("MATMUL_NUM_THREADS").ok();
        let force = std::env::var("MATMUL_NUM_THREADS_FORCE").ok();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        parse_thread_setting(threads.as_deref(), force.as_deref(), cores)
    })
}

/// The threads the process may use: `MATMUL_NUM_THREADS` if it is a positive integer up to
/// the available parallelism (above it with `MATMUL_NUM_THREADS_FORCE=1`), else the available
/// parallelism (see [`thread_setting`]).
fn process_threads() -> usize {
    process_setting().0
}

/// The thread count this process's large products and passes may use (before any
/// [`set_max_threads`] cap), or, if `MATMUL_NUM_THREADS` (or `MATMUL_NUM_THREADS_FORCE`) was
/// refused or capped, what was wrong and the count used instead. The variables are read once,
/// at the first call of this or the first large product.
///
/// `MATMUL_NUM_THREADS` takes a positive integer up to the available parallelism; above it
/// the count is capped at the cores unless `MATMUL_NUM_THREADS_FORCE=1`; 0 and text are
/// refused. ad-core prints nothing itself: a program that reports its thread count should
/// report this error too.
///
/// ```
/// match ad_core::thread_setting() {
///     Ok(threads) => println!("{threads} threads"),
///     Err(e) => eprintln!("warning: {e}"),
/// }
/// ```
pub fn thread_setting() -> std::result::Result<usize, ThreadSettingError> {
    match process_setting() {
        (n, None) => Ok(*n),
        (_, Some(e)) => Err(e.clone()),
    }
}

/// The cap [`set_max_threads`] set (0: none).
static CAP: AtomicUsize = AtomicUsize::new(0);

/// The number of threads large products and passes use now: the process's count
/// ([`process_threads`]), capped by [`set_max_threads`].
pub(crate) fn threads() -> usize {
    match CAP.load(Ordering::Relaxed) {
        0 => process_threads(),
        cap => cap.min(process_threads()),
    }
}

/// Cap the threads large products and elementwise passes use from now on, at `max` (at
/// least 1), below the process's count ([`thread_setting`]: `MATMUL_NUM_THREADS`, or the
/// available parallelism).
/// Returns the count in effect before. Results are bitwise the same for any count, so this
/// only trades speed for cores, e.g. to leave cores to other work, or to time one core.
///
/// ```
/// use ad_core::{nalgebra::DMatrix, set_max_threads, Tape};
/// let product = || {
///     let tape = Tape::<f64>::new();
///     let a = tape.constant(DMatrix::from_fn(256, 256, |i, j| ((i * j) as f64).sin()));
///     a.matmul(a).unwrap().value().unwrap()
/// };
/// let before = set_max_threads(1);
/// let one = product();
/// set_max_threads(before);
/// assert_eq!(one, product());
/// ```
pub fn set_max_threads(max: usize) -> usize {
    let before = threads();
    CAP.store(max.max(1), Ordering::Relaxed);
    before
}

/// How many bands a product of `m·n·k` multiply-adds over an output dimension of `extent`
/// is cut into: one per thread, fewer if a band would have too little work or fewer than
/// eight rows or columns.
pub(crate) fn bands(m: usize, n: usize, k: usize, extent: usize) -> usize {
    let work = m.saturating_mul(n).saturating_mul(k);
    threads().min(work / MIN_BAND_WORK).min(extent / 8).max(1)
}

/// Whether [`bands`] can cut such a product into more than one band for some thread count
/// (it never does when this is false, whatever the threads).
pub(crate) fn may_split(m: usize, n: usize, k: usize, extent: usize) -> bool {
    let work = m.saturating_mul(n).saturating_mul(k);
    work / MIN_BAND_WORK >= 2 && extent / 8 >= 2
}

/// Band `i` of `count` over `0..extent`, as `(start, len)`: consecutive runs of whole groups
/// of eight, as equal as they can be, the last band also taking the `extent % 8` left over.
/// With `count ≤ max(extent / 8, 1)`, as [`bands`] gives, every band has at least eight rows
/// or columns (all of `extent` when `count` is 1), so no band is a degenerate product.
pub(crate) fn band_range(extent: usize, count: usize, i: usize) -> (usize, usize) {
    let groups = extent / 8;
    let (base, extra) = (groups / count, groups % count);
    let start = 8 * (i * base + i.min(extra));
    let mut len = 8 * (base + usize::from(i < extra));
    if i + 1 == count {
        len += extent % 8;
    }
    (start, len)
}

/// A band of work as the workers see it: the caller's closure with its lifetime erased.
/// Sound because [`run_bands`] does not return (nor unwind) before every band it posted has
/// been run or taken back.
type Job = *const (dyn Fn(usize) + Sync + 'static);

/// A slot holds no work (or its work is done).
const IDLE: u8 = 0;
/// A slot holds a band nobody has claimed yet: its worker, or the caller taking it back.
const POSTED: u8 = 1;
/// The worker claimed the slot's band and is running it.
const RUNNING: u8 = 2;

/// One worker's mailbox.
struct Slot {
    /// [`IDLE`], [`POSTED`] (set by the caller once `job` holds work) or [`RUNNING`] (set by
    /// the worker that claimed it); back to `IDLE` when the band is done or taken back.
    state: AtomicU8,
    /// Set by the worker if its band panicked.
    panicked: AtomicBool,
    /// The band to run; written by the caller while the slot is `IDLE`, taken by whoever
    /// moves it out of `POSTED`.
    job: UnsafeCell<Option<(Job, usize)>>,
    /// The worker's thread, to unpark it.
    thread: OnceLock<Thread>,
}

// SAFETY: `job` is handed over through `state` (release on post, a compare-exchange with
// acquire to claim it), so the caller and the worker never access it at the same time; the
// job itself is `Sync`.
unsafe impl Sync for Slot {}
// SAFETY: as above.
unsafe impl Send for Slot {}

struct Pool {
    slots: Vec<Arc<Slot>>,
    /// Held by the one caller using the workers; others run their bands inline.
    busy: AtomicBool,
}

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = process_threads().saturating_sub(1);
        let mut slots = Vec::with_capacity(workers);
        for i in 0..workers {
            let slot = Arc::new(Slot {
                state: AtomicU8::new(IDLE),
                panicked: AtomicBool::new(false),
                job: UnsafeCell::new(None),
                thread: OnceLock::new(),
            });
            let mine = Arc::clone(&slot);
            let spawned = std::thread::Builder::new()
                .name(format!("costate-matmul-{i}"))
                .spawn(move || work(&mine));
            match spawned {
                Ok(handle) => {
                    let _ = slot.thread.set(handle.thread().clone());
                    slots.push(slot);
                }
                // Fewer threads than asked: the bands they would have run run inline.
                Err(_) => break,
            }
        }
        (!slots.is_empty()).then(|| Pool {
            slots,
            busy: AtomicBool::new(false),
        })
    })
    .as_ref()
}

/// A worker: wait hot for work, claim it, run it, report, repeat; park after [`HOT`] without
/// work. A band the caller took back before the claim is simply gone.
fn work(slot: &Slot) {
    loop {
        let idle = Instant::now();
        let mut spins = 0u32;
        while slot.state.load(Ordering::Relaxed) != POSTED {
            spins = spins.wrapping_add(1);
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else if idle.elapsed() < HOT {
                std::thread::yield_now();
            } else {
                // `run_bands` unparks after posting, so a post between this check and the
                // park leaves a token and the park returns at once.
                std::thread::park();
                spins = 0;
            }
        }
        let claimed =
            slot.state
                .compare_exchange(POSTED, RUNNING, Ordering::Acquire, Ordering::Relaxed);
        if claimed.is_err() {
            continue; // taken back by the caller
        }
        // SAFETY: this worker moved the slot out of `POSTED`, so the caller wrote `job` and
        // neither it nor anyone else touches it until the slot is `IDLE` again.
        if let Some((job, index)) = unsafe { (*slot.job.get()).take() } {
            // SAFETY: the caller keeps the closure alive until the slot is `IDLE`.
            let run = std::panic::AssertUnwindSafe(|| unsafe { (*job)(index) });
            if std::panic::catch_unwind(run).is_err() {
                slot.panicked.store(true, Ordering::Relaxed);
            }
        }
        slot.state.store(IDLE, Ordering::Release);
    }
}

/// Takes back the band posted to `slot` if its worker has not claimed it yet, returning the
/// band's index (the caller then runs it, or drops it when unwinding).
fn take_back(slot: &Slot) -> Option<usize> {
    slot.state
        .compare_exchange(POSTED, IDLE, Ordering::Acquire, Ordering::Relaxed)
        .ok()?;
    // SAFETY: the caller moved the slot out of `POSTED`, so no worker reads `job`; the
    // caller wrote it.
    unsafe { (*slot.job.get()).take() }.map(|(_, index)| index)
}

/// Waits, when dropped (also while unwinding), until every posted band is done or taken
/// back.
struct Posted<'a> {
    slots: &'a [Arc<Slot>],
    busy: &'a AtomicBool,
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        for slot in self.slots {
            let mut spins = 0u32;
            loop {
                match slot.state.load(Ordering::Acquire) {
                    IDLE => break,
                    // Unwinding past a band nobody started: it is not run.
                    POSTED if take_back(slot).is_some() => break,
                    _ => {}
                }
                spins = spins.wrapping_add(1);
                if spins < 1 << 14 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        self.busy.store(false, Ordering::Release);
    }
}

/// Run `band(i)` for `i` in `0..count`: band 0 on the calling thread, the others on the
/// workers (inline when there are none, or another thread is using them), returning when
/// all are done. A band that panics on a worker panics here. Once its own bands are done the
/// caller takes back any band whose worker has not started it and runs it itself: a worker
/// that is parked, or whose core the host has given to someone else, then costs no more
/// than running single-threaded. Which thread runs a band does not change its result.
pub(crate) fn run_bands(count: usize, band: &(dyn Fn(usize) + Sync)) {
    let pool = match pool() {
        Some(pool)
            if count > 1
                && pool
                    .busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok() =>
        {
            pool
        }
        _ => return (0..count).for_each(band),
    };
    let used = (count - 1).min(pool.slots.len());
    // SAFETY: only the lifetime is erased; `Posted` below waits for every worker before
    // this function returns or unwinds, so the closure outlives every use.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(band) };
    let posted = Posted {
        slots: &pool.slots[..used],
        busy: &pool.busy,
    };
    for (i, slot) in posted.slots.iter().enumerate() {
        // A panic left over from a call that unwound before reporting it is not this call's.
        slot.panicked.store(false, Ordering::Relaxed);
        // SAFETY: the slot is `IDLE` (every earlier use waited for it), so no worker reads
        // `job` now.
        unsafe { *slot.job.get() = Some((job, i + 1)) };
        slot.state.store(POSTED, Ordering::Release);
        if let Some(thread) = slot.thread.get() {
            thread.unpark();
        }
    }
    // Bands beyond the workers (more bands than threads) run here too.
    band(0);
    for i in used + 1..count {
        band(i);
    }
    for slot in posted.slots {
        if let Some(i) = take_back(slot) {
            band(i);
        }
    }
    let slots = posted.slots;
    drop(posted);
    if slots
        .iter()
        .any(|s| s.panicked.swap(false, Ordering::Relaxed))
    {
        panic!("a band of a threaded product panicked on a worker thread");
    }
}

/// Entries an elementwise band must have to be worth a hand-off (about 10 µs of a simple
/// pass over `f64`s).
const MIN_BAND_ENTRIES: usize = 1 << 13;

/// An elementwise pass over `out` on ad-core's workers: `fill(start, band)` for disjoint
/// consecutive slices `band = &mut out[start..start + band.len()]` that cover `out`. It is
/// split only when `out` is long enough to pay for a hand-off (at least 2¹³ entries a
/// band), over the threads large products use ([`thread_setting`], [`set_max_threads`]),
/// and runs on the calling thread otherwise. Where each entry's arithmetic does not depend
/// on the band it falls in, the result is bitwise the same for any thread count. `ode` runs
/// its steps' quadratures and error sums through it, over states as large as the parameters.
///
/// ```
/// let x = vec![1.0_f64; 100_000];
/// let mut y = vec![2.0_f64; 100_000];
/// ad_core::in_bands(&mut y, &|start, band| {
///     for (y, x) in band.iter_mut().zip(&x[start..]) {
///         *y += 0.5 * x;
///     }
/// });
/// assert!(y.iter().all(|&v| v == 2.5));
/// ```
pub fn in_bands<E: Send>(out: &mut [E], fill: &(dyn Fn(usize, &mut [E]) + Sync)) {
    split_mut(out, fill)
}

/// Fill `out` in bands: `fill(start, band)` for disjoint consecutive `band = &mut
/// out[start..]` slices, on the workers when `out` is long enough to pay for it. For
/// elementwise passes: each entry is computed by the same arithmetic whichever band it is
/// in, so the result does not depend on the thread count.
pub(crate) fn split_mut<E: Send>(out: &mut [E], fill: &(dyn Fn(usize, &mut [E]) + Sync)) {
    let n = out.len();
    let count = threads().min(n / MIN_BAND_ENTRIES).max(1);
    if count == 1 {
        return fill(0, out);
    }
    let chunk = n.div_ceil(count).next_multiple_of(64);
    let base = SharedMut(out.as_mut_ptr());
    run_bands(count, &|i| {
        let start = i * chunk;
        if start >= n {
            return;
        }
        let len = chunk.min(n - start);
        // SAFETY: bands cover disjoint ranges `start..start + len` of `out`, which is
        // borrowed mutably for the whole call, so no two slices alias.
        let band = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), len) };
        fill(start, band);
    });
}

/// `out`'s base pointer, shared with the bands, which write disjoint ranges of it.
struct SharedMut<E>(*mut E);

impl<E> Clone for SharedMut<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for SharedMut<E> {}

impl<E> SharedMut<E> {
    /// The pointer (a method, so closures capture the whole `SharedMut`, not its field).
    fn get(self) -> *mut E {
        self.0
    }
}

// SAFETY: the bands write disjoint ranges (see `split_mut`); `E: Send` moves across threads.
unsafe impl<E: Send> Send for SharedMut<E> {}
// SAFETY: as above.
unsafe impl<E: Send> Sync for SharedMut<E> {}

/// `f(a[i], b[i])` for every entry, split as [`split_mut`] splits (same shape assumed).
pub(crate) fn zip_map<T, F>(a: &DMatrix<T>, b: &DMatrix<T>, f: F) -> DMatrix<T>
where
    T: nalgebra::Scalar + Copy + Send + Sync,
    F: Fn(T, T) -> T + Sync,
{
    let (xa, xb) = (a.as_slice(), b.as_slice());
    fast::filled(a.nrows(), a.ncols(), |y| {
        split_mut(y, &|at, y| {
            let n = y.len();
            for (y, (&a, &b)) in y.iter_mut().zip(xa[at..at + n].iter().zip(&xb[at..at + n])) {
                y.write(f(a, b));
            }
        })
    })
}

/// `f(a[i])` for every entry, split as [`split_mut`] splits.
pub(crate) fn map<T, F>(a: &DMatrix<T>, f: F) -> DMatrix<T>
where
    T: nalgebra::Scalar + Copy + Send + Sync,
    F: Fn(T) -> T + Sync,
{
    let xa = a.as_slice();
    fast::filled(a.nrows(), a.ncols(), |y| {
        split_mut(y, &|at, y| {
            let n = y.len();
            for (y, &a) in y.iter_mut().zip(&xa[at..at + n]) {
                y.write(f(a));
            }
        })
    })
}

/// `y[i] = f(y[i], x[i])` in place, split as [`split_mut`] splits (same length assumed).
pub(crate) fn zip_apply<T, F>(y: &mut [T], x: &[T], f: F)
where
    T: Copy + Send + Sync,
    F: Fn(T, T) -> T + Sync,
{
    split_mut(y, &|at, y| {
        let n = y.len();
        for (y, &x) in y.iter_mut().zip(&x[at..at + n]) {
            *y = f(*y, x);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(threads: Option<&str>, force: Option<&str>) -> (usize, Option<ThreadSettingError>) {
        parse_thread_setting(threads, force, 2)
    }

    #[test]
    fn unset_or_blank_means_the_cores() {
        assert_eq!(parse(None, None), (2, None));
        assert_eq!(parse(Some(""), None), (2, None));
        assert_eq!(parse(Some("  "), Some("")), (2, None));
    }

    #[test]
    fn counts_up_to_the_cores_are_used_as_given() {
        assert_eq!(parse(Some("1"), None), (1, None));
        assert_eq!(parse(Some(" 2 "), None), (2, None));
        assert_eq!(parse(Some("2"), Some("0")), (2, None));
    }

    #[test]
    fn counts_above_the_cores_are_capped_unless_forced() {
        let (n, e) = parse(Some("64"), None);
        assert_eq!(n, 2);
        let e = e.unwrap();
        assert_eq!(
            e,
            ThreadSettingError::AboveCores {
                asked: 64,
                cores: 2
            }
        );
        let text = e.to_string();
        assert!(
            text.contains("MATMUL_NUM_THREADS=64") && text.contains("using 2"),
            "{text}"
        );
        assert!(text.contains("MATMUL_NUM_THREADS_FORCE=1"), "{text}");
        assert_eq!(parse(Some("64"), Some("1")), (64, None));
        assert_eq!(parse(Some("3"), Some(" 1 ")), (3, None));
    }

    #[test]
    fn zero_and_garbage_are_refused_by_name() {
        for bad in [
            "0",
            "abc",
            "-1",
            "2.5",
            "4 threads",
            "99999999999999999999999",
        ] {
            let (n, e) = parse(Some(bad), None);
            assert_eq!(n, 2, "{bad}");
            let text = e.unwrap_or_else(|| panic!("{bad} accepted")).to_string();
            assert!(text.contains("MATMUL_NUM_THREADS="), "{text}");
            assert!(text.contains(&format!("{:?}", bad.trim())), "{text}");
            assert!(
                text.contains("positive integer") && text.contains("using 2"),
                "{text}"
            );
        }
        let (n, e) = parse(Some("4"), Some("yes"));
        assert_eq!(n, 2);
        let text = e.unwrap().to_string();
        assert!(text.contains("MATMUL_NUM_THREADS_FORCE=\"yes\""), "{text}");
    }

    #[test]
    fn no_cores_reported_means_one() {
        assert_eq!(parse_thread_setting(None, None, 0), (1, None));
    }

    #[test]
    fn bands_cover_the_extent_in_order_each_at_least_eight_wide() {
        for extent in 0..300 {
            for count in 1..=(extent / 8).max(1) {
                let mut next = 0;
                for i in 0..count {
                    let (start, len) = band_range(extent, count, i);
                    assert_eq!(start, next, "extent {extent}, count {count}, band {i}");
                    assert!(
                        len >= 8.min(extent),
                        "extent {extent}, count {count}, band {i}"
                    );
                    next = start + len;
                }
                assert_eq!(next, extent, "extent {extent}, count {count}");
            }
        }
    }

    fn noop(_: usize) {}

    #[test]
    fn a_posted_band_is_taken_back_once_and_a_claimed_one_not_at_all() {
        let slot = Slot {
            state: AtomicU8::new(IDLE),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            thread: OnceLock::new(),
        };
        let job: &(dyn Fn(usize) + Sync) = &noop;
        // SAFETY: only the lifetime is erased; `noop` is a `'static` function.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
        // SAFETY: the slot is IDLE and no worker sees it.
        unsafe { *slot.job.get() = Some((job, 3)) };
        slot.state.store(POSTED, Ordering::Release);
        assert_eq!(take_back(&slot), Some(3));
        assert_eq!(slot.state.load(Ordering::Acquire), IDLE);
        assert_eq!(take_back(&slot), None, "taken back twice");
        // SAFETY: as above.
        unsafe { *slot.job.get() = Some((job, 4)) };
        slot.state.store(RUNNING, Ordering::Release);
        assert_eq!(take_back(&slot), None, "a running band was taken back");
        assert_eq!(slot.state.load(Ordering::Acquire), RUNNING);
    }
}
