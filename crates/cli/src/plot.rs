//! Training plots: `curves.png` (loss, accuracy and learning rate per epoch,
//! and per step where the run has a steps.csv; the loss on a log scale when it
//! spans decades) and `confusion.png` (the test-set confusion matrix, errors
//! coloured against the largest error), drawn with plotters using a bundled
//! font (DejaVu Sans), so no system fonts are needed.

use crate::device::{self, RunStats, WithBackend};
use crate::{infer, CommonArgs};
use anyhow::{bail, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use rr_core::checkpoint;
use rr_core::data::{Dataset, DatasetInfo};
use rr_core::model::Model;
use rr_core::Backend;
use std::ops::Range;
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

/// One row of steps.csv (a line per training step): the columns a plot reads.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRow {
    pub epoch: f64,
    pub loss: f64,
    /// The batch's accuracy, a fraction (as in metrics.csv).
    pub accuracy: f64,
    pub lr: f64,
}

/// Reads steps.csv by column name (`step,epoch,loss,accuracy,lr,images_per_sec`);
/// `None` when the run has none.
pub fn read_steps(path: &Path) -> Result<Option<Vec<StepRow>>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').map(str::trim).collect();
    let col = |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("{}: no `{name}` column", path.display()));
    let cols = [col("epoch")?, col("loss")?, col("accuracy")?, col("lr")?];
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let v = |c: usize| -> Result<f64> {
            fields
                .get(c)
                .and_then(|f| f.trim().parse().ok())
                .with_context(|| format!("{}: line {}: bad value in column {}", path.display(), i + 2, header[c]))
        };
        rows.push(StepRow { epoch: v(cols[0])?, loss: v(cols[1])?, accuracy: v(cols[2])?, lr: v(cols[3])? });
    }
    Ok(Some(rows))
}

/// Where each step sits on the epoch axis, epoch `e` ending at `e`: a
/// fractional `epoch` column is taken as it is; whole epoch numbers (from 1,
/// or from 0) spread their steps evenly over the epoch that ends there.
pub fn step_positions(steps: &[StepRow]) -> Vec<f64> {
    if steps.iter().any(|s| s.epoch.fract() != 0.0) {
        return steps.iter().map(|s| s.epoch).collect();
    }
    let first = if steps.iter().any(|s| s.epoch == 0.0) { 1.0 } else { 0.0 };
    let mut out = Vec::with_capacity(steps.len());
    for group in steps.chunk_by(|a, b| a.epoch == b.epoch) {
        let end = group[0].epoch + first;
        out.extend((1..=group.len()).map(|k| end - 1.0 + k as f64 / group.len() as f64));
    }
    out
}

/// A loss axis is logarithmic when its (positive) values span more than two decades.
pub fn wants_log_scale(values: &[f64]) -> bool {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    lo > 0.0 && hi / lo > 100.0
}

/// An axis or point label: plain decimals, or `6e6` / `5e-4` for very large and small values.
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        let s = format!("{v:.1e}");
        s.replace(".0e", "e")
    } else {
        let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// A curve of a panel: per-epoch curves get markers and their last value in
/// the legend (so a one-epoch run shows labelled points); per-step ones are thin.
struct Series {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    per_step: bool,
}

impl Series {
    fn new(name: &'static str, color: RGBColor, points: Vec<(f64, f64)>, per_step: bool) -> Self {
        // Diverged runs may log inf or NaN: those points are left out.
        let points = points.into_iter().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        Series { name, color, points, per_step }
    }
}

struct Panel {
    title: &'static str,
    series: Vec<Series>,
    /// The y range starts at 0 (learning rate) or is clipped at 100 (accuracy).
    from_zero: bool,
    max: Option<f64>,
    log: bool,
}

impl Panel {
    /// The legend goes in the right-hand corner (upper or lower) that the curves cross least.
    fn legend_low(&self, x: &Range<f64>, (lo, hi): (f64, f64)) -> bool {
        let scale = |v: f64| if self.log { v.max(lo).ln() } else { v };
        let height = scale(hi) - scale(lo);
        let right = self.series.iter().flat_map(|s| &s.points).filter(|p| p.0 > x.start + 0.55 * (x.end - x.start));
        let (mut top, mut bottom) = (0, 0);
        for &(_, y) in right {
            let f = (scale(y) - scale(lo)) / height;
            top += (f > 0.65) as usize;
            bottom += (f < 0.35) as usize;
        }
        bottom < top
    }

    fn range(&self) -> (f64, f64) {
        let values = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        if self.log {
            return (lo / 1.6, hi * 1.6);
        }
        let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.05).max(1e-9);
        let lo = if self.from_zero { lo.min(0.0) } else { lo - pad };
        let hi = self.max.map_or(hi + pad, |m| (hi + pad).min(m));
        (lo, hi.max(lo + 1e-9))
    }
}

/// Loss, accuracy and learning rate against the epoch, side by side; with
/// `steps` (steps.csv), the loss and learning rate of every step as well.
pub fn draw_curves(path: &Path, rows: &[EpochRow], steps: Option<&[StepRow]>) -> Result<()> {
    font()?;
    let epochs = |f: fn(&EpochRow) -> f64| rows.iter().map(|r| (r.epoch, f(r))).collect::<Vec<_>>();
    let steps = steps.filter(|s| !s.is_empty());
    let at_steps = |f: fn(&StepRow) -> f64| steps.map(|s| step_positions(s).into_iter().zip(s.iter().map(f)).collect::<Vec<_>>());
    let mut loss =
        vec![Series::new("train", BLUE, epochs(|r| r.train_loss), false), Series::new("test", RED, epochs(|r| r.test_loss), false)];
    if let Some(points) = at_steps(|s| s.loss) {
        loss.insert(0, Series::new("train, per step", RGBColor(150, 170, 230), points, true));
    }
    let mut accuracy = vec![
        Series::new("train", BLUE, epochs(|r| 100.0 * r.train_acc), false),
        Series::new("test", RED, epochs(|r| 100.0 * r.test_acc), false),
    ];
    if let Some(points) = at_steps(|s| 100.0 * s.accuracy) {
        accuracy.insert(0, Series::new("train, per step", RGBColor(150, 170, 230), points, true));
    }
    let lr = match at_steps(|s| s.lr) {
        Some(points) => Series::new("lr, per step", GREEN, points, true),
        None => Series::new("lr", GREEN, epochs(|r| r.lr), false),
    };
    let loss_values: Vec<f64> = loss.iter().flat_map(|s| s.points.iter().map(|p| p.1)).collect();
    let panels = [
        Panel { title: "loss", log: wants_log_scale(&loss_values), series: loss, from_zero: false, max: None },
        Panel { title: "accuracy (%)", series: accuracy, from_zero: false, max: Some(100.0), log: false },
        Panel { title: "learning rate", series: vec![lr], from_zero: true, max: None, log: false },
    ];
    let last = rows.iter().map(|r| r.epoch).fold(1.0, f64::max);
    // Steps fill each epoch from its start; per-epoch points alone get half an epoch either side.
    let x = if steps.is_some() { 0.0..last * 1.03 } else { 0.5..last + 0.5 };
    let root = BitMapBackend::new(path, CURVES_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, panel) in root.split_evenly((1, 3)).iter().zip(&panels) {
        let (lo, hi) = panel.range();
        if panel.log {
            draw_panel(area, panel, x.clone(), (lo..hi).log_scale(), (lo, hi), rows.len())?;
        } else {
            draw_panel(area, panel, x.clone(), lo..hi, (lo, hi), rows.len())?;
        }
    }
    root.present().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn draw_panel<Y>(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: &Panel,
    x: Range<f64>,
    y: Y,
    range: (f64, f64),
    epochs: usize,
) -> Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let title = if panel.log { format!("{} (log scale)", panel.title) } else { panel.title.to_string() };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .margin_right(24)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x.clone(), y)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels((epochs + 1).min(12))
        .x_label_formatter(&|v| if v.fract().abs() < 1e-9 { format!("{v:.0}") } else { String::new() })
        .y_label_formatter(&|v| short_number(*v))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for s in &panel.series {
        let style = if s.per_step { s.color.stroke_width(1) } else { s.color.stroke_width(2) };
        // Per-epoch curves name their last value in the legend (a one-epoch run: labelled points).
        let label = match s.points.last() {
            Some(&(_, y)) if !s.per_step => format!("{}: {}", s.name, short_number(y)),
            _ => s.name.to_string(),
        };
        chart
            .draw_series(LineSeries::new(s.points.clone(), style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        if !s.per_step {
            chart.draw_series(s.points.iter().map(|&xy| Circle::new(xy, 4, s.color.filled())))?;
        }
    }
    let corner = if panel.legend_low(&x, range) { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight };
    chart
        .configure_series_labels()
        .position(corner)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Off-diagonal cells (errors): white at 0 to red at the largest error count.
fn error_color(f: f64) -> RGBColor {
    let f = f.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64, t: f64| (a + (b - a) * t).round() as u8;
    // white -> orange -> dark red
    let (from, to, t) = if f < 0.5 {
        ((255.0, 255.0, 255.0), (253.0, 174.0, 97.0), f * 2.0)
    } else {
        ((253.0, 174.0, 97.0), (165.0, 0.0, 38.0), f * 2.0 - 1.0)
    };
    RGBColor(mix(from.0, to.0, t), mix(from.1, to.1, t), mix(from.2, to.2, t))
}

/// Diagonal cells (correct): a neutral grey, darker for more.
fn correct_color(f: f64) -> RGBColor {
    let v = (235.0 - 60.0 * f.clamp(0.0, 1.0)).round() as u8;
    RGBColor(v, v, v)
}

/// `matrix[true][predicted]` as a table of counts: correct predictions (the
/// diagonal) in grey, errors coloured by count relative to the largest error,
/// with a colour bar for the errors.
pub fn draw_confusion(path: &Path, matrix: &[Vec<u32>], names: &[String], title: &str) -> Result<()> {
    let k = matrix.len() as i32;
    // Counts and class names are written in only where they fit.
    let legible = k <= 20;
    let cells = || matrix.iter().enumerate().flat_map(|(t, row)| row.iter().enumerate().map(move |(p, &c)| (t, p, c)));
    let max_error = cells().filter(|(t, p, _)| t != p).map(|c| c.2).max().unwrap_or(0);
    let max_correct = cells().filter(|(t, p, _)| t == p).map(|c| c.2).max().unwrap_or(0).max(1);
    font()?;
    let root = BitMapBackend::new(path, CONFUSION_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(CONFUSION_SIZE.0 - 110);
    let mut chart = ChartBuilder::on(&left)
        .caption(title, ("sans-serif", 20))
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
    for (t, p, count) in cells() {
        let (x, y) = (p as i32, k - 1 - t as i32);
        let (color, text_color) = if t == p {
            (correct_color(count as f64 / max_correct as f64), BLACK)
        } else {
            let f = count as f64 / max_error.max(1) as f64;
            let text = if count == 0 {
                RGBColor(190, 190, 190)
            } else if f > 0.6 {
                WHITE
            } else {
                BLACK
            };
            (error_color(f), text)
        };
        let cell = [(SegmentValue::Exact(x), SegmentValue::Exact(y)), (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1))];
        chart.draw_series(std::iter::once(Rectangle::new(cell.clone(), color.filled())))?;
        chart.draw_series(std::iter::once(Rectangle::new(cell, RGBColor(250, 250, 250).stroke_width(1))))?;
        if legible {
            let style = TextStyle::from(("sans-serif", 15).into_font()).color(&text_color).pos(Pos::new(HPos::Center, VPos::Center));
            chart.draw_series(std::iter::once(Text::new(
                count.to_string(),
                (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                style,
            )))?;
        }
    }
    draw_error_bar(&right, max_error)?;
    root.present().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The colour bar of the off-diagonal cells: 0 to the largest error count.
fn draw_error_bar(area: &DrawingArea<BitMapBackend<'_>, Shift>, max_error: u32) -> Result<()> {
    let top = max_error.max(1) as f64;
    let area = area.margin(45, 0, 0, 0).titled("errors", ("sans-serif", 16))?;
    let mut bar = ChartBuilder::on(&area)
        .margin_top(15)
        .margin_bottom(75)
        .margin_left(15)
        .margin_right(10)
        .right_y_label_area_size(45)
        .build_cartesian_2d(0.0..1.0, 0.0..top)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels((max_error as usize + 1).clamp(2, 8))
        .y_label_formatter(&|v| if v.fract() == 0.0 { format!("{v:.0}") } else { String::new() })
        .label_style(("sans-serif", 14))
        .draw()?;
    let steps = 100;
    bar.draw_series((0..steps).map(|i| {
        let (a, b) = (top * i as f64 / steps as f64, top * (i + 1) as f64 / steps as f64);
        Rectangle::new([(0.0, a), (1.0, b)], error_color((a + b) / 2.0 / top).filled())
    }))?;
    bar.draw_series(std::iter::once(Rectangle::new([(0.0, 0.0), (1.0, top)], BLACK.stroke_width(1))))?;
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
    // A damaged per-step log costs its curves, not the run's pictures.
    let steps = read_steps(&run_dir.join("steps.csv")).unwrap_or_else(|e| {
        eprintln!("note: {e:#}; drawing the per-epoch curves only");
        None
    });
    draw_curves(&run_dir.join("curves.png"), &read_metrics(&run_dir.join("metrics.csv"))?, steps.as_deref())?;
    let m = confusion(backend, model, test, info)?;
    let correct: u32 = (0..m.len()).map(|i| m[i][i]).sum();
    let total: u32 = m.iter().flatten().sum();
    let title =
        format!("test set: {:.2}% correct, {} errors (grey: correct)", 100.0 * correct as f64 / total.max(1) as f64, total - correct);
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
    args.common.target().check()?;
    crate::check_file(&args.run_dir.join("model.safetensors"), "the run folder's checkpoint")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_run(name: &str, metrics: &str, steps: Option<&str>) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rr-plot-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("metrics.csv"), metrics).unwrap();
        if let Some(steps) = steps {
            std::fs::write(dir.join("steps.csv"), steps).unwrap();
        }
        dir
    }

    /// Draws curves.png of a run folder; returns the image.
    fn curves_of(dir: &Path) -> image::RgbImage {
        let rows = read_metrics(&dir.join("metrics.csv")).unwrap();
        let steps = read_steps(&dir.join("steps.csv")).unwrap();
        draw_curves(&dir.join("curves.png"), &rows, steps.as_deref()).unwrap();
        let img = image::open(dir.join("curves.png")).unwrap().to_rgb8();
        std::fs::remove_dir_all(dir).unwrap();
        img
    }

    const HEADER: &str = "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_sec,lr\n";

    #[test]
    fn loss_axis_is_logarithmic_only_past_two_decades() {
        assert!(!wants_log_scale(&[0.33, 0.06, 0.027]));
        assert!(!wants_log_scale(&[2.3, 0.024]));
        assert!(wants_log_scale(&[2.3, 0.02]));
        assert!(wants_log_scale(&[6_000_000.0, 2.3, f64::NAN, f64::INFINITY]));
        // Zero or negative values cannot go on a log axis.
        assert!(!wants_log_scale(&[6_000_000.0, 0.0]));
        assert!(!wants_log_scale(&[]));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(short_number(6_000_000.0), "6e6");
        assert_eq!(short_number(0.0005), "5e-4");
        assert_eq!(short_number(0.02), "0.02");
        assert_eq!(short_number(0.1), "0.1");
        assert_eq!(short_number(98.71), "98.71");
        assert_eq!(short_number(0.0), "0");
        assert_eq!(short_number(1500.0), "1500");
        assert_eq!(short_number(10000.0), "1e4");
    }

    #[test]
    fn steps_fill_the_epoch_that_ends_at_their_number() {
        let step = |epoch: f64| StepRow { epoch, loss: 1.0, accuracy: 0.5, lr: 0.1 };
        let from_one = [1.0, 1.0, 1.0, 1.0, 2.0, 2.0].map(step);
        assert_eq!(step_positions(&from_one), vec![0.25, 0.5, 0.75, 1.0, 1.5, 2.0]);
        let from_zero = [0.0, 0.0, 1.0, 1.0].map(step);
        assert_eq!(step_positions(&from_zero), vec![0.5, 1.0, 1.5, 2.0]);
        let fractional = [0.5, 1.0, 1.5].map(step);
        assert_eq!(step_positions(&fractional), vec![0.5, 1.0, 1.5]);
    }

    #[test]
    fn one_epoch_and_diverged_runs_are_drawn() {
        let one = curves_of(&temp_run("one", &format!("{HEADER}1,0.41,0.88,0.15,0.955,9.0,6600,0.1\n"), None));
        let diverged =
            format!("{HEADER}1,2.1,0.3,2.2,0.2,9,6600,0.1\n2,6000000.0,0.1,inf,0.098,9,6600,0.1\n3,NaN,0.1,NaN,0.098,9,6600,0.1\n");
        let diverged = curves_of(&temp_run("diverged", &diverged, None));
        for img in [one, diverged] {
            assert_eq!(img.dimensions(), CURVES_SIZE);
            // The blue and red markers of the train and test curves are there.
            assert!(img.pixels().any(|p| p.0 == [0, 0, 255]) && img.pixels().any(|p| p.0 == [255, 0, 0]));
        }
    }

    #[test]
    fn steps_csv_draws_the_learning_rate_per_step() {
        let mut steps = String::from("step,epoch,loss,accuracy,lr,images_per_sec\n");
        for s in 1..=200 {
            let lr = 0.1 * (s as f64 / 200.0 * std::f64::consts::PI).sin();
            steps += &format!("{s},{},{},0.5,{lr},5000\n", 1 + (s - 1) / 100, 2.3 / s as f64);
        }
        let dir = temp_run("steps", &format!("{HEADER}1,0.5,0.85,0.2,0.94,5,6000,0.05\n2,0.2,0.94,0.1,0.97,5,6000,0.01\n"), Some(&steps));
        let img = curves_of(&dir);
        // The third panel holds the per-step learning rate: green, spread over its width.
        let third = CURVES_SIZE.0 * 2 / 3;
        let green: Vec<u32> = img.enumerate_pixels().filter(|(x, _, p)| *x > third && p.0 == [0, 255, 0]).map(|(x, _, _)| x).collect();
        let spread = green.iter().max().unwrap() - green.iter().min().unwrap();
        assert!(spread > CURVES_SIZE.0 / 5, "the learning rate spans {spread} pixels");
        let bad = temp_run("bad-steps", HEADER, Some("step,epoch,loss,accuracy\n1,1,0.5,0.5\n"));
        let err = read_steps(&bad.join("steps.csv")).unwrap_err().to_string();
        assert!(err.contains("steps.csv") && err.contains("`lr`"), "{err}");
        std::fs::remove_dir_all(bad).unwrap();
    }

    #[test]
    fn confusion_colours_errors_against_the_largest_error() {
        let dir = std::env::temp_dir().join(format!("rr-plot-confusion-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("confusion.png");
        let names: Vec<String> = (0..3).map(|c| c.to_string()).collect();
        // One error cell of 4 (the largest: darkest red) and one of 1.
        let m = vec![vec![990, 4, 0], vec![1, 995, 0], vec![0, 0, 1000]];
        draw_confusion(&path, &m, &names, "test").unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), CONFUSION_SIZE);
        let has = |c: RGBColor| img.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(error_color(1.0)) && has(error_color(0.25)), "error cells coloured by count");
        assert!(has(correct_color(1.0)), "diagonal in grey");
        // A perfect model and one of 100 classes are drawn too.
        draw_confusion(&path, &[vec![5, 0], vec![0, 5]], &names[..2], "perfect").unwrap();
        let big: Vec<Vec<u32>> = (0..100).map(|t| (0..100).map(|p| if t == p { 90 } else { (t + p) as u32 % 3 }).collect()).collect();
        let names: Vec<String> = (0..100).map(|c| c.to_string()).collect();
        draw_confusion(&path, &big, &names, "cifar100").unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
