//! Learning-rate schedules and initializations.

use rr_core::backend::View;
use rr_core::model::{Init, Model, ModelConfig};
use rr_core::optim::{Schedule, ScheduleConfig};
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
