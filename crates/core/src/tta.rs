//! Test-time augmentation: an evaluation that averages the logits of several
//! views of each test image (mirror images, one-pixel shifts), as airbench's
//! `infer(..., tta_level)` does.

use crate::backend::{Backend, CropSpec, Flip, Padding, View, ViewMut};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::train::{DeviceDataset, PassStats};
use serde::{Deserialize, Serialize};

/// Which views an evaluation averages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tta {
    /// The image alone.
    #[default]
    None,
    /// The image and its mirror image, 1/2 each.
    Mirror,
    /// The mirror pair (1/2), and the mirror pairs of the image shifted by one
    /// pixel up-left and down-right with reflected edges (1/8 per view).
    MirrorTranslate,
}

/// One view: the crop that makes it (none: the image itself) and its weight.
struct TtaView {
    crop: Option<(usize, (usize, usize), Flip)>,
    weight: f32,
}

impl Tta {
    /// How many forward passes each image takes.
    pub fn views_per_image(self) -> usize {
        self.views().len()
    }

    fn views(self) -> Vec<TtaView> {
        let mirror = |w: f32| [TtaView { crop: None, weight: w }, TtaView { crop: Some((0, (0, 0), Flip::Always)), weight: w }];
        let shifted = |offset, w: f32| [Flip::Off, Flip::Always].map(|flip| TtaView { crop: Some((1, (offset, offset), flip)), weight: w });
        match self {
            Tta::None => vec![TtaView { crop: None, weight: 1.0 }],
            Tta::Mirror => mirror(0.5).into(),
            Tta::MirrorTranslate => mirror(0.25).into_iter().chain(shifted(0, 0.125)).chain(shifted(2, 0.125)).collect(),
        }
    }
}

/// Loss and accuracy of `model` on all of `data` in batches of `batch_size`,
/// from the weighted sum of the logits of `tta`'s views of each image.
pub fn evaluate_tta<B: Backend>(
    backend: &B,
    model: &mut Model<B>,
    data: &DeviceDataset<B>,
    batch_size: usize,
    tta: Tta,
) -> Result<PassStats> {
    if tta == Tta::None {
        return crate::train::evaluate(backend, model, data, batch_size);
    }
    if batch_size == 0 {
        return Err(Error::config("--eval-batch-size", "must be at least 1"));
    }
    let [c, h, w] = data.info.shape;
    let bs = batch_size.min(data.len.max(1));
    let classes = model.classes();
    let (mut x, mut y) = (backend.alloc::<f32>(bs * data.sample_len)?, backend.alloc::<u32>(bs)?);
    let mut view_x = backend.alloc::<f32>(bs * data.sample_len)?;
    let mut sum = backend.alloc::<f32>(bs * classes)?;
    let mut stats = backend.alloc::<f32>(2)?;
    let order = backend.upload(&(0..data.len as u32).collect::<Vec<_>>())?;
    let views = tta.views();
    for start in (0..data.len).step_by(bs) {
        let n = bs.min(data.len - start);
        let x_len = n * data.sample_len;
        // x: (n, c, h, w), y: (n)
        let spec = crate::backend::Gather::new(n, &data.info);
        let (images, labels) = (View::all(&data.images), View::all(&data.labels));
        backend.gather_batch(
            &spec,
            images,
            labels,
            View::range(&order, start, n)?,
            ViewMut::prefix(&mut x, x_len)?,
            ViewMut::prefix(&mut y, n)?,
        )?;
        backend.fill(ViewMut::prefix(&mut sum, n * classes)?, 0.0)?;
        for view in &views {
            let input = match view.crop {
                None => View::prefix(&x, x_len)?,
                Some((pad, fixed, flip)) => {
                    let spec = CropSpec { n, c, h, w, pad, padding: Padding::Reflect, flip, fixed: Some(fixed), cutout: 0, salt: 0 };
                    backend.crop_flip(&spec, View::all(&model.rng), View::prefix(&x, x_len)?, ViewMut::prefix(&mut view_x, x_len)?)?;
                    View::prefix(&view_x, x_len)?
                }
            };
            model.forward(backend, n, input)?;
            // sum (n, classes) += weight * logits
            backend.axpby(view.weight, model.logits(n)?, 1.0, ViewMut::prefix(&mut sum, n * classes)?)?;
        }
        let (logits, labels) = (View::prefix(&sum, n * classes)?, View::prefix(&y, n)?);
        backend.softmax_cross_entropy(n, classes, 0.0, logits, labels, 1.0, None, ViewMut::all(&mut stats))?;
    }
    let sums = backend.download(View::all(&stats))?;
    Ok(PassStats::from_sums(&sums, data.len))
}
