//! Optimizers and learning-rate schedules. An optimizer updates the whole
//! [`ParamStore`] in one backend call; the per-step values (learning rate,
//! Adam's bias corrections) go to a small device buffer before each step, so a
//! recorded (graph-replayed) step stays valid when they change.

use crate::backend::{Backend, Gemm, Hyper, UpdateRule, View, ViewMut};
use crate::error::{Error, Result};
use crate::model::ParamStore;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    AdamW,
}

impl OptimizerKind {
    /// What its state holds, for messages.
    pub fn state_name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "SGD momentum buffer",
            OptimizerKind::Adam => "Adam moment estimates",
            OptimizerKind::AdamW => "AdamW moment estimates",
        }
    }
}

/// Optimizer hyper-parameters (the ones that do not change during training).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl OptimizerConfig {
    pub fn sgd(lr: f32, momentum: f32, weight_decay: f32) -> Self {
        OptimizerConfig { kind: OptimizerKind::Sgd, lr, momentum, nesterov: false, weight_decay, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = |v: f32| v.is_finite() && v >= 0.0;
        if !(ok(self.lr) && self.lr > 0.0) {
            return Err(Error::config("--lr", format!("must be a positive number, got {}", self.lr)));
        }
        if !(ok(self.momentum) && self.momentum < 1.0) {
            return Err(Error::config("--momentum", format!("must be in [0, 1), got {}", self.momentum)));
        }
        if self.nesterov && (self.kind != OptimizerKind::Sgd || self.momentum == 0.0) {
            return Err(Error::config("--nesterov", "needs --optimizer sgd and a momentum above 0"));
        }
        if !ok(self.weight_decay) {
            return Err(Error::config("--weight-decay", format!("must be >= 0, got {}", self.weight_decay)));
        }
        for (name, b) in [("--beta1", self.beta1), ("--beta2", self.beta2)] {
            if !(ok(b) && b < 1.0) {
                return Err(Error::config(name, format!("must be in [0, 1), got {b}")));
            }
        }
        if !(ok(self.eps) && self.eps > 0.0) {
            return Err(Error::config("--eps", format!("must be a positive number, got {}", self.eps)));
        }
        Ok(())
    }

    pub fn rule(&self) -> UpdateRule {
        match self.kind {
            OptimizerKind::Sgd => UpdateRule::Sgd { momentum: self.momentum, nesterov: self.nesterov, weight_decay: self.weight_decay },
            OptimizerKind::Adam | OptimizerKind::AdamW => UpdateRule::Adam {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
                decoupled: self.kind == OptimizerKind::AdamW,
            },
        }
    }
}

/// Learning rate over training, as a multiple of the base rate, with an
/// optional linear warm-up. `t` is the (fractional) epoch: 0 at the start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` at each epoch in `milestones` (1-based epoch numbers, as PyTorch's MultiStepLR).
    Step {
        milestones: Vec<usize>,
        gamma: f32,
    },
    /// Cosine from the base rate down to 0 at the end of training.
    Cosine,
    /// One cycle: up from base/25 to base over the first `pct_start` of training, then cosine down to base/1e4.
    OneCycle {
        pct_start: f32,
    },
    /// Linear up from `start` to 1 over the first `peak_at` of training, then
    /// linear down to `end` (airbench's triangular schedule: 0.2, 0.23, 0.07).
    Triangular {
        start: f32,
        peak_at: f32,
        end: f32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    pub schedule: Schedule,
    /// Linear warm-up from 0 over this many epochs (0: none).
    pub warmup_epochs: f32,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig { schedule: Schedule::Constant, warmup_epochs: 0.0 }
    }
}

impl ScheduleConfig {
    /// The learning rate at fractional epoch `t` of `epochs`.
    pub fn lr(&self, base: f32, t: f64, epochs: usize) -> f32 {
        let total = epochs.max(1) as f64;
        let progress = (t / total).clamp(0.0, 1.0);
        let cosine = |from: f64, to: f64, x: f64| to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * x.clamp(0.0, 1.0)).cos());
        let factor = match &self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| (m as f64) <= t.floor()).count();
                (*gamma as f64).powi(passed as i32)
            }
            Schedule::Cosine => cosine(1.0, 0.0, progress),
            Schedule::OneCycle { pct_start } => {
                let up = (*pct_start as f64).clamp(1e-6, 1.0);
                if progress < up {
                    cosine(1.0 / 25.0, 1.0, progress / up)
                } else {
                    cosine(1.0, 1.0 / 1e4, (progress - up) / (1.0 - up).max(1e-12))
                }
            }
            Schedule::Triangular { start, peak_at, end } => {
                let (start, peak, end) = (*start as f64, (*peak_at as f64).clamp(1e-6, 1.0), *end as f64);
                if progress < peak {
                    start + (1.0 - start) * progress / peak
                } else {
                    1.0 + (end - 1.0) * (progress - peak) / (1.0 - peak).max(1e-12)
                }
            }
        };
        let warm = if self.warmup_epochs > 0.0 { (t / self.warmup_epochs as f64).min(1.0) } else { 1.0 };
        (base as f64 * factor * warm) as f32
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return Err(Error::config("--warmup-epochs", format!("must be >= 0, got {}", self.warmup_epochs)));
        }
        match &self.schedule {
            Schedule::Step { gamma, .. } if !(gamma.is_finite() && *gamma > 0.0) => {
                Err(Error::config("--gamma", format!("must be positive, got {gamma}")))
            }
            Schedule::OneCycle { pct_start } if !(*pct_start > 0.0 && *pct_start < 1.0) => {
                Err(Error::config("--pct-start", format!("must be in (0, 1), got {pct_start}")))
            }
            Schedule::Triangular { start, peak_at, end }
                if !(*peak_at > 0.0 && *peak_at < 1.0 && start.is_finite() && *start >= 0.0 && end.is_finite() && *end >= 0.0) =>
            {
                Err(Error::config(
                    "triangular schedule",
                    format!("needs peak_at in (0, 1) and start, end >= 0, got {start}, {peak_at}, {end}"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Parameters that train differently from the rest (PyTorch's parameter
/// groups), chosen by state-dict name: `*` in `params` matches any run of
/// characters (`"*norm*.bias"`), and the first group that matches a parameter
/// is its group. Parameters no group matches use the optimizer's own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamGroup {
    pub params: String,
    /// Learning-rate multiplier; 0 freezes the parameters (they are never updated).
    #[serde(default = "one")]
    pub lr_scale: f32,
    /// Weight decay of this group (default: the optimizer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f32>,
    /// Trains for this many epochs, then stays frozen (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_epochs: Option<usize>,
    /// Updates this group's weights with [`Muon`] instead of the optimizer's rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muon: Option<Muon>,
}

/// Muon (momentum orthogonalized by Newton-Schulz; Keller Jordan, 2024) for
/// the weights of a [`ParamGroup`]. Each weight, as a matrix (shape[0] rows,
/// the other dimensions flattened), keeps a momentum buffer `v = momentum v + g`;
/// its update (`g + momentum v` with Nesterov, else `v`) is scaled to norm 1
/// and orthogonalized by `steps` quintic Newton-Schulz iterations (singular
/// values pushed towards 1, as airbench94_muon does), then `p -= lr * update`.
/// With `normalize_weights` each weight is first rescaled to norm
/// sqrt(rows) (airbench's variant: the BatchNorm after each conv makes the
/// scale irrelevant). The group's weight decay does not apply. The momentum
/// buffers are the optimizer's state at the weights' offsets (so checkpoints
/// keep them); the step cannot be skipped, so Muon refuses loss scaling.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Muon {
    pub momentum: f32,
    pub nesterov: bool,
    pub steps: usize,
    pub normalize_weights: bool,
}

impl Muon {
    /// The quintic iteration's coefficients: X <- a X + (b A + c A^2) X, A = X X^T.
    pub const COEFFICIENTS: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);
    /// Added to the update's norm before it is scaled to 1.
    pub const EPS: f32 = 1e-7;

    /// airbench94_muon's settings: momentum 0.6, Nesterov, 3 iterations, weights renormalized.
    pub fn airbench() -> Self {
        Muon { momentum: 0.6, nesterov: true, steps: 3, normalize_weights: true }
    }
}

fn one() -> f32 {
    1.0
}

impl ParamGroup {
    /// A group of the parameters `params` matches with learning-rate multiplier `lr_scale`.
    pub fn new(params: &str, lr_scale: f32) -> Self {
        ParamGroup { params: params.to_string(), lr_scale, weight_decay: None, train_epochs: None, muon: None }
    }

    /// Whether `name` matches the pattern (`*`: any run of characters).
    pub fn matches(&self, name: &str) -> bool {
        wildcard_match(self.params.as_bytes(), name.as_bytes())
    }

    fn validate(&self) -> Result<()> {
        let what = || format!("parameter group `{}`", self.params);
        if !(self.lr_scale.is_finite() && self.lr_scale >= 0.0) {
            return Err(Error::config(what(), format!("lr_scale must be >= 0, got {}", self.lr_scale)));
        }
        if let Some(wd) = self.weight_decay.filter(|wd| !(wd.is_finite() && *wd >= 0.0)) {
            return Err(Error::config(what(), format!("weight_decay must be >= 0, got {wd}")));
        }
        let Some(muon) = self.muon else { return Ok(()) };
        if !(muon.momentum.is_finite() && (0.0..1.0).contains(&muon.momentum)) || (muon.nesterov && muon.momentum == 0.0) {
            return Err(Error::config(what(), format!("Muon's momentum must be in [0, 1) (above 0 with Nesterov), got {}", muon.momentum)));
        }
        if self.train_epochs.is_some() {
            return Err(Error::config(what(), "a Muon group trains for the whole run (train_epochs is not supported)"));
        }
        Ok(())
    }
}

/// `*`-only glob matching (no other metacharacters: names are plain).
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard_match(rest, &name[i..])),
        Some((c, rest)) => name.first() == Some(c) && wildcard_match(rest, &name[1..]),
    }
}

/// A contiguous window of the parameter buffer that one optimizer kernel updates
/// with the settings of `slot` (0: the optimizer's own, g + 1: group g).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    offset: usize,
    len: usize,
    slot: usize,
}

/// Splits the parameters into runs of one group each; frozen groups get none.
/// Without groups (or when every parameter is in the default slot) that is one
/// run over the whole buffer: one kernel per step.
fn plan_runs(groups: &[ParamGroup], params: &crate::model::ParamStore<impl Backend>) -> Result<Vec<Run>> {
    for group in groups {
        group.validate()?;
        if !params.entries.iter().any(|e| group.matches(&e.name)) {
            let names: Vec<&str> = params.entries.iter().take(6).map(|e| e.name.as_str()).collect();
            return Err(Error::config(
                format!("parameter group `{}`", group.params),
                format!("matches no parameter of the model (its names look like {})", names.join(", ")),
            ));
        }
    }
    let slot_of = |name: &str| groups.iter().position(|g| g.matches(name)).map_or(0, |g| g + 1);
    let mut entries: Vec<_> = params.entries.iter().map(|e| (e.offset, e.len(), slot_of(&e.name))).collect();
    entries.sort_unstable();
    if entries.iter().all(|&(_, _, slot)| slot == 0) {
        return Ok(vec![Run { offset: 0, len: params.len(), slot: 0 }]);
    }
    let mut runs: Vec<Run> = Vec::new();
    // Whether the last entry got a run (an entry left out ends the run before it).
    let mut open = false;
    for (offset, len, slot) in entries {
        // Frozen entries get no update; Muon's get theirs matrix by matrix (see `muon_matrices`).
        if slot > 0 && (groups[slot - 1].lr_scale == 0.0 || groups[slot - 1].muon.is_some()) {
            open = false;
            continue;
        }
        match runs.last_mut() {
            // Extending over the alignment padding between two entries is harmless (zero grads).
            Some(run) if open && run.slot == slot => run.len = offset + len - run.offset,
            _ => runs.push(Run { offset, len, slot }),
        }
        open = true;
    }
    Ok(runs)
}

/// A weight that [`Muon`] updates: where it is, its matrix shape, its group's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MuonMatrix {
    offset: usize,
    rows: usize,
    cols: usize,
    slot: usize,
}

/// The weights of the (unfrozen) Muon groups, as matrices; each must have at least 2 dimensions.
fn muon_matrices(groups: &[ParamGroup], params: &crate::model::ParamStore<impl Backend>) -> Result<Vec<MuonMatrix>> {
    let mut out = Vec::new();
    for e in &params.entries {
        let Some(g) = groups.iter().position(|g| g.matches(&e.name)) else { continue };
        if groups[g].muon.is_none() || groups[g].lr_scale == 0.0 {
            continue;
        }
        if e.shape.len() < 2 {
            return Err(Error::config(
                format!("parameter group `{}`", groups[g].params),
                format!("Muon updates matrices and filters, but `{}` has shape {:?}", e.name, e.shape),
            ));
        }
        out.push(MuonMatrix { offset: e.offset, rows: e.shape[0], cols: e.len() / e.shape[0], slot: g + 1 });
    }
    Ok(out)
}

/// Muon's working buffers, sized for its largest matrix: the update and the
/// next iterate, the Gram matrix and its polynomial, and the state the plain
/// SGD kernel that applies the update writes (unused).
struct MuonBufs<B: Backend> {
    x: B::Buf<f32>,
    next: B::Buf<f32>,
    gram: B::Buf<f32>,
    poly: B::Buf<f32>,
    sgd_state: B::Buf<f32>,
}

impl<B: Backend> MuonBufs<B> {
    fn new(backend: &B, matrices: &[MuonMatrix]) -> Result<Option<Self>> {
        let Some(len) = matrices.iter().map(|m| m.rows * m.cols).max() else { return Ok(None) };
        let side = matrices.iter().map(|m| m.rows.min(m.cols).pow(2)).max().unwrap_or(1);
        Ok(Some(MuonBufs {
            x: backend.alloc(len)?,
            next: backend.alloc(len)?,
            gram: backend.alloc(side)?,
            poly: backend.alloc(side)?,
            sgd_state: backend.alloc(len)?,
        }))
    }

    /// `iterations` of X <- a X + (b A + c A^2) X with A = X X^T (or, for a
    /// tall X, X <- a X + X (b A + c A^2) with A = X^T X): the result is in `x`.
    fn newton_schulz(&mut self, backend: &B, (rows, cols): (usize, usize), iterations: usize) -> Result<()> {
        let (a, b, c) = Muon::COEFFICIENTS;
        let (len, side) = (rows * cols, rows.min(cols));
        let wide = rows <= cols;
        for _ in 0..iterations {
            let x = View::prefix(&self.x, len)?;
            let gram = Gemm::new(side, side, rows.max(cols));
            let gram = if wide { gram.trans_b() } else { gram.trans_a() };
            backend.gemm(&gram, x, x, None, ViewMut::prefix(&mut self.gram, side * side)?)?;
            let g = View::prefix(&self.gram, side * side)?;
            backend.gemm(&Gemm::new(side, side, side).alpha(c), g, g, None, ViewMut::prefix(&mut self.poly, side * side)?)?;
            backend.axpby(b, g, 1.0, ViewMut::prefix(&mut self.poly, side * side)?)?;
            backend.copy(x, ViewMut::prefix(&mut self.next, len)?)?;
            let poly = View::prefix(&self.poly, side * side)?;
            let next = ViewMut::prefix(&mut self.next, len)?;
            match wide {
                true => backend.gemm(&Gemm::new(rows, cols, rows).beta(a), poly, x, None, next)?,
                false => backend.gemm(&Gemm::new(rows, cols, cols).beta(a), x, poly, None, next)?,
            }
            std::mem::swap(&mut self.x, &mut self.next);
        }
        Ok(())
    }
}

/// An optimizer with its state on the device (velocity, or Adam's moments).
pub struct Optimizer<B: Backend> {
    pub config: OptimizerConfig,
    groups: Vec<ParamGroup>,
    runs: Vec<Run>,
    state: B::Buf<f32>,
    /// The values the next step reads ([`Hyper`]), one row per slot (the defaults, then each group).
    hyper: B::Buf<f32>,
    /// Planned values for upcoming steps, a [`Hyper`] row per slot per step:
    /// uploaded once per epoch, then each step copies its rows on the device (no host write).
    plan: B::Buf<f32>,
    /// Steps taken so far (Adam's t).
    pub steps: u64,
    /// The weights Muon groups update, and its buffers (when there are any).
    muon: Vec<MuonMatrix>,
    muon_bufs: Option<MuonBufs<B>>,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(backend: &B, config: OptimizerConfig, params: &ParamStore<B>) -> Result<Self> {
        Self::with_groups(backend, config, params, &[])
    }

    /// An optimizer whose parameters in `groups` train with their group's settings.
    pub fn with_groups(backend: &B, config: OptimizerConfig, params: &ParamStore<B>, groups: &[ParamGroup]) -> Result<Self> {
        config.validate()?;
        let runs = plan_runs(groups, params)?;
        let whole = runs.len() == 1 && runs[0].len == params.len();
        if config.kind != OptimizerKind::Sgd && !whole {
            // Adam's state is [m | v] over the whole buffer: windows of it are not one view.
            return Err(Error::config("parameter groups", "need --optimizer sgd"));
        }
        let muon = muon_matrices(groups, params)?;
        if !muon.is_empty() && config.kind != OptimizerKind::Sgd {
            return Err(Error::config("Muon parameter groups", "need --optimizer sgd for the other parameters"));
        }
        let slots = groups.len() + 1;
        Ok(Optimizer {
            config,
            groups: groups.to_vec(),
            runs,
            state: backend.alloc(config.rule().state_len(params.len()))?,
            hyper: backend.alloc(slots * Hyper::LEN)?,
            plan: backend.alloc(slots * Hyper::LEN)?,
            steps: 0,
            muon_bufs: MuonBufs::new(backend, &muon)?,
            muon,
        })
    }

    fn slots(&self) -> usize {
        self.groups.len() + 1
    }

    /// The learning-rate multiplier of `slot` in epoch `epoch` (0-based).
    fn lr_scale(&self, slot: usize, epoch: usize) -> f32 {
        match slot.checked_sub(1).map(|g| &self.groups[g]) {
            None => 1.0,
            Some(g) if g.train_epochs.is_some_and(|e| epoch >= e) => 0.0,
            Some(g) => g.lr_scale,
        }
    }

    /// Whether parameter `name` is left as it is in epoch `epoch` (0-based).
    pub fn frozen(&self, name: &str, epoch: usize) -> bool {
        let slot = self.groups.iter().position(|g| g.matches(name)).map_or(0, |g| g + 1);
        self.lr_scale(slot, epoch) == 0.0
    }

    fn rule(&self, slot: usize) -> UpdateRule {
        let group_decay = slot.checked_sub(1).and_then(|g| self.groups[g].weight_decay);
        let weight_decay = group_decay.unwrap_or(self.config.weight_decay);
        OptimizerConfig { weight_decay, ..self.config }.rule()
    }

    /// Uploads the values of epoch `epoch`'s next `lrs.len()` steps (one base
    /// learning rate each, scaled per group; Adam's bias corrections follow
    /// from the step count).
    pub fn plan(&mut self, backend: &B, epoch: usize, lrs: &[f32]) -> Result<()> {
        let mut table = Vec::with_capacity(lrs.len() * self.slots() * Hyper::LEN);
        for (i, &lr) in lrs.iter().enumerate() {
            let t = (self.steps + 1 + i as u64) as i32;
            let (bias_correction1, bias_correction2) = (1.0 - self.config.beta1.powi(t), 1.0 - self.config.beta2.powi(t));
            for slot in 0..self.slots() {
                let lr = lr * self.lr_scale(slot, epoch);
                table.extend_from_slice(&Hyper { lr, bias_correction1, bias_correction2, skip: 0.0 }.to_array());
            }
        }
        if crate::Storage::len(&self.plan) < table.len() {
            self.plan = backend.alloc(table.len())?;
        }
        backend.write(ViewMut::prefix(&mut self.plan, table.len())?, &table)
    }

    /// Makes planned step `i` (0-based, counted from the last [`Optimizer::plan`])
    /// the next one: a copy on the device.
    pub fn prepare(&mut self, backend: &B, i: usize) -> Result<()> {
        let row = self.slots() * Hyper::LEN;
        backend.copy(View::range(&self.plan, i * row, row)?, ViewMut::all(&mut self.hyper))
    }

    /// Makes the next step change nothing where `flag` (one value on the
    /// device) is nonzero: device-side copies into every slot's step values,
    /// after [`Optimizer::prepare`] (which clears them). For loss scaling's overflowed steps.
    pub fn skip_if(&mut self, backend: &B, flag: View<'_, B, f32>) -> Result<()> {
        for slot in 0..self.slots() {
            backend.copy(flag, ViewMut::range(&mut self.hyper, slot * Hyper::LEN + Hyper::SKIP, 1)?)?;
        }
        Ok(())
    }

    /// One update with the values of the last [`Optimizer::prepare`]: one
    /// kernel per run of parameters (one in all without groups).
    pub fn step(&mut self, backend: &B, params: &mut ParamStore<B>) -> Result<()> {
        self.steps += 1;
        let whole = self.runs.len() == 1 && self.runs[0].len == params.len();
        for run in self.runs.clone() {
            let rule = self.rule(run.slot);
            let hyper = View::range(&self.hyper, run.slot * Hyper::LEN, Hyper::LEN)?;
            let (p, g, s) = if whole {
                (ViewMut::all(&mut params.data), View::all(&params.grads), ViewMut::all(&mut self.state))
            } else {
                (
                    ViewMut::range(&mut params.data, run.offset, run.len)?,
                    View::range(&params.grads, run.offset, run.len)?,
                    ViewMut::range(&mut self.state, run.offset, run.len)?,
                )
            };
            backend.optimizer_step(&rule, hyper, p, g, s)?;
        }
        for i in 0..self.muon.len() {
            self.muon_step(backend, params, self.muon[i])?;
        }
        Ok(())
    }

    /// Whether any weights are updated by [`Muon`] (whose steps cannot be skipped).
    pub fn uses_muon(&self) -> bool {
        !self.muon.is_empty()
    }

    /// One [`Muon`] update of one weight.
    fn muon_step(&mut self, backend: &B, params: &mut ParamStore<B>, m: MuonMatrix) -> Result<()> {
        let muon = self.groups[m.slot - 1].muon.ok_or_else(|| Error::config("Muon", "a Muon matrix outside a Muon group"))?;
        let bufs = self.muon_bufs.as_mut().ok_or_else(|| Error::config("Muon", "buffers not allocated"))?;
        let len = m.rows * m.cols;
        let g = View::range(&params.grads, m.offset, len)?;
        // v = g + momentum v; the update: g + momentum v (Nesterov) or v, scaled to norm 1.
        let mut v = ViewMut::range(&mut self.state, m.offset, len)?;
        backend.axpby(1.0, g, muon.momentum, v.reborrow())?;
        if muon.nesterov {
            backend.copy(g, ViewMut::prefix(&mut bufs.x, len)?)?;
            backend.axpby(muon.momentum, v.as_view(), 1.0, ViewMut::prefix(&mut bufs.x, len)?)?;
        } else {
            backend.copy(v.as_view(), ViewMut::prefix(&mut bufs.x, len)?)?;
        }
        backend.scale_to_norm(ViewMut::prefix(&mut bufs.x, len)?, 1.0, Muon::EPS)?;
        bufs.newton_schulz(backend, (m.rows, m.cols), muon.steps)?;
        let mut p = ViewMut::range(&mut params.data, m.offset, len)?;
        if muon.normalize_weights {
            backend.scale_to_norm(p.reborrow(), (m.rows as f32).sqrt(), 0.0)?;
        }
        // p -= lr * update, with this step's learning rate (and skip flag) from the device.
        let apply = UpdateRule::Sgd { momentum: 0.0, nesterov: false, weight_decay: 0.0 };
        let hyper = View::range(&self.hyper, m.slot * Hyper::LEN, Hyper::LEN)?;
        backend.optimizer_step(&apply, hyper, p, View::prefix(&bufs.x, len)?, ViewMut::prefix(&mut bufs.sgd_state, len)?)
    }

    /// Values in [`Optimizer::state`].
    pub fn state_len(&self) -> usize {
        crate::Storage::len(&self.state)
    }

    /// The state for a checkpoint (host copy).
    pub fn state(&self, backend: &B) -> Result<Vec<f32>> {
        backend.download(View::all(&self.state))
    }

    /// Restores state saved by [`Optimizer::state`] after `steps` steps.
    pub fn restore(&mut self, backend: &B, state: &[f32], steps: u64) -> Result<()> {
        crate::error::check_len("optimizer restore", "state", crate::Storage::len(&self.state), state.len())?;
        backend.write(ViewMut::all(&mut self.state), state)?;
        self.steps = steps;
        Ok(())
    }
}
