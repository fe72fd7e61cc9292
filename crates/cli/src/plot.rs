//! Training plots: `curves.png` (loss, accuracy and learning rate per epoch)
//! and `confusion.png` (the test-set confusion matrix), drawn with plotters
//! using a bundled font (DejaVu Sans), so no system fonts are needed.

use crate::device::{self, RunStats, WithBackend};
use crate::{infer, CommonArgs};
use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use rr_core::checkpoint;
use rr_core::data::{Dataset, DatasetInfo};
use rr_core::model::Model;
use rr_core::Backend;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const CURVES_SIZE: (u32, u32) = (1500, 450);
pub const CONFUSION_SIZE: (u32, u32) = (760, 720);

fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf")).is_ok()
    });
    if !ok {
        bail!("the bundled font could not be loaded");
    }
    Ok(())
}

/// One row of metrics.csv.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRow {
    pub epoch: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub lr: f64,
}

/// Reads metrics.csv by column name.
pub fn read_metrics(path: &Path) -> Result<Vec<EpochRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("{}: no `{name}` column", path.display()));
    let cols = [col("epoch")?, col("train_loss")?, col("train_acc")?, col("test_loss")?, col("test_acc")?, col("lr")?];
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let v = |c: usize| -> Result<f64> {
            fields
                .get(c)
                .and_then(|f| f.trim().parse().ok())
                .with_context(|| format!("{}: line {}: bad value in column {}", path.display(), i + 2, header[c]))
        };
        rows.push(EpochRow {
            epoch: v(cols[0])?,
            train_loss: v(cols[1])?,
            train_acc: v(cols[2])?,
            test_loss: v(cols[3])?,
            test_acc: v(cols[4])?,
            lr: v(cols[5])?,
        });
    }
    if rows.is_empty() {
        bail!("{}: no epochs recorded", path.display());
    }
    Ok(rows)
}

type Panel<'a> = (&'a str, Vec<(&'a str, RGBColor, Vec<(f64, f64)>)>);

/// Loss, accuracy and learning rate per epoch, side by side.
pub fn draw_curves(path: &Path, rows: &[EpochRow]) -> Result<()> {
    font()?;
    let pts = |f: fn(&EpochRow) -> f64| rows.iter().map(|r| (r.epoch, f(r))).collect::<Vec<_>>();
    let panels: [Panel; 3] = [
        ("loss", vec![("train", BLUE, pts(|r| r.train_loss)), ("test", RED, pts(|r| r.test_loss))]),
        ("accuracy (%)", vec![("train", BLUE, pts(|r| 100.0 * r.train_acc)), ("test", RED, pts(|r| 100.0 * r.test_acc))]),
        ("learning rate", vec![("lr", GREEN, pts(|r| r.lr))]),
    ];
    let root = BitMapBackend::new(path, CURVES_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let last = rows.iter().map(|r| r.epoch).fold(1.0, f64::max);
    for (area, (title, series)) in root.split_evenly((1, 3)).iter().zip(panels) {
        let values = series.iter().flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y));
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.05).max(1e-6);
        // Accuracy never goes past 100%.
        let top = if title.starts_with("accuracy") { (hi + pad).min(100.0) } else { hi + pad };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5..last + 0.5, (lo - pad)..top.max(lo - pad + 1e-6))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_labels(rows.len().min(12))
            .x_label_formatter(&|v| if v.fract().abs() < 1e-9 { format!("{v:.0}") } else { String::new() })
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
        for (name, color, p) in series {
            chart
                .draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(p.iter().map(|&xy| Circle::new(xy, 4, color.filled())))?;
        }
        chart.configure_series_labels().label_font(("sans-serif", 16)).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `matrix[true][predicted]` as a heat map with the counts written in.
pub fn draw_confusion(path: &Path, matrix: &[Vec<u32>], names: &[String], title: &str) -> Result<()> {
    let k = matrix.len() as i32;
    // Counts and class names are written in only where they fit.
    let legible = k <= 20;
    font()?;
    let root = BitMapBackend::new(path, CONFUSION_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(110)
        .build_cartesian_2d((0..k - 1).into_segmented(), (0..k - 1).into_segmented())?;
    // Rows top to bottom are true classes 0..k: segment y holds class k - 1 - y.
    let name = |v: &SegmentValue<i32>, flip: bool| match v {
        SegmentValue::CenterOf(i) if legible => names.get(if flip { k - 1 - *i } else { *i } as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("predicted")
        .y_desc("true")
        .x_labels(k.min(20) as usize)
        .y_labels(k.min(20) as usize)
        .x_label_formatter(&|v| name(v, false))
        .y_label_formatter(&|v| name(v, true))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for (t, row) in matrix.iter().enumerate() {
        let total = row.iter().sum::<u32>().max(1) as f64;
        for (p, &count) in row.iter().enumerate() {
            let f = count as f64 / total;
            let color = RGBColor((255.0 - 215.0 * f) as u8, (255.0 - 160.0 * f) as u8, 255);
            let (x, y) = (p as i32, k - 1 - t as i32);
            let cell = [(SegmentValue::Exact(x), SegmentValue::Exact(y)), (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1))];
            chart.draw_series(std::iter::once(Rectangle::new(cell, color.filled())))?;
            if !legible {
                continue;
            }
            let text_color = if f > 0.5 { WHITE } else { BLACK };
            let style = TextStyle::from(("sans-serif", 15).into_font()).color(&text_color).pos(Pos::new(HPos::Center, VPos::Center));
            chart.draw_series(std::iter::once(Text::new(
                count.to_string(),
                (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                style,
            )))?;
        }
    }
    root.present().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `matrix[true][predicted]` of `model` over `data`.
pub fn confusion<B: Backend>(backend: &B, model: &mut Model<B>, data: &Dataset, info: &DatasetInfo) -> Result<Vec<Vec<u32>>> {
    let images: Vec<Vec<u8>> = data.images.chunks_exact(data.sample_len()).map(<[u8]>::to_vec).collect();
    let probs = infer::probabilities(backend, model, info, &images)?;
    let mut m = vec![vec![0u32; info.classes]; info.classes];
    for (p, &label) in probs.iter().zip(&data.labels) {
        let predicted = infer::top_k(p, 1)[0].0;
        m[label as usize][predicted] += 1;
    }
    Ok(m)
}

/// Per-class accuracy and the confusion matrix as text.
pub fn confusion_text(m: &[Vec<u32>], names: &[String]) -> String {
    let mut out = String::from("per-class accuracy:\n");
    for (t, row) in m.iter().enumerate() {
        let total = row.iter().sum::<u32>();
        out += &format!("  {:>12}: {:6.2}% ({}/{})\n", names[t], 100.0 * row[t] as f64 / total.max(1) as f64, row[t], total);
    }
    out += "confusion matrix (rows: true class, columns: predicted):\n      ";
    for p in 0..m.len() {
        out += &format!("{p:>6}");
    }
    out += "\n";
    for (t, row) in m.iter().enumerate() {
        out += &format!("{t:>6}");
        for &c in row {
            out += &format!("{c:>6}");
        }
        out += "\n";
    }
    out
}

/// Draws both plots of a run folder from its metrics and checkpoint.
pub fn draw_run<B: Backend>(
    backend: &B,
    run_dir: &Path,
    model: &mut Model<B>,
    test: &Dataset,
    info: &DatasetInfo,
) -> Result<Vec<Vec<u32>>> {
    draw_curves(&run_dir.join("curves.png"), &read_metrics(&run_dir.join("metrics.csv"))?)?;
    let m = confusion(backend, model, test, info)?;
    let correct: u32 = (0..m.len()).map(|i| m[i][i]).sum();
    let total: u32 = m.iter().flatten().sum();
    let title = format!("test confusion matrix: {:.2}% correct", 100.0 * correct as f64 / total.max(1) as f64);
    draw_confusion(&run_dir.join("confusion.png"), &m, &info.class_names, &title)?;
    Ok(m)
}

#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// A run folder written by `train` (metrics.csv and model.safetensors)
    run_dir: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: PlotArgs) -> Result<()> {
    device::dispatch(args.common.target(), false, PlotJob(args)).map(|_| ())
}

struct PlotJob(PlotArgs);

impl WithBackend for PlotJob {
    fn run<B: Backend>(self, backend: &B) -> Result<RunStats> {
        let args = self.0;
        let ckpt_path = args.run_dir.join("model.safetensors");
        let (mut model, ckpt) = checkpoint::load_model(&ckpt_path, backend)?;
        let (info, data) = crate::dataset::for_checkpoint(&ckpt, &ckpt_path, &args.common.data_dir, false)?;
        draw_run(backend, &args.run_dir, &mut model, &data.test, &info)?;
        println!("wrote {} and {}", args.run_dir.join("curves.png").display(), args.run_dir.join("confusion.png").display());
        Ok(RunStats::default())
    }
}
