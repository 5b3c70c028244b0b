//! Peak heap, measured: a counting global allocator and scopes that read it.
//!
//! Memory figures in this workspace come in two kinds (`docs/design.md`, "Memory"):
//! *held bytes*, what the tape keeps alive between forward and backward (the tape reports
//! them itself, [`crate::TapeStats::held_bytes`]), and *peak heap*, the most bytes live at
//! once during forward plus backward — what a user actually pays. Peak heap needs the
//! allocator's help: install [`CountingAlloc`] in your binary and read a [`PeakScope`].
//!
//! ```
//! use ad_core::heap::{CountingAlloc, PeakScope};
//! use ad_core::{nalgebra::DMatrix, Tape};
//!
//! #[global_allocator]
//! static HEAP: CountingAlloc = CountingAlloc::new();
//!
//! let tape = Tape::<f64>::new();
//! let x = tape.var(DMatrix::from_element(100, 100, 0.5));
//! let scope = PeakScope::start();
//! let loss = x.matmul(x)?.tanh().sum();
//! let grads = tape.backward(loss)?;
//! let peak = scope.peak_bytes().expect("the counting allocator is installed");
//! // At least the product's and the tanh's 100×100 values were live at once.
//! assert!(peak >= 2 * 100 * 100 * 8, "{peak}");
//! println!("held {} B, peak heap {peak} B", tape.stats().held_bytes);
//! # drop(grads);
//! # Ok::<(), ad_core::Error>(())
//! ```
//!
//! The counters are process-wide (one global allocator per process), so a scope counts
//! every thread's allocations, the product workers' included: measure with nothing else
//! running. Scopes nest: an inner scope restarts the running maximum and hands the outer
//! one its own maximum back when it is dropped.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Bytes allocated through [`CountingAlloc`] and not yet freed.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The running maximum of [`LIVE`] since the innermost open [`PeakScope`] started.
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Whether [`CountingAlloc`] has served an allocation (it is the global allocator).
static COUNTING: AtomicBool = AtomicBool::new(false);

/// The system allocator with two counters added: live bytes and their running maximum.
///
/// Install it with `#[global_allocator] static HEAP: CountingAlloc = CountingAlloc::new();`
/// and measure with [`PeakScope`] (or this type's methods, which read the same
/// process-wide counters). It adds two relaxed atomic operations per allocation.
pub struct CountingAlloc {
    _private: (),
}

impl CountingAlloc {
    /// The allocator; its counters are process-wide and start at zero.
    pub const fn new() -> Self {
        Self { _private: () }
    }

    /// Bytes allocated and not yet freed ([`live`]).
    pub fn live(&self) -> usize {
        live()
    }

    /// The largest [`CountingAlloc::live`] since the last [`CountingAlloc::reset_peak`] or
    /// [`CountingAlloc::start`].
    pub fn peak(&self) -> usize {
        PEAK.load(Ordering::Relaxed)
    }

    /// Restart the running maximum from the bytes live now. Prefer [`PeakScope`], which
    /// nests.
    pub fn reset_peak(&self) {
        PEAK.store(live(), Ordering::Relaxed);
    }

    /// Restart the running maximum and return the bytes live now, for
    /// [`CountingAlloc::peak_above`].
    pub fn start(&self) -> usize {
        self.reset_peak();
        live()
    }

    /// The running maximum above `before` (what [`CountingAlloc::start`] returned).
    pub fn peak_above(&self, before: usize) -> usize {
        self.peak().saturating_sub(before)
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

fn add(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn sub(n: usize) {
    LIVE.fetch_sub(n, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            COUNTING.store(true, Ordering::Relaxed);
            add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        sub(layout.size());
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            COUNTING.store(true, Ordering::Relaxed);
            add(layout.size());
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            sub(layout.size());
            add(new_size);
        }
        p
    }
}

/// Whether [`CountingAlloc`] is this process's global allocator (it has served an
/// allocation). Without it, [`PeakScope::peak_bytes`] is `None`.
pub fn is_counting() -> bool {
    COUNTING.load(Ordering::Relaxed)
}

/// Heap bytes live now (0 without [`CountingAlloc`]).
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// A peak-heap measurement: the most bytes live at once since [`PeakScope::start`], above
/// the bytes live at the start.
///
/// Open one before the forward and read it after the backward for the *peak heap* of a
/// gradient; read [`crate::TapeStats::held_bytes`] between the two for the held bytes.
#[must_use = "a scope measures until it is read or dropped"]
pub struct PeakScope {
    /// Live bytes at the start.
    base: usize,
    /// The enclosing scope's running maximum when this one started.
    outer: usize,
}

impl PeakScope {
    /// Start measuring from the bytes live now.
    pub fn start() -> Self {
        let base = live();
        let outer = PEAK.swap(base, Ordering::Relaxed);
        Self { base, outer }
    }

    /// The most bytes live at once since the start, above the bytes live then; `None`
    /// unless [`CountingAlloc`] is the global allocator.
    pub fn peak_bytes(&self) -> Option<usize> {
        is_counting().then(|| PEAK.load(Ordering::Relaxed).saturating_sub(self.base))
    }

    /// Bytes live now above those live at the start (negative when the scope freed more
    /// than it kept); `None` without [`CountingAlloc`].
    pub fn retained_bytes(&self) -> Option<isize> {
        is_counting().then(|| live() as isize - self.base as isize)
    }
}

impl Drop for PeakScope {
    fn drop(&mut self) {
        // The enclosing scope's maximum covers this one's too.
        PEAK.fetch_max(self.outer, Ordering::Relaxed);
    }
}
