//! The counting allocator the examples install: the library's own meter, so an example's
//! peak heap is what a user measures with `costate::heap` in their binary.

pub use costate::heap::CountingAlloc;
