//! Dynamic loss scaling in the trainer, on the CPU in fp32 (the logic does not
//! depend on the precision): a scale so large that gradients overflow makes
//! steps that change no bit of the parameters or the optimizer state and halve
//! the scale until training proceeds and learns; a power-of-two scale that
//! never overflows changes no bit of training and grows on schedule.

use rr_core::data::{Dataset, Mnist, Splits};
use rr_core::loss_scale::{LossScaleStatus, LossScaling};
use rr_core::model::{Model, ModelConfig};
use rr_core::optim::{OptimizerConfig, OptimizerKind, Schedule, ScheduleConfig};
use rr_core::train::{evaluate, DeviceDataset, TrainConfig, Trainer};
use rr_core::{Backend, CpuBackend, View};
use std::path::Path;
use std::sync::OnceLock;

fn mnist() -> &'static Splits {
    static DATA: OnceLock<Splits> = OnceLock::new();
    DATA.get_or_init(|| Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap())
}

fn first(data: &Dataset, n: usize) -> Dataset {
    let mut d = data.clone();
    d.truncate(n);
    d
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// LeNet-5 with Adam at a constant rate, scaled as `loss_scale` says.
fn trainer(b: &CpuBackend, batch_size: usize, loss_scale: LossScaling, train_len: usize) -> Trainer<CpuBackend> {
    let config = TrainConfig {
        epochs: 1,
        batch_size,
        optimizer: OptimizerConfig { kind: OptimizerKind::Adam, lr: 2e-3, ..OptimizerConfig::sgd(0.0, 0.0, 0.0) },
        schedule: ScheduleConfig { schedule: Schedule::Constant, warmup_epochs: 0.0 },
        loss_scale,
        ..TrainConfig::default()
    };
    let model = Model::new(b, &ModelConfig::Lenet5, &[1, 28, 28], 10, config.seed).unwrap();
    Trainer::new(b, model, config, train_len).unwrap()
}

/// Parameters and optimizer state, as bits.
fn snapshot(b: &CpuBackend, t: &Trainer<CpuBackend>) -> (Vec<u32>, Vec<u32>) {
    (bits(&b.download(View::all(&t.model.params.data)).unwrap()), bits(&t.optimizer.state(b).unwrap()))
}

fn status(b: &CpuBackend, t: &Trainer<CpuBackend>) -> LossScaleStatus {
    t.loss_scaler.as_ref().expect("loss scaling is on").status(b).unwrap()
}

/// `count` one-step epochs over `batch`, each of which must be skipped: every
/// bit of the parameters and the optimizer state stays, the scale halves.
fn skipped_steps(b: &CpuBackend, t: &mut Trainer<CpuBackend>, batch: &DeviceDataset<CpuBackend>, epoch: &mut usize, count: usize) {
    for _ in 0..count {
        let (before, scale) = (snapshot(b, t), status(b, t).scale);
        t.train_epoch(b, batch, *epoch, &mut |_, _| {}).unwrap();
        *epoch += 1;
        assert_eq!(t.loss_scaler.as_ref().and_then(|s| s.last_epoch()).unwrap().skipped, 1, "the step was skipped");
        assert_eq!(snapshot(b, t), before, "a skipped step changes no bit of the parameters or the optimizer state");
        assert_eq!(status(b, t).scale, scale * 0.5, "the scale backs off");
    }
}

#[test]
fn overflowed_steps_change_nothing_and_training_then_learns() {
    let b = CpuBackend::new(2).unwrap();
    let data = mnist();
    let huge = 2f32.powi(127);
    let mut t = trainer(&b, 64, LossScaling::Dynamic { init: huge, growth_interval: 2000 }, 12_000);
    // LeNet's gradients stay below 2^-4 on MNIST, so no scale overflows them in f32 (the
    // largest is 2^127). A batch normalized with a std 1000 times too small (values up to
    // 2800) has gradients near 2^8: scaled by 2^125 or more they are infinite.
    let mut loud_info = data.info.clone();
    loud_info.std.iter_mut().for_each(|s| *s /= 1000.0);
    let loud = DeviceDataset::upload(&b, &first(&data.train, 64), &loud_info).unwrap();
    let batch = DeviceDataset::upload(&b, &first(&data.train, 64), &data.info).unwrap();
    let mut epoch = 0;
    skipped_steps(&b, &mut t, &loud, &mut epoch, 3);
    assert_eq!(status(&b, &t), LossScaleStatus { scale: 2f32.powi(124), good_steps: 0, skipped: 3 });
    // A real step at the backed-off scale, then skipped ones with Adam's moments in the state.
    let before = snapshot(&b, &t);
    t.train_epoch(&b, &batch, epoch, &mut |_, _| {}).unwrap();
    epoch += 1;
    assert_ne!(snapshot(&b, &t).0, before.0, "a finite step updates the parameters");
    assert!(snapshot(&b, &t).1.iter().any(|&v| v != 0), "and fills the moment estimates");
    assert_eq!(status(&b, &t), LossScaleStatus { scale: 2f32.powi(124), good_steps: 1, skipped: 3 });
    let scaler = t.loss_scaler.as_mut().unwrap();
    scaler.restore(&b, LossScaleStatus { scale: huge, good_steps: 1, skipped: 3 }).unwrap();
    skipped_steps(&b, &mut t, &loud, &mut epoch, 2);
    // Then two epochs of ordinary images from scale 2^125 learn. (Early in training
    // LeNet's gradients spike to about 2^2, so a step or two may overflow even so:
    // each halves the scale, and the epochs' counts say how many.)
    let train = DeviceDataset::upload(&b, &first(&data.train, 12_000), &data.info).unwrap();
    let mut skipped = 0;
    let mut stats = None;
    for e in epoch..epoch + 2 {
        stats = Some(t.train_epoch(&b, &train, e, &mut |_, _| {}).unwrap());
        skipped += t.loss_scaler.as_ref().unwrap().last_epoch().unwrap().skipped;
    }
    let stats = stats.unwrap();
    let end = status(&b, &t);
    assert_eq!((end.scale, end.skipped), (2f32.powi(125 - skipped as i32), 5 + skipped), "every skip halved the scale and was counted");
    let test = DeviceDataset::upload(&b, &first(&data.test, 2000), &data.info).unwrap();
    let result = evaluate(&b, &mut t.model, &test, 1000).unwrap();
    eprintln!(
        "after 5 skipped steps: train loss {:.4}, test accuracy {:.2}% ({skipped} of {} steps skipped from 2^125)",
        stats.loss,
        100.0 * result.accuracy,
        2 * t.steps_per_epoch(train.len)
    );
    assert!(skipped <= 5, "{skipped} steps skipped");
    assert!(result.accuracy >= 0.95, "test accuracy {:.2}% < 95%", 100.0 * result.accuracy);
}

#[test]
fn a_power_of_two_scale_changes_no_bit_and_grows_after_its_interval() {
    let b = CpuBackend::new(2).unwrap();
    let data = mnist();
    // 12 steps of 32 (the last one short: 20 images).
    let train = DeviceDataset::upload(&b, &first(&data.train, 11 * 32 + 20), &data.info).unwrap();
    let mut plain = trainer(&b, 32, LossScaling::Off, train.len);
    let mut scaled = trainer(&b, 32, LossScaling::Dynamic { init: 1024.0, growth_interval: 5 }, train.len);
    assert!(plain.loss_scaler.is_none());
    let a = plain.train_epoch(&b, &train, 0, &mut |_, _| {}).unwrap();
    let s = scaled.train_epoch(&b, &train, 0, &mut |_, _| {}).unwrap();
    // Scaling by 2^k and back is exact in binary floating point: the same run, bit for bit.
    assert_eq!(snapshot(&b, &scaled), snapshot(&b, &plain), "loss scaling by a power of two changed the training");
    assert_eq!(a, s);
    // Grown after steps 5 and 10; 2 finite steps since.
    assert_eq!(status(&b, &scaled), LossScaleStatus { scale: 4096.0, good_steps: 2, skipped: 0 });
    let epoch = scaled.loss_scaler.as_ref().unwrap().last_epoch().unwrap();
    assert_eq!((epoch.scale, epoch.skipped), (4096.0, 0));
}

/// With parameter groups the optimizer reads one row of step values per group:
/// the skip flag reaches every row.
#[test]
fn skip_if_holds_every_parameter_group() {
    use rr_core::optim::{Optimizer, ParamGroup};
    use rr_core::ViewMut;
    let b = CpuBackend::new(1).unwrap();
    let mut model = Model::new(&b, &ModelConfig::Lenet5, &[1, 28, 28], 10, 0).unwrap();
    let n = model.params.len();
    b.write(ViewMut::all(&mut model.params.grads), &vec![1.0; n]).unwrap();
    let groups = [ParamGroup::new("conv1.*", 2.0), ParamGroup { weight_decay: Some(0.0), ..ParamGroup::new("fc3.*", 0.5) }];
    let mut opt = Optimizer::with_groups(&b, OptimizerConfig::sgd(0.1, 0.9, 5e-4), &model.params, &groups).unwrap();
    opt.plan(&b, 0, &[0.1, 0.1]).unwrap();
    let (set, clear) = (b.upload(&[1.0f32]).unwrap(), b.upload(&[0.0f32]).unwrap());
    let before = b.download(View::all(&model.params.data)).unwrap();
    opt.prepare(&b, 0).unwrap();
    opt.skip_if(&b, View::all(&set)).unwrap();
    opt.step(&b, &mut model.params).unwrap();
    assert_eq!(bits(&b.download(View::all(&model.params.data)).unwrap()), bits(&before), "a skipped step changes no group");
    assert!(opt.state(&b).unwrap().iter().all(|&v| v == 0.0), "nor the momentum");
    opt.prepare(&b, 1).unwrap();
    opt.skip_if(&b, View::all(&clear)).unwrap();
    opt.step(&b, &mut model.params).unwrap();
    let after = b.download(View::all(&model.params.data)).unwrap();
    for e in &model.params.entries {
        let changed = (e.offset..e.offset + e.len()).all(|i| after[i] != before[i]);
        assert!(changed, "`{}` was not updated by the step that was not skipped", e.name);
    }
}

/// Muon's momentum cannot skip an overflowed step: a run that scales its loss refuses Muon groups.
#[test]
fn loss_scaling_refuses_muon_groups() {
    use rr_core::optim::{Muon, ParamGroup};
    let b = CpuBackend::new(1).unwrap();
    let model = Model::new(&b, &ModelConfig::Lenet5, &[1, 28, 28], 10, 0).unwrap();
    let groups = vec![ParamGroup { muon: Some(Muon::airbench()), ..ParamGroup::new("*.weight", 1.0) }];
    let config = TrainConfig { param_groups: groups, loss_scale: LossScaling::dynamic(), ..TrainConfig::default() };
    let err = Trainer::new(&b, model, config, 1000).err().expect("Muon with loss scaling must be refused");
    let msg = err.to_string();
    assert!(msg.contains("Muon") && msg.contains("fp16") && msg.contains("bf16"), "{msg}");
}

/// The loss scale is part of what a resume restores: a run saved with one
/// resumes at its scale, step counts included; a resume without loss scaling
/// drops it; a state saved without one starts the scale afresh; a corrupt
/// one is refused by name.
#[test]
fn the_loss_scale_survives_a_resume() {
    let b = CpuBackend::new(2).unwrap();
    let data = mnist();
    let train = DeviceDataset::upload(&b, &first(&data.train, 7 * 32), &data.info).unwrap();
    let scaling = LossScaling::Dynamic { init: 1024.0, growth_interval: 5 };
    let mut t = trainer(&b, 32, scaling, train.len);
    t.train_epoch(&b, &train, 0, &mut |_, _| {}).unwrap();
    let saved = status(&b, &t);
    assert_eq!((saved.scale, saved.good_steps), (2048.0, 2), "grown once after 5 of 7 steps");
    let state = t.state(&b).unwrap();
    let steps = t.optimizer.steps;
    let mut resumed = trainer(&b, 32, scaling, train.len);
    resumed.restore(&b, &state, steps).unwrap();
    assert_eq!(status(&b, &resumed), saved);
    assert_eq!(snapshot(&b, &resumed).1, snapshot(&b, &t).1, "the optimizer state too");
    let mut plain = trainer(&b, 32, LossScaling::Off, train.len);
    plain.restore(&b, &state, steps).unwrap();
    assert_eq!(snapshot(&b, &plain).1, snapshot(&b, &t).1);
    let without_scale = &state[..state.len() - 3];
    let mut fresh = trainer(&b, 32, scaling, train.len);
    fresh.restore(&b, without_scale, steps).unwrap();
    assert_eq!(status(&b, &fresh), LossScaleStatus { scale: 1024.0, good_steps: 0, skipped: 0 });
    let mut corrupt = state.clone();
    let at = corrupt.len() - 3;
    corrupt[at] = f32::NAN;
    let err = trainer(&b, 32, scaling, train.len).restore(&b, &corrupt, steps).unwrap_err().to_string();
    assert!(err.contains("loss scale") && err.contains("NaN"), "{err}");
    let err = trainer(&b, 32, scaling, train.len).restore(&b, &state[..state.len() - 1], steps).unwrap_err().to_string();
    assert!(err.contains("trainer restore"), "{err}");
}
