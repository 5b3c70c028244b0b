//! How the examples draw each gradient strategy, so that a strategy looks the same on
//! every chart: one colour per family, a marker per variant.

use costate::nn::Strategy;

use super::chart::Marker;

/// The chart colour and marker of `strategy`'s family (`checkpointed:K` for every K).
pub fn strategy_style(strategy: &Strategy) -> (u32, Marker) {
    match strategy {
        Strategy::Taped => (0xd62728, Marker::Circle),
        Strategy::Backsolve(_) => (0x1f77b4, Marker::Circle),
        Strategy::BacksolveCheckpointed { .. } => (0x17becf, Marker::Square),
        Strategy::StoreEveryStep => (0x2ca02c, Marker::Triangle),
        Strategy::Checkpointed { .. } => (0xff7f0e, Marker::Square),
        Strategy::Auto { .. } => (0x9467bd, Marker::Diamond),
        Strategy::Reversible { .. } => (0x8c564b, Marker::Triangle),
        Strategy::Gauss(_) => (0xe377c2, Marker::Circle),
        Strategy::Interpolating(_) => (0x7f7f7f, Marker::Square),
    }
}
