//! What the examples share: argument parsing, tables and SVG charts (plotters); peak heap
//! comes from the library's own meter, `costate::heap`. Not part of the published API; each
//! example uses part of it.
#![allow(dead_code)]

pub mod chart;
pub mod cli;
pub mod report;
pub mod stiff;
pub mod styles;
pub mod workloads;
