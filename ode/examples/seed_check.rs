//! Quick check on the seed problem: NFE, loss and gradient error against torchdiffeq's
//! `tight` reference, and median times of taped and adjoint forward+backward.
//!
//! `cargo run --release -p ode --example seed_check -- ../shared/anchors/problems/seed.json`

use std::time::Instant;

use ad_core::nalgebra::DMatrix;
use ad_core::{Result as TapeResult, Scalar, Tape, Var};
use ode::{odeint, odeint_adjoint, Dynamics, Options};
use serde_json::Value;

#[derive(Clone)]
struct Mlp {
    layers: usize,
}

impl<T: Scalar> Dynamics<T> for Mlp {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let mut x = h;
        for l in 0..self.layers {
            x = x.matmul_t(p[2 * l])?.add_row(p[2 * l + 1])?;
            if l + 1 < self.layers {
                x = x.tanh();
            }
        }
        Ok(x)
    }
}

fn mat(v: &Value) -> DMatrix<f64> {
    let rows: Vec<Vec<f64>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    DMatrix::from_fn(rows.len(), rows[0].len(), |i, j| rows[i][j])
}
fn row(v: &Value) -> DMatrix<f64> {
    let r: Vec<f64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    DMatrix::from_row_slice(1, r.len(), &r)
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or("../shared/anchors/problems/seed.json".into());
    let p: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let layers = p["model"]["layers"].as_array().unwrap();
    let mut params = Vec::new();
    for l in layers {
        params.push(mat(&l["weight"]));
        params.push(row(&l["bias"]));
    }
    let h0 = mat(&p["h0"]);
    let t = row(&p["t"]);
    let f = Mlp {
        layers: layers.len(),
    };
    let opts = Options::default().tolerances(
        p["solver"]["rtol"].as_f64().unwrap(),
        p["solver"]["atol"].as_f64().unwrap(),
    );
    let tight = &p["reference"]["tight"];
    let ref_h0 = mat(&tight["grad_h0"]);
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for adjoint in [false, true] {
        let mut times = Vec::new();
        let mut report = String::new();
        let tape = Tape::<f64>::new();
        for rep in 0..reps {
            tape.reset().unwrap();
            let start = Instant::now();
            let h0v = tape.var(h0.clone());
            let tv = tape.var(t.clone());
            let pv: Vec<_> = params.iter().map(|m| tape.var(m.clone())).collect();
            let sol = if adjoint {
                odeint_adjoint(&tape, &f, h0v, tv, &pv, &opts)
            } else {
                odeint(&tape, &f, h0v, tv, &pv, &opts)
            }
            .unwrap();
            let loss = sol.last().sum();
            let stats = tape.stats();
            let g = tape.backward(loss).unwrap();
            times.push(start.elapsed().as_secs_f64() * 1e3);
            if rep == 0 {
                let gh0 = g.get(h0v).unwrap();
                let mut max_theta: f64 = 0.0;
                for (i, l) in layers.iter().enumerate() {
                    let rl = &tight["grad_layers"][i];
                    max_theta =
                        max_theta.max((g.get(pv[2 * i]).unwrap() - mat(&rl["weight"])).abs().max());
                    max_theta = max_theta.max(
                        (g.get(pv[2 * i + 1]).unwrap() - row(&rl["bias"]))
                            .abs()
                            .max(),
                    );
                    let _ = l;
                }
                let gt = g.get(tv).unwrap();
                let ref_t = row(&tight["grad_t"]);
                if std::env::var("SHOW_T").is_ok() {
                    println!(
                        "mine t: {:?}\nref  t: {:?}",
                        &gt.as_slice()[..3],
                        &ref_t.as_slice()[..3]
                    );
                    println!("last mine {} ref {}", gt[(0, 49)], ref_t[(0, 49)]);
                }
                report = format!(
                    "loss {:.12} (ref {:.12}) nfe fwd {} acc {} rej {} bwd {:?}; |dh0 err| {:.2e}, |dθ err| {:.2e}, |dt err| {:.2e}; nodes {} held {} B",
                    loss.scalar_value().unwrap(),
                    tight["loss"].as_f64().unwrap(),
                    sol.stats.nfe, sol.stats.accepted, sol.stats.rejected,
                    sol.backward_stats(),
                    (gh0 - &ref_h0).abs().max(),
                    max_theta,
                    (gt - ref_t).abs().max(),
                    stats.nodes, stats.held_bytes
                );
            }
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{}: median {:.3} ms (min {:.3}) | {}",
            if adjoint { "adjoint" } else { "taped" },
            times[reps / 2],
            times[0],
            report
        );
    }
}
