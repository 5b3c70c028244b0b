//! Recording a node costs no heap allocation beyond the tensors it must keep.
//!
//! A counting global allocator (wrapping `System`) counts allocations, frees and reallocations
//! made by the current thread only (each test runs on its own thread, so tests running in
//! parallel do not disturb each other). After a warm-up that records once and rewinds, so the
//! arena has capacity, recording an op must allocate exactly one block, its output tensor:
//! no parent list, no op box, no arena growth, and no scratch: the products here are small
//! enough (m·n·k ≤ 4000) for ad-core's direct loops, which read their operands in place
//! (`matrixmultiply` would pack them into a buffer it allocates inside the call).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::thread::LocalKey;

use ad_core::nalgebra::DMatrix;
use ad_core::{Tape, Var};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static FREES: Cell<usize> = const { Cell::new(0) };
    static REALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn bump(counter: &'static LocalKey<Cell<usize>>) {
    // `try_with`: allocations during thread teardown are simply not counted.
    let _ = counter.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump(&FREES);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&REALLOCS);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap events of this thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Heap {
    allocs: usize,
    frees: usize,
    reallocs: usize,
}

impl Heap {
    fn now() -> Self {
        Self {
            allocs: ALLOCS.with(Cell::get),
            frees: FREES.with(Cell::get),
            reallocs: REALLOCS.with(Cell::get),
        }
    }

    /// Blocks allocated and not freed.
    fn live(self) -> isize {
        self.allocs as isize - self.frees as isize
    }
}

/// Run `f` and return its result with the heap events it caused on this thread.
fn measure<R>(f: impl FnOnce() -> R) -> (R, Heap) {
    let before = Heap::now();
    let r = f();
    let after = Heap::now();
    (
        r,
        Heap {
            allocs: after.allocs - before.allocs,
            frees: after.frees - before.frees,
            reallocs: after.reallocs - before.reallocs,
        },
    )
}

fn init(r: usize, c: usize, seed: f64) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |i, j| ((i * c + j) as f64 * 0.37 + seed).sin() * 0.5)
}

/// A 16→16→16→16 tanh MLP (PyTorch-convention layers) on a batch of 8: 3 `matmul_t`,
/// 3 `add_row`, 2 `tanh`.
const BATCH: usize = 8;
const WIDTH: usize = 16;
const MLP_OPS: usize = 8;

fn mlp<'t>(x: Var<'t, f64>, layers: &[(Var<'t, f64>, Var<'t, f64>)]) -> Var<'t, f64> {
    let mut h = x;
    for (i, &(w, b)) in layers.iter().enumerate() {
        h = h.matmul_t(w).unwrap().add_row(b).unwrap();
        if i + 1 < layers.len() {
            h = h.tanh();
        }
    }
    h
}

/// `(W, b)` per layer.
type Layers<'t> = Vec<(Var<'t, f64>, Var<'t, f64>)>;

fn mlp_leaves(tape: &Tape<f64>) -> (Var<'_, f64>, Layers<'_>) {
    let x = tape.var(init(BATCH, WIDTH, 0.1));
    let layers = (0..3)
        .map(|l| {
            let w = tape.var(init(WIDTH, WIDTH, f64::from(l)));
            let b = tape.var(init(1, WIDTH, 10.0 + f64::from(l)));
            (w, b)
        })
        .collect();
    (x, layers)
}

fn check_mlp_forward(no_grad: bool) {
    let tape = Tape::<f64>::new();
    let (x, layers) = mlp_leaves(&tape);
    let base = tape.len();
    let mark = tape.mark();
    let record = || {
        let _guard = no_grad.then(|| tape.no_grad());
        mlp(x, &layers)
    };
    // Warm-up: the arena's slots and order vector reach their size, then are kept by rewind.
    for _ in 0..2 {
        record();
        tape.rewind(mark).unwrap();
    }

    let (y, heap) = measure(record);
    let recorded = tape.len() - base;
    assert_eq!(recorded, MLP_OPS);
    assert_eq!(y.requires_grad().unwrap(), !no_grad);
    assert_eq!(heap.reallocs, 0, "recording grew a buffer: {heap:?}");
    assert_eq!(
        heap.allocs, recorded,
        "one output tensor per op, no product scratch: {heap:?}"
    );
    assert_eq!(
        heap.live(),
        recorded as isize,
        "exactly one live block per recorded op: {heap:?}"
    );

    // Rewinding frees exactly those outputs and allocates nothing.
    let ((), heap) = measure(|| tape.rewind(mark).unwrap());
    assert_eq!(
        heap,
        Heap {
            allocs: 0,
            frees: recorded,
            reallocs: 0
        }
    );
}

#[test]
fn recording_the_mlp_allocates_one_block_per_op() {
    check_mlp_forward(false);
}

#[test]
fn the_mlp_under_no_grad_allocates_one_block_per_op() {
    check_mlp_forward(true);
}

type Record = for<'t> fn(&[Var<'t, f64>]) -> Var<'t, f64>;

#[test]
fn every_builtin_op_records_with_one_allocation() {
    // Leaves: a (4×3), b (4×3, positive), w (5×3), bias (1×3), m (3×5), s (1×1), bias (1×5).
    let tape = Tape::<f64>::new();
    let leaves = [
        tape.var(init(4, 3, 0.3)),
        tape.var(init(4, 3, 0.7).map(|v| v + 1.0)),
        tape.var(init(5, 3, 1.1)),
        tape.var(init(1, 3, 1.9)),
        tape.var(init(3, 5, 2.3)),
        tape.var(init(1, 1, 2.9)),
        tape.var(init(1, 5, 3.1)),
    ];
    let base = tape.len();
    let mark = tape.mark();
    let ops: Vec<(&str, Record)> = vec![
        ("neg", |v| v[0].neg()),
        ("tanh", |v| v[0].tanh()),
        ("sigmoid", |v| v[0].sigmoid()),
        ("relu", |v| v[0].relu()),
        ("softplus", |v| v[0].softplus()),
        ("exp", |v| v[0].exp()),
        ("log", |v| v[1].log()),
        ("sin", |v| v[0].sin()),
        ("cos", |v| v[0].cos()),
        ("square", |v| v[0].square()),
        ("sqrt", |v| v[1].sqrt()),
        ("powi", |v| v[0].powi(3)),
        ("scale", |v| v[0].scale(2.5)),
        ("add", |v| v[0].add(v[1]).unwrap()),
        ("sub", |v| v[0].sub(v[1]).unwrap()),
        ("mul", |v| v[0].mul(v[1]).unwrap()),
        ("div", |v| v[0].div(v[1]).unwrap()),
        ("matmul", |v| v[0].matmul(v[4]).unwrap()),
        ("matmul_t", |v| v[0].matmul_t(v[2]).unwrap()),
        ("linear", |v| v[0].linear(v[2], v[6]).unwrap()),
        ("abs", |v| v[0].abs()),
        ("add_scalar", |v| v[0].add_scalar(0.5)),
        ("powers", |v| v[5].powers(4).unwrap()),
        ("add_row", |v| v[0].add_row(v[3]).unwrap()),
        ("transpose", |v| v[0].transpose()),
        ("sum", |v| v[0].sum()),
        ("sum_rows", |v| v[0].sum_rows()),
        ("sum_cols", |v| v[0].sum_cols()),
        ("mean", |v| v[0].mean()),
        ("mse", |v| v[0].mse(v[1]).unwrap()),
        ("broadcast", |v| v[5].broadcast(4, 3).unwrap()),
        ("slice_cols", |v| v[0].slice_cols(1, 2).unwrap()),
    ];
    for (name, op) in ops {
        op(&leaves);
        tape.rewind(mark).unwrap();
        let (_, heap) = measure(|| op(&leaves));
        assert_eq!(tape.len(), base + 1, "`{name}` records one node");
        assert_eq!(heap.reallocs, 0, "`{name}` grew a buffer: {heap:?}");
        assert_eq!(
            heap.allocs, 1,
            "`{name}` allocates its output only: {heap:?}"
        );
        assert_eq!(heap.live(), 1, "`{name}` keeps one block: {heap:?}");
        tape.rewind(mark).unwrap();
    }
}
