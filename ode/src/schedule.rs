//! Griewank's binomial checkpointing schedule (revolve), as numbers: how many untaped step
//! advances reversing N steps with K stored states takes at least, and where the optimal
//! schedule places its next checkpoint.
//!
//! With K slots (the initial state's included) and each step advanced at most r times, the
//! longest chain that can be reversed is β(K, r) = C(K + r, K). Reversing N steps takes at
//! least t(N, K) = r·N − C(K + r, K + 1) untaped advances, the first forward sweep included
//! (the last step of every reversal is the taped one), r the smallest integer with
//! β(K, r) ≥ N (Griewank & Walther, ACM TOMS 26, 2000).
//!
//! ```
//! use ode::schedule::{min_recomputations, repetitions};
//! assert_eq!(repetitions(1000, 10), 4);
//! assert_eq!(min_recomputations(1000, 10), 3636);
//! // With a slot for every step it is one forward sweep: N − 1 advances.
//! assert_eq!(min_recomputations(50, 50), 49);
//! // One slot: restart from the first state for every step, N(N − 1)/2 advances.
//! assert_eq!(min_recomputations(10, 1), 45);
//! ```

/// `C(k + r, r)`, saturating at `u128::MAX`.
fn binomial(k: usize, r: usize) -> u128 {
    let mut c: u128 = 1;
    for i in 1..=r as u128 {
        // c·(k + i)/i stays an integer at every step (it is C(k + i, i)).
        c = match c.checked_mul(k as u128 + i) {
            Some(p) => p / i,
            None => return u128::MAX,
        };
    }
    c
}

/// β(k, r) = C(k + r, k): the most steps `k` slots reverse with `r` advances per step.
pub fn reversible_steps(slots: usize, repetitions: usize) -> u128 {
    binomial(slots, repetitions)
}

/// The smallest r with β(slots, r) ≥ n (0 for n ≤ 1); `slots` ≥ 1.
pub fn repetitions(n: usize, slots: usize) -> usize {
    let slots = slots.max(1);
    if n <= 1 {
        return 0;
    }
    if slots >= n - 1 {
        // β(k, 1) = k + 1 ≥ n.
        return 1;
    }
    // β(k, r + 1) = β(k, r)·(k + r + 1)/(r + 1), exact at every step: O(r), not O(r²)
    // (one slot needs r = n − 1).
    let mut r = 1;
    let mut beta = slots as u128 + 1;
    while beta < n as u128 {
        beta = match beta.checked_mul(slots as u128 + r as u128 + 1) {
            Some(p) => p / (r as u128 + 1),
            None => u128::MAX,
        };
        r += 1;
    }
    r
}

/// t(n, slots): the fewest untaped step advances that reverse `n` steps with `slots`
/// stored states (the initial state's slot included), the first forward sweep included.
pub fn min_recomputations(n: usize, slots: usize) -> usize {
    let slots = slots.max(1);
    let r = repetitions(n, slots);
    if r <= 1 {
        return n.saturating_sub(1);
    }
    // C(k + r, k + 1) = C(k + r, r − 1) = β(k + 1, r − 1).
    let c = reversible_steps(slots + 1, r - 1);
    (r as u128 * n as u128).saturating_sub(c) as usize
}

/// How far the optimal schedule advances from the base state (and stores the state there)
/// before reversing the rest with one slot fewer, for `n ≥ 2` steps and `slots ≥ 2`: any
/// m with β(k, r − 2) ≤ m ≤ β(k, r − 1) and β(k − 1, r − 1) ≤ n − m ≤ β(k − 1, r) keeps
/// the total at t(n, k); this is the smallest such m.
pub(crate) fn split(n: usize, slots: usize) -> usize {
    let r = repetitions(n, slots);
    let rest_max = reversible_steps(slots - 1, r);
    let mut m = (n as u128).saturating_sub(rest_max).max(1);
    if r >= 2 {
        m = m.max(reversible_steps(slots, r - 2));
    }
    (m as usize).clamp(1, n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One slot: r = n − 1 and t = n(n − 1)/2, from a million steps in O(n).
    #[test]
    fn one_slot_takes_the_closed_form_without_quadratic_work() {
        let n = 1_000_000usize;
        assert_eq!(repetitions(n, 1), n - 1);
        assert_eq!(min_recomputations(n, 1), n * (n - 1) / 2);
    }

    /// The schedule's cost by its recursion with [`split`].
    fn cost(n: usize, k: usize) -> usize {
        match (n, k) {
            (0 | 1, _) => 0,
            (_, 1) => n - 1 + cost(n - 1, 1),
            _ => {
                let m = split(n, k);
                m + cost(n - m, k - 1) + cost(m, k)
            }
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // the table is indexed by (slots, steps) on purpose
    fn formula_equals_the_optimum_by_dynamic_programming_and_split_reaches_it() {
        const N: usize = 120;
        const K: usize = 9;
        // best[k][n]: fewest advances reversing n steps with k slots.
        let mut best = vec![vec![0usize; N + 1]; K + 1];
        for n in 2..=N {
            best[1][n] = n * (n - 1) / 2;
        }
        for k in 2..=K {
            for n in 2..=N {
                best[k][n] = (1..n)
                    .map(|m| m + best[k - 1][n - m] + best[k][m])
                    .min()
                    .unwrap();
            }
        }
        for k in 1..=K {
            for n in 1..=N {
                assert_eq!(min_recomputations(n, k), best[k][n], "t({n}, {k})");
                assert_eq!(cost(n, k), best[k][n], "split's schedule at ({n}, {k})");
            }
        }
    }

    #[test]
    fn design_note_figures() {
        assert_eq!(repetitions(1000, 5), 8);
        assert_eq!(min_recomputations(1000, 5), 6284);
        assert_eq!(min_recomputations(1000, 44), 1954);
        assert_eq!(min_recomputations(94, 10), 204);
        // Enough slots for every step, or more: one sweep.
        assert_eq!(min_recomputations(7, 7), 6);
        assert_eq!(min_recomputations(7, usize::MAX), 6);
        assert_eq!(min_recomputations(1, 3), 0);
    }
}
