//! Learning-rate schedules and initializations.

use rr_core::backend::{View, ViewMut};
use rr_core::model::{Init, Model, ModelConfig};
use rr_core::optim::{Muon, Optimizer, OptimizerConfig, ParamGroup, Schedule, ScheduleConfig};
use rr_core::{Backend, CpuBackend};

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1e-3)
}

#[test]
fn schedules_give_the_documented_rates() {
    let c = |schedule, warmup_epochs| ScheduleConfig { schedule, warmup_epochs };
    let constant = c(Schedule::Constant, 0.0);
    assert!(close(constant.lr(0.1, 0.0, 10), 0.1) && close(constant.lr(0.1, 9.9, 10), 0.1));
    // Step: x0.1 after epochs 3 and 4 (1-based), as MultiStepLR([3, 4]).
    let step = c(Schedule::Step { milestones: vec![3, 4], gamma: 0.1 }, 0.0);
    for (t, want) in [(0.0, 0.1), (2.9, 0.1), (3.0, 0.01), (3.5, 0.01), (4.0, 0.001), (5.5, 0.001)] {
        assert!(close(step.lr(0.1, t, 6), want), "step at {t}: {}", step.lr(0.1, t, 6));
    }
    // Cosine: base at 0, half at the middle, 0 at the end.
    let cos = c(Schedule::Cosine, 0.0);
    assert!(close(cos.lr(0.2, 0.0, 10), 0.2) && close(cos.lr(0.2, 5.0, 10), 0.1) && cos.lr(0.2, 10.0, 10).abs() < 1e-7);
    // One cycle: base/25 at 0, the base at pct_start, base/1e4 at the end.
    let one = c(Schedule::OneCycle { pct_start: 0.3 }, 0.0);
    assert!(close(one.lr(1.0, 0.0, 10), 0.04) && close(one.lr(1.0, 3.0, 10), 1.0) && close(one.lr(1.0, 10.0, 10), 1e-4));
    assert!(one.lr(1.0, 1.5, 10) > 0.04 && one.lr(1.0, 1.5, 10) < 1.0);
    // Warm-up scales linearly from 0 over its epochs.
    let warm = c(Schedule::Constant, 2.0);
    assert!(close(warm.lr(0.1, 0.0, 10), 0.0) && close(warm.lr(0.1, 1.0, 10), 0.05) && close(warm.lr(0.1, 2.0, 10), 0.1));
}

fn stats(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn initializations_have_the_right_spread() {
    let b = CpuBackend::new(1).unwrap();
    let config = ModelConfig::Mlp { sizes: vec![784, 400, 10] };
    for init in [Init::PyTorch, Init::He, Init::Xavier] {
        let model = Model::with_init(&b, &config, &[1, 28, 28], 10, 3, init).unwrap();
        let all = b.download(View::all(&model.params.data)).unwrap();
        let e = &model.params.entries[0]; // fc1.weight (400, 784)
        let w = &all[e.offset..e.offset + e.len()];
        let (mean, std) = stats(w);
        let want = match init {
            Init::PyTorch => (1.0 / 784f64).sqrt() / 3f64.sqrt(), // uniform in ±1/sqrt(fan_in)
            Init::He => (2.0 / 784f64).sqrt(),
            Init::Xavier => (6.0 / (784.0 + 400.0f64)).sqrt() / 3f64.sqrt(),
        };
        assert!(mean.abs() < 0.05 * want, "{init:?}: mean {mean}");
        assert!((std - want).abs() < 0.02 * want, "{init:?}: std {std}, want {want}");
        let bias = &all[model.params.entries[1].offset..][..400];
        if init != Init::PyTorch {
            assert!(bias.iter().all(|&v| v == 0.0), "{init:?}: biases start at 0");
        }
        // The same seed gives the same parameters.
        let again = Model::with_init(&b, &config, &[1, 28, 28], 10, 3, init).unwrap();
        assert_eq!(b.download(View::all(&again.params.data)).unwrap(), all);
    }
}

#[test]
fn triangular_schedule_rises_then_falls_linearly() {
    let tri = ScheduleConfig { schedule: Schedule::Triangular { start: 0.2, peak_at: 0.25, end: 0.05 }, warmup_epochs: 0.0 };
    for (t, want) in [(0.0, 0.2), (1.25, 0.6), (2.5, 1.0), (6.25, 0.525), (10.0, 0.05)] {
        assert!(close(tri.lr(1.0, t, 10), want), "at {t}: {} vs {want}", tri.lr(1.0, t, 10));
    }
    let bad = ScheduleConfig { schedule: Schedule::Triangular { start: 0.2, peak_at: 1.0, end: 0.05 }, warmup_epochs: 0.0 };
    assert!(bad.validate().unwrap_err().to_string().contains("peak_at"));
}

/// An MLP whose gradients are all 1, stepped once in `epoch` with SGD (lr 0.1,
/// weight decay 0.01, no momentum) and `groups`: the parameters before and after.
fn step_with_groups(groups: &[ParamGroup], epoch: usize) -> (Model<CpuBackend>, Vec<f32>, Vec<f32>) {
    let b = CpuBackend::new(1).unwrap();
    let mut model = Model::new(&b, &ModelConfig::Mlp { sizes: vec![6, 4, 3] }, &[1, 2, 3], 3, 1).unwrap();
    let mut opt = Optimizer::with_groups(&b, OptimizerConfig::sgd(0.1, 0.0, 0.01), &model.params, groups).unwrap();
    let before = b.download(View::all(&model.params.data)).unwrap();
    let ones = vec![1.0; model.params.len()];
    b.write(ViewMut::all(&mut model.params.grads), &ones).unwrap();
    opt.plan(&b, epoch, &[0.1]).unwrap();
    opt.prepare(&b, 0).unwrap();
    opt.step(&b, &mut model.params).unwrap();
    let after = b.download(View::all(&model.params.data)).unwrap();
    (model, before, after)
}

#[test]
fn parameter_groups_scale_freeze_and_stop_their_parameters() {
    let groups = [
        ParamGroup::new("fc1.weight", 0.0),
        ParamGroup { weight_decay: Some(0.0), ..ParamGroup::new("fc2.*", 10.0) },
        ParamGroup { train_epochs: Some(1), ..ParamGroup::new("*1.bias", 1.0) },
    ];
    for epoch in [0, 1] {
        let (model, before, after) = step_with_groups(&groups, epoch);
        for e in &model.params.entries {
            let (lr, wd) = match e.name.as_str() {
                "fc1.weight" => (0.0, 0.01),
                "fc1.bias" if epoch >= 1 => (0.0, 0.01),
                "fc2.weight" | "fc2.bias" => (1.0, 0.0),
                _ => (0.1, 0.01),
            };
            for i in e.offset..e.offset + e.len() {
                let want = before[i] - lr * (1.0 + wd * before[i]);
                assert!(close(after[i], want), "epoch {epoch}, {}: {} vs {want}", e.name, after[i]);
            }
        }
    }
}

#[test]
fn parameter_groups_are_checked() {
    let b = CpuBackend::new(1).unwrap();
    let model = Model::new(&b, &ModelConfig::Mlp { sizes: vec![6, 4, 3] }, &[1, 2, 3], 3, 1).unwrap();
    let err = |config: OptimizerConfig, groups: &[ParamGroup]| match Optimizer::with_groups(&b, config, &model.params, groups) {
        Ok(_) => panic!("accepted {groups:?}"),
        Err(e) => e.to_string(),
    };
    let sgd = OptimizerConfig::sgd(0.1, 0.9, 0.0);
    let e = err(sgd, &[ParamGroup::new("conv*.weight", 0.0)]);
    assert!(e.contains("conv*.weight") && e.contains("matches no parameter") && e.contains("fc1.weight"), "{e}");
    assert!(err(sgd, &[ParamGroup::new("fc1.bias", -1.0)]).contains("lr_scale"));
    let adam = OptimizerConfig { kind: rr_core::optim::OptimizerKind::Adam, ..sgd };
    assert!(err(adam, &[ParamGroup::new("fc1.bias", 2.0)]).contains("--optimizer sgd"));
}

// ---- Muon ------------------------------------------------------------------------

/// Muon's update of one weight on the host, in f64: the (Nesterov) momentum
/// update scaled to norm 1, then the quintic Newton-Schulz iterations on the
/// wide orientation of the matrix (airbench94_muon's `zeropower_via_newtonschulz5`).
fn host_muon_update(u: &[f64], rows: usize, cols: usize, steps: usize) -> Vec<f64> {
    let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt() + Muon::EPS as f64;
    let tall = rows > cols;
    let (r, c) = if tall { (cols, rows) } else { (rows, cols) };
    // x: (r, c), the transpose of the weight when it is tall.
    let mut x: Vec<f64> = (0..r * c).map(|i| if tall { u[(i % c) * cols + i / c] } else { u[i] } / norm).collect();
    let (a, b, cc) = Muon::COEFFICIENTS;
    let matmul = |p: &[f64], q: &[f64], n: usize, k: usize, m: usize| -> Vec<f64> {
        (0..n * m).map(|i| (0..k).map(|t| p[(i / m) * k + t] * q[t * m + i % m]).sum()).collect()
    };
    for _ in 0..steps {
        let xt: Vec<f64> = (0..c * r).map(|i| x[(i % r) * c + i / r]).collect();
        let gram = matmul(&x, &xt, r, c, r);
        let sq = matmul(&gram, &gram, r, r, r);
        let poly: Vec<f64> = gram.iter().zip(&sq).map(|(g, s)| b as f64 * g + cc as f64 * s).collect();
        let px = matmul(&poly, &x, r, r, c);
        x = x.iter().zip(&px).map(|(x, p)| a as f64 * x + p).collect();
    }
    if tall {
        (0..rows * cols).map(|i| x[(i % cols) * rows + i / cols]).collect()
    } else {
        x
    }
}

#[test]
fn muon_updates_each_weight_as_airbench_does_and_the_rest_with_sgd() {
    let b = CpuBackend::new(1).unwrap();
    // fc1.weight (5, 2) is tall, fc2.weight (3, 5) wide.
    let mut model = Model::new(&b, &ModelConfig::Mlp { sizes: vec![2, 5, 3] }, &[1, 1, 2], 3, 1).unwrap();
    let muon = Muon::airbench();
    let groups = [ParamGroup { muon: Some(muon), ..ParamGroup::new("*.weight", 2.0) }];
    let mut opt = Optimizer::with_groups(&b, OptimizerConfig::sgd(0.1, 0.0, 0.01), &model.params, &groups).unwrap();
    assert!(opt.uses_muon());
    let mut velocity = vec![0.0f64; model.params.len()];
    for step in 0..2 {
        let before = b.download(View::all(&model.params.data)).unwrap();
        let grads: Vec<f32> = (0..model.params.len()).map(|i| ((i * 7 + step * 3) % 11) as f32 / 5.0 - 1.0).collect();
        b.write(ViewMut::all(&mut model.params.grads), &grads).unwrap();
        opt.plan(&b, 0, &[0.1]).unwrap();
        opt.prepare(&b, 0).unwrap();
        opt.step(&b, &mut model.params).unwrap();
        let after = b.download(View::all(&model.params.data)).unwrap();
        for e in &model.params.entries {
            let range = e.offset..e.offset + e.len();
            if e.name.ends_with(".bias") {
                for i in range {
                    let want = before[i] - 0.1 * (grads[i] + 0.01 * before[i]);
                    assert!(close(after[i], want), "step {step}, {}: {} vs {want}", e.name, after[i]);
                }
                continue;
            }
            let (rows, cols) = (e.shape[0], e.len() / e.shape[0]);
            let mut update = Vec::new();
            for i in range.clone() {
                velocity[i] = grads[i] as f64 + muon.momentum as f64 * velocity[i];
                update.push(grads[i] as f64 + muon.momentum as f64 * velocity[i]);
            }
            let update = host_muon_update(&update, rows, cols, muon.steps);
            let norm = before[range.clone()].iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            for (k, i) in range.enumerate() {
                let want = before[i] as f64 * (rows as f64).sqrt() / norm - 0.2 * update[k];
                assert!(
                    (after[i] as f64 - want).abs() <= 1e-5 * want.abs().max(0.1),
                    "step {step}, {}[{k}]: {} vs {want}",
                    e.name,
                    after[i]
                );
            }
        }
    }
}

#[test]
fn muon_groups_are_checked() {
    let b = CpuBackend::new(1).unwrap();
    let model = Model::new(&b, &ModelConfig::Mlp { sizes: vec![6, 4, 3] }, &[1, 2, 3], 3, 1).unwrap();
    let err = |config: OptimizerConfig, group: ParamGroup| match Optimizer::with_groups(&b, config, &model.params, &[group]) {
        Ok(_) => panic!("accepted a Muon group"),
        Err(e) => e.to_string(),
    };
    let sgd = OptimizerConfig::sgd(0.1, 0.9, 0.0);
    let muon = |params: &str| ParamGroup { muon: Some(Muon::airbench()), ..ParamGroup::new(params, 1.0) };
    let e = err(sgd, muon("*.bias"));
    assert!(e.contains("fc1.bias") && e.contains("[4]") && e.contains("matrices"), "{e}");
    let adam = OptimizerConfig { kind: rr_core::optim::OptimizerKind::Adam, ..sgd };
    assert!(err(adam, muon("*.weight")).contains("--optimizer sgd"));
    assert!(err(sgd, ParamGroup { train_epochs: Some(2), ..muon("*.weight") }).contains("train_epochs"));
    let bad = ParamGroup { muon: Some(Muon { momentum: 1.5, ..Muon::airbench() }), ..ParamGroup::new("*.weight", 1.0) };
    assert!(err(sgd, bad).contains("momentum"));
}

#[test]
fn a_frozen_parameter_between_two_of_one_group_stays_frozen() {
    // fc1.bias lies between fc1.weight and fc2.weight, both in the default group.
    let (model, before, after) = step_with_groups(&[ParamGroup::new("fc1.bias", 0.0)], 0);
    for e in &model.params.entries {
        let unchanged = (e.offset..e.offset + e.len()).all(|i| after[i] == before[i]);
        assert_eq!(unchanged, e.name == "fc1.bias", "{}", e.name);
    }
}
