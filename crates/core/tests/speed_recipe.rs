//! The pieces of the CIFAR-10 speed recipe: the lookahead average, test-time
//! augmentation, alternating flips' pre-flipped half and the whitening layer.

use rand::{RngExt, SeedableRng};
use rr_core::backend::{View, ViewMut};
use rr_core::data::{Dataset, DatasetInfo};
use rr_core::lookahead::{Lookahead, LookaheadConfig};
use rr_core::model::{Model, ModelConfig};
use rr_core::train::DeviceDataset;
use rr_core::tta::{evaluate_tta, Tta};
use rr_core::{Backend, CpuBackend};

fn cpu() -> CpuBackend {
    CpuBackend::new(1).unwrap()
}

fn params(b: &CpuBackend, model: &Model<CpuBackend>) -> Vec<f32> {
    b.download(View::all(&model.params.data)).unwrap()
}

#[test]
fn lookahead_pulls_the_average_and_resets_the_weights() {
    let b = cpu();
    let mut model = Model::new(&b, &ModelConfig::Mlp { sizes: vec![6, 5, 3] }, &[1, 2, 3], 3, 4).unwrap();
    let start = params(&b, &model);
    let config = LookaheadConfig { every: 3, decay: 0.5, power: 1.0 };
    let mut la = Lookahead::new(&b, config, &mut model).unwrap();
    let moved: Vec<f32> = start.iter().map(|v| v + 1.0).collect();
    b.write(ViewMut::all(&mut model.params.data), &moved).unwrap();
    // Step 2 of 12 is not an update step: nothing changes.
    la.after_step(&b, &mut model, 2, 12).unwrap();
    assert_eq!(params(&b, &model), moved);
    // Step 6 of 12: decay 0.5 * (6/12) = 0.25: average = 0.25 * start + 0.75 * moved, and the weights become it.
    la.after_step(&b, &mut model, 6, 12).unwrap();
    let want: Vec<f32> = start.iter().map(|v| v + 0.75).collect();
    let got = params(&b, &model);
    assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-6), "{got:?} vs {want:?}");
    // The last step: decay 1, the weights go back to the average whatever they did since.
    b.write(ViewMut::all(&mut model.params.data), &start).unwrap();
    la.after_step(&b, &mut model, 12, 12).unwrap();
    assert_eq!(params(&b, &model), got);
    // Its state round-trips (resume).
    let saved = la.state(&b).unwrap();
    let mut other = Lookahead::new(&b, config, &mut model).unwrap();
    other.restore(&b, &saved).unwrap();
    assert_eq!(other.state(&b).unwrap(), saved);
    assert!(other.restore(&b, &saved[1..]).is_err());
}

fn random_images(n: usize, shape: [usize; 3], seed: u64) -> Dataset {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let len = n * shape.iter().product::<usize>();
    Dataset {
        images: (0..len).map(|_| r.random::<u8>()).collect(),
        labels: (0..n).map(|_| r.random_range(0..4u8)).collect(),
        len: n,
        shape,
    }
}

fn info(shape: [usize; 3]) -> DatasetInfo {
    DatasetInfo {
        name: "image-folder".into(),
        shape,
        classes: 4,
        class_names: (0..4).map(|i| format!("c{i}")).collect(),
        mean: vec![0.5; shape[0]],
        std: vec![0.25; shape[0]],
    }
}

/// Pixel (r, s) of the view: flipped, then shifted by (dy, dx) with reflected edges.
fn view_of(img: &[f32], [c, h, w]: [usize; 3], dy: i64, dx: i64, flip: bool) -> Vec<f32> {
    let reflect = |v: i64, n: usize| {
        let n = n as i64;
        let v = if v < 0 { -v } else { v };
        (if v >= n { 2 * n - 2 - v } else { v }) as usize
    };
    let mut out = vec![0.0; c * h * w];
    for (ch, r, s) in (0..c).flat_map(|ch| (0..h).flat_map(move |r| (0..w).map(move |s| (ch, r, s)))) {
        let s2 = if flip { w - 1 - s } else { s };
        out[(ch * h + r) * w + s] = img[(ch * h + reflect(r as i64 + dy, h)) * w + reflect(s2 as i64 + dx, w)];
    }
    out
}

#[test]
fn test_time_augmentation_averages_the_six_views() {
    let b = cpu();
    let shape = [3, 8, 8];
    let (data, info) = (random_images(20, shape, 9), info(shape));
    let mut model = Model::new(&b, &ModelConfig::Mlp { sizes: vec![192, 16, 4] }, &shape, 4, 2).unwrap();
    let device = DeviceDataset::upload(&b, &data, &info).unwrap();
    let got = evaluate_tta(&b, &mut model, &device, 7, Tta::MirrorTranslate).unwrap();
    // The same on the host: each view's logits, weighted 1/4 (plain, mirrored) and 1/8 (shifted pairs).
    let x = data.normalized(&info, 20);
    let views =
        [(0, 0, false, 0.25), (0, 0, true, 0.25), (-1, -1, false, 0.125), (-1, -1, true, 0.125), (1, 1, false, 0.125), (1, 1, true, 0.125)];
    let mut correct = 0;
    for (i, img) in x.chunks(192).enumerate() {
        let mut sum = [0f32; 4];
        for &(dy, dx, flip, weight) in &views {
            let v = b.upload(&view_of(img, shape, dy, dx, flip)).unwrap();
            model.forward(&b, 1, View::all(&v)).unwrap();
            let logits = b.download(model.logits(1).unwrap()).unwrap();
            sum.iter_mut().zip(&logits).for_each(|(s, l)| *s += weight * l);
        }
        let best = (0..4).max_by(|&a, &c| sum[a].total_cmp(&sum[c])).unwrap();
        correct += usize::from(best == data.labels[i] as usize);
    }
    assert_eq!(got.correct, correct, "accuracy with test-time augmentation");
    // Mirror-only and none are different evaluations of the same model.
    let plain = evaluate_tta(&b, &mut model, &device, 7, Tta::None).unwrap();
    let plain_ref = rr_core::train::evaluate(&b, &mut model, &device, 7).unwrap();
    assert_eq!((plain.correct, plain.loss), (plain_ref.correct, plain_ref.loss));
}

#[test]
fn alternating_flips_start_from_a_random_half_mirrored() {
    let shape = [3, 4, 5];
    let data = random_images(400, shape, 3);
    let flipped = data.with_random_half_flipped(11);
    let mirrored = |i: usize| {
        let (a, f) = (data.image(i), flipped.image(i));
        a.chunks(5).zip(f.chunks(5)).all(|(row, frow)| row.iter().rev().eq(frow.iter()))
    };
    let n = (0..400).filter(|&i| mirrored(i)).count();
    assert!((160..=240).contains(&n), "{n} of 400 mirrored");
    assert!((0..400).all(|i| mirrored(i) || data.image(i) == flipped.image(i)), "every image is itself or its mirror image");
    assert_eq!(flipped.labels, data.labels);
    assert_eq!(data.with_random_half_flipped(11).images, flipped.images, "the seed decides");
}

#[test]
fn whitening_is_set_from_data_for_the_speed_network_only() {
    let b = cpu();
    let shape = [3, 32, 32];
    let data = random_images(30, shape, 5);
    let config = ModelConfig::CifarSpeed { widths: [4, 8, 8] };
    let mut model = Model::new(&b, &config, &shape, 10, 1).unwrap();
    let entry = model.params.entries.iter().find(|e| e.name == "whiten.weight").unwrap().clone();
    assert_eq!(entry.shape, vec![24, 3, 2, 2]);
    let before = params(&b, &model);
    assert!(model.init_from_data(&b, &data.normalized(&info(shape), 30)).unwrap());
    let after = params(&b, &model);
    let w = &after[entry.offset..entry.offset + entry.len()];
    assert_ne!(w, &before[entry.offset..entry.offset + entry.len()]);
    // 2 d filters of d = 3 * 2 * 2 weights: the last d negate the first d.
    let half = entry.len() / 2;
    assert!(w[..half].iter().zip(&w[half..]).all(|(a, b)| *a == -*b), "the second half negates the first");
    // Nothing else moved; the 3x3 convs start with identity filters on their first C_in outputs.
    let outside = |i: usize| i < entry.offset || i >= entry.offset + entry.len();
    assert!((0..after.len()).filter(|&i| outside(i)).all(|i| after[i] == before[i]));
    let conv = model.params.entries.iter().find(|e| e.name == "block2.conv1.weight").unwrap();
    let filter = |o: usize| &after[conv.offset + o * 4 * 9..conv.offset + (o + 1) * 4 * 9];
    assert_eq!(filter(1)[9 + 4], 1.0);
    assert_eq!(filter(1).iter().filter(|v| **v != 0.0).count(), 1);
    let mut lenet = Model::new(&b, &ModelConfig::Lenet5, &[1, 28, 28], 10, 1).unwrap();
    assert!(!lenet.init_from_data(&b, &vec![0.0; 784]).unwrap());
}

#[test]
fn a_frozen_first_layer_gets_no_backward() {
    let b = cpu();
    let shape = [3, 32, 32];
    let mut model = Model::new(&b, &ModelConfig::CifarSpeed { widths: [2, 3, 4] }, &shape, 10, 1).unwrap();
    let n = 2;
    model.reserve_backward(&b, n).unwrap();
    let x = b.upload(&random_images(n, shape, 8).normalized(&info(shape), n)).unwrap();
    let dlogits = b.upload(&vec![0.1f32; n * 10]).unwrap();
    let whiten: Vec<(usize, usize)> =
        model.params.entries.iter().filter(|e| e.name.starts_with("whiten.")).map(|e| (e.offset, e.len())).collect();
    let in_whiten = |i: usize| whiten.iter().any(|&(o, l)| (o..o + l).contains(&i));
    let mut first: Option<Vec<f32>> = None;
    for frozen in [false, true] {
        let generation = model.generation();
        model.freeze(|name| frozen && name.starts_with("whiten."));
        assert_eq!(model.generation() != generation, frozen, "freezing changes the recorded step; not freezing does not");
        let nan = vec![f32::NAN; model.params.len()];
        b.write(ViewMut::all(&mut model.params.grads), &nan).unwrap();
        model.forward_train(&b, n, View::all(&x)).unwrap();
        model.backward(&b, n, View::all(&x), View::all(&dlogits)).unwrap();
        let grads = b.download(View::all(&model.params.grads)).unwrap();
        let entries = model.params.entries.clone();
        for e in entries.iter().filter(|e| !e.name.starts_with("whiten.")) {
            assert!(grads[e.offset..e.offset + e.len()].iter().all(|g| g.is_finite()), "{}: not written", e.name);
        }
        let whiten_written = (0..grads.len()).filter(|&i| in_whiten(i)).all(|i| grads[i].is_finite());
        assert_eq!(whiten_written, !frozen, "frozen = {frozen}");
        // What is skipped (the whitening layer, its GELU, the first conv's dx) changes no other gradient
        // beyond rounding (without dx the CPU sums dW in another order).
        match &first {
            None => first = Some(grads),
            Some(all) => {
                let worst = (0..grads.len())
                    .filter(|&i| !in_whiten(i))
                    .map(|i| (grads[i] - all[i]).abs() / all[i].abs().max(1e-3))
                    .fold(0f32, f32::max);
                assert!(worst < 1e-5, "gradients moved by up to {worst:e} (relative)");
            }
        }
    }
}

/// airbench94_muon's recipe: every parameter of the speed network is in one
/// of its groups (the six block convs on Muon), and it trains: an epoch of
/// random images keeps the loss finite, moves every trained parameter and
/// leaves the frozen ones as they were (Muon's step itself: tests/optim.rs).
#[test]
fn the_muon_recipe_covers_the_speed_network_and_trains() {
    use rr_core::train::{TrainConfig, Trainer};
    let b = cpu();
    let shape = [3, 32, 32];
    let recipe = TrainConfig::speed_run_muon();
    recipe.validate().unwrap();
    assert_eq!((recipe.epochs, recipe.batch_size, recipe.lookahead.is_none()), (8, 2000, true));
    let config = TrainConfig { batch_size: 16, epochs: 1, ..recipe };
    let mut model = Model::new(&b, &ModelConfig::CifarSpeed { widths: [2, 3, 4] }, &shape, 4, 1).unwrap();
    let data = random_images(64, shape, 3);
    model.init_from_data(&b, &data.normalized(&info(shape), 64)).unwrap();
    let entries = model.params.entries.clone();
    for e in &entries {
        assert!(config.param_groups.iter().any(|g| g.matches(&e.name)), "{} is in no group", e.name);
    }
    let muon: Vec<&str> = entries
        .iter()
        .filter(|e| config.param_groups.iter().find(|g| g.matches(&e.name)).unwrap().muon.is_some())
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(muon.len(), 6, "{muon:?}");
    assert!(muon.iter().all(|n| n.starts_with("block") && n.ends_with(".weight") && n.contains(".conv")), "{muon:?}");
    let before = params(&b, &model);
    let train = DeviceDataset::upload(&b, &config.augment.prepare_train(&data, 0), &info(shape)).unwrap();
    let mut trainer = Trainer::new(&b, model, config, train.len).unwrap();
    assert!(trainer.optimizer.uses_muon());
    let stats = trainer.train_epoch(&b, &train, 0, &mut |_, _| {}).unwrap();
    assert!(stats.loss.is_finite(), "loss {}", stats.loss);
    let after = params(&b, &trainer.model);
    for e in &entries {
        let w = &after[e.offset..e.offset + e.len()];
        let moved = (0..e.len()).any(|i| w[i] != before[e.offset + i]);
        let frozen = e.name == "whiten.weight" || e.name.contains(".norm") && e.name.ends_with(".weight");
        assert_eq!(moved, !frozen, "{}", e.name);
    }
}
