//! What the examples share: a counting allocator for peak-heap figures, tables and SVG
//! charts (plotters). Not part of the published API; each example uses part of it.
#![allow(dead_code)]

pub mod chart;
pub mod cli;
pub mod heap;
pub mod report;
pub mod stiff;
pub mod styles;
pub mod workloads;
