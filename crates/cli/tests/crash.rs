//! A run folder survives a kill at any instant, and refuses files that do not
//! belong together.
//!
//! The kill tests train on the CPU and SIGKILL the process after random
//! (seeded) delays, with every file write slowed down by
//! `RR_TEST_WRITE_DELAY_MS` so that kills land inside and between the writes.
//! After each kill the folder is checked (eval loads it, metrics.csv holds each
//! epoch once, the files are of one run and at most one epoch apart), and the
//! run is resumed, and killed again, until a process completes: its final
//! model, best model and metrics must be those of a straight run, bit for bit.

use rr_core::checkpoint;
use rr_core::data::Dataset;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rusty-recognition"));
    c.current_dir(repo());
    c
}

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Removes a test's folders once it passed (a failing test leaves them to look at).
fn clean(dirs: &[&Path]) {
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}\n{err}");
    out.into_owned()
}

/// The stderr of a command that must fail cleanly (exit 1, no panic).
fn fails(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "expected a clean failure: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn mnist() -> &'static rr_core::data::Splits {
    static M: OnceLock<rr_core::data::Splits> = OnceLock::new();
    M.get_or_init(|| rr_core::data::Mnist::load(&repo().join("data/mnist")).unwrap())
}

/// A folder of MNIST-format IDX files: `train` training images of MNIST from
/// index `train_from`, and 256 test images.
fn idx_folder(name: &str, train_from: usize, train: usize) -> PathBuf {
    let dir = tmpdir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let m = mnist();
    write_idx(&dir, "train", &m.train, train_from, train);
    write_idx(&dir, "t10k", &m.test, 0, 256);
    dir
}

fn write_idx(dir: &Path, split: &str, data: &Dataset, from: usize, n: usize) {
    let count = (n as u32).to_be_bytes();
    let mut images = [&[0, 0, 8, 3][..], &count, &28u32.to_be_bytes(), &28u32.to_be_bytes()].concat();
    images.extend_from_slice(&data.images[from * 784..(from + n) * 784]);
    let labels = [&[0, 0, 8, 1][..], &count, &data.labels[from..from + n]].concat();
    std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), labels).unwrap();
}

/// 512 training and 256 test images of MNIST (once per test binary).
fn tiny() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| idx_folder("tiny", 0, 512))
}

/// A LeNet run on [`tiny`] with the given extra options.
fn train(out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["train", "--device", "cpu", "--threads", "1", "--batch-size", "32", "--data-dir"])
        .arg(tiny())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn resume(path: &Path, epochs: usize, extra: &[&str]) -> Output {
    bin()
        .args(["train", "--device", "cpu", "--threads", "1", "--epochs", &epochs.to_string(), "--resume"])
        .arg(path)
        .args(extra)
        .output()
        .unwrap()
}

/// A checkpoint's epoch and run id.
fn epoch_and_run(path: &Path) -> (usize, String) {
    let (_, meta) = checkpoint::load_tensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta["epoch"].parse().unwrap(), meta["run_id"].clone())
}

/// The epochs of metrics.csv's rows (None: no file); its header must be whole.
fn metric_epochs(dir: &Path) -> Option<Vec<usize>> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).ok()?;
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_sec,lr"), "{text}");
    Some(lines.map(|l| l.split(',').next().unwrap().parse().unwrap_or_else(|_| panic!("bad row {l:?}"))).collect())
}

/// `write_atomic`'s temporary files in `dir` (`.NAME.tmp-PID`).
fn temporaries(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| checkpoint::is_temporary(n)).collect()
}

/// What must be identical between a killed-and-resumed run and a straight one:
/// the tensors (as bits) of the model and best model, and metrics.csv without
/// its timing columns.
#[derive(Debug, PartialEq)]
struct Outcome {
    model: Vec<(String, Vec<u32>)>,
    best: Vec<(String, Vec<u32>)>,
    metrics: Vec<String>,
}

impl Outcome {
    fn read(dir: &Path) -> Outcome {
        let bits = |file: &str| -> Vec<(String, Vec<u32>)> {
            let ckpt = checkpoint::load(&dir.join(file)).unwrap();
            ckpt.tensors.into_iter().map(|(n, _, v)| (n, v.iter().map(|x| x.to_bits()).collect())).collect()
        };
        let metrics = std::fs::read_to_string(dir.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                [&f[..5], &f[7..]].concat().join(",")
            })
            .collect();
        Outcome { model: bits("model.safetensors"), best: bits("best.safetensors"), metrics }
    }
}

/// A seeded source of kill delays (SplitMix64).
struct Delays(u64);

impl Delays {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where the kills landed (each kill counts in one or more).
#[derive(Debug, Default)]
struct Coverage {
    kills: usize,
    /// Before the first commit of a new run (nothing to resume: it starts again).
    before_first_commit: usize,
    /// Inside a write: the killed process left a temporary file.
    inside_a_write: usize,
    /// Of those, before it trained: in the first commit or the repair of a resume.
    inside_an_early_write: usize,
    /// Between the commit and its views: model.safetensors or metrics.csv an epoch behind.
    views_behind: usize,
    /// After the process had trained an epoch (mid-training, mid-evaluation or mid-write).
    after_an_epoch: usize,
    chains: usize,
}

/// A kind of run the kill test trains.
struct Kind {
    name: &'static str,
    args: &'static [&'static str],
    epochs: usize,
}

/// Each write sleeps three times this long (inside and after it).
const WRITE_DELAY_MS: &str = "6";

/// A training process of the kill test, its stdout read line by line as it comes.
struct Training {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: String,
}

impl Training {
    /// A new run of `kind` in `dir`, or a resume of the one there.
    fn start(kind: &Kind, dir: &Path) -> Training {
        let mut c = bin();
        c.args(["train", "--device", "cpu", "--threads", "1", "--epochs", &kind.epochs.to_string()]);
        if dir.join("train_state.safetensors").exists() {
            c.arg("--resume").arg(dir);
        } else {
            c.args(kind.args).arg("--data-dir").arg(tiny()).arg("--out").arg(dir);
            // A run killed before its first commit left a folder that cannot be resumed: start it again.
            if dir.exists() {
                c.arg("--overwrite");
            }
        }
        c.env(checkpoint::TEST_WRITE_DELAY_VAR, WRITE_DELAY_MS).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || stdout.lines().map_while(Result::ok).try_for_each(|l| send.send(l)));
        Training { child, lines, stdout: String::new() }
    }

    /// Waits for a line holding `what`; false when the process ended first.
    fn wait_for(&mut self, what: &str) -> bool {
        while let Ok(line) = self.lines.recv() {
            self.stdout += &line;
            self.stdout.push('\n');
            if line.contains(what) {
                return true;
            }
        }
        false
    }

    /// Its stdout, after checking that it succeeded (unless `killed`).
    fn finish(mut self, killed: bool) -> String {
        self.wait_for("\0");
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert!(killed || status.success(), "{}\n{stderr}", self.stdout);
        self.stdout
    }
}

/// Waits up to `delay` for `child` to finish; kills it (SIGKILL) if it has
/// not. Returns whether it was killed.
fn kill_after(child: &mut Child, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    true
}

/// The run folder just after process `pid` was killed (its stdout `out`).
fn check_after_kill(dir: &Path, pid: u32, out: &str, cov: &mut Coverage) {
    let own = format!(".tmp-{pid}");
    let temporaries = temporaries(dir);
    let trained = out.contains("train_loss");
    if trained {
        // The process had cleaned up before training: what is left is its own.
        assert!(temporaries.iter().all(|t| t.ends_with(&own)), "stale temporary files {temporaries:?} (process {pid})");
        cov.after_an_epoch += 1;
    }
    let inside_a_write = temporaries.iter().any(|t| t.ends_with(&own));
    cov.inside_a_write += inside_a_write as usize;
    cov.inside_an_early_write += (inside_a_write && !trained) as usize;
    let state = dir.join("train_state.safetensors");
    if !state.exists() {
        assert!(!dir.join("model.safetensors").exists(), "a model without a training state");
        cov.before_first_commit += 1;
        return;
    }
    let (k, run) = epoch_and_run(&state);
    let model = dir.join("model.safetensors");
    let m = if model.exists() {
        let (m, model_run) = epoch_and_run(&model);
        assert_eq!(model_run, run, "model.safetensors and train_state.safetensors of different runs");
        let eval = ok(&bin()
            .args(["eval", "--device", "cpu", "--threads", "1", "--data-dir"])
            .arg(tiny())
            .arg("--checkpoint")
            .arg(&model)
            .output()
            .unwrap());
        assert!(eval.contains(&format!("epoch {m})")) && eval.contains("test_acc"), "{eval}");
        m
    } else {
        0
    };
    assert!(m == k || m + 1 == k, "model.safetensors is at epoch {m}, train_state.safetensors at {k}");
    let best = dir.join("best.safetensors");
    if best.exists() {
        let (b, best_run) = epoch_and_run(&best);
        assert!(best_run == run && b <= k, "best.safetensors (epoch {b}) does not belong to the run at epoch {k}");
    }
    let rows = metric_epochs(dir);
    let j = rows.as_ref().map_or(0, Vec::len);
    assert!(rows.is_some() || k == 0, "no metrics.csv after epoch {k}");
    assert_eq!(rows.unwrap_or_default(), (1..=j).collect::<Vec<_>>(), "metrics.csv must hold epochs 1.. once each");
    assert!(j == k || j + 1 == k, "metrics.csv has {j} epochs, train_state.safetensors {k}");
    cov.views_behind += (m < k || j < k) as usize;
}

/// Kills runs of `kind` `kills` times, resuming after each kill, and checks
/// each completed chain against a straight run.
fn kill_test(kind: Kind, kills: usize, seed: u64) {
    let started = Instant::now();
    let straight = tmpdir(&format!("{}-straight", kind.name));
    Training::start(&kind, &straight).finish(false);
    let full = started.elapsed();
    let epoch = full / kind.epochs as u32;
    let reference = Outcome::read(&straight);
    assert_eq!(reference.metrics.len(), kind.epochs + 1);
    let dir = tmpdir(&format!("{}-killed", kind.name));
    let mut delays = Delays(seed);
    let mut cov = Coverage::default();
    while cov.kills < kills {
        let _ = std::fs::remove_dir_all(&dir);
        cov.chains += 1;
        loop {
            let state = dir.join("train_state.safetensors");
            let done = if state.exists() { epoch_and_run(&state).0 } else { 0 };
            // (With all epochs committed, what is left is the repair and the plots.)
            let left = (kind.epochs - done) as f64 / kind.epochs as f64 + 0.1;
            let mut run = Training::start(&kind, &dir);
            let pid = run.child.id();
            // A third of the kills soon after an epoch's line: in its commit, its
            // views or the next steps; half anywhere in what is left of the run
            // (or just past its end); the rest early: start-up, repair, first steps.
            let phase = delays.unit();
            let killed = if phase < 0.33 {
                run.wait_for("train_loss") && kill_after(&mut run.child, epoch.mul_f64(0.5 * delays.unit()))
            } else {
                let span = if phase < 0.83 { 0.1 + 0.9 * left } else { 0.1 };
                kill_after(&mut run.child, full.mul_f64(span * delays.unit()))
            };
            let stdout = run.finish(killed);
            if !killed {
                break;
            }
            cov.kills += 1;
            check_after_kill(&dir, pid, &stdout, &mut cov);
        }
        assert_eq!(temporaries(&dir), Vec::<String>::new(), "a completed run leaves no temporary files");
        assert_eq!(epoch_and_run(&dir.join("train_state.safetensors")).0, kind.epochs);
        assert!(Outcome::read(&dir) == reference, "{}: the killed and resumed run differs from the straight run", kind.name);
    }
    eprintln!("{}: straight run {:.2}s; {cov:?}; {:.1}s in all", kind.name, full.as_secs_f64(), started.elapsed().as_secs_f64());
    assert!(cov.inside_a_write > 0 && cov.views_behind > 0 && cov.after_an_epoch > 0, "kills missed a phase: {cov:?}");
    clean(&[&straight, &dir]);
}

#[test]
fn lenet_killed_at_random_instants_resumes_bit_identically() {
    let kind = Kind { name: "lenet", args: &["--model", "lenet", "--limit-train", "256", "--batch-size", "32", "--lr", "0.02"], epochs: 4 };
    kill_test(kind, 50, 1);
}

#[test]
fn mnist_cnn_killed_at_random_instants_resumes_bit_identically() {
    let args = &["--model", "mnist-cnn", "--width", "4", "--limit-train", "256", "--batch-size", "32"];
    kill_test(Kind { name: "mnist-cnn", args, epochs: 4 }, 50, 2);
}

fn save_with(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], meta: &std::collections::BTreeMap<String, String>) {
    let meta: Vec<(&str, String)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    checkpoint::save_tensors(path, tensors, &meta).unwrap();
}

#[test]
fn resume_refuses_files_of_another_run_or_of_a_later_epoch() {
    let (a, b) = (tmpdir("run-a"), tmpdir("run-b"));
    ok(&train(&a, &["--epochs", "1"]));
    ok(&train(&b, &["--epochs", "1"]));
    // A model of run a beside the training state of run b: refused, and left as it was.
    std::fs::copy(a.join("model.safetensors"), b.join("model.safetensors")).unwrap();
    let err = fails(&resume(&b.join("model.safetensors"), 2, &[]));
    let state = b.join("train_state.safetensors").display().to_string();
    assert!(err.contains("not files of one run") && err.contains(&state), "{err}");
    assert_eq!(std::fs::read(b.join("model.safetensors")).unwrap(), std::fs::read(a.join("model.safetensors")).unwrap());
    // A training state older than the model (put back from a copy).
    let old_state = std::fs::read(a.join("train_state.safetensors")).unwrap();
    ok(&resume(&a, 2, &[]));
    std::fs::write(a.join("train_state.safetensors"), old_state).unwrap();
    let err = fails(&resume(&a, 3, &[]));
    assert!(err.contains("is at epoch 2") && err.contains("only at epoch 1"), "{err}");
    clean(&[&a, &b]);
}

#[test]
fn resume_refuses_other_data_than_the_run_trained_on() {
    let run = tmpdir("data-run");
    ok(&train(&run, &["--epochs", "1"]));
    let other = idx_folder("other-train", 512, 512);
    let err = fails(&resume(&run, 2, &["--data-dir", other.to_str().unwrap()]));
    assert!(err.contains(&format!("{} holds other training images than the run was trained on", other.display())), "{err}");
    // All of MNIST: its test set (named) is not the run's.
    let err = fails(&resume(&run, 2, &["--data-dir", "data/mnist"]));
    assert!(err.contains("data/mnist holds the mnist test set, but the run was trained on mnist with the test set of SHA-256"), "{err}");
    clean(&[&run, &other]);
}

#[test]
fn eval_refuses_a_checkpoint_of_another_dataset_unless_told() {
    // A Fashion-MNIST checkpoint (of IDX files the Fashion-MNIST loader reads).
    let run = tmpdir("fashion");
    ok(&train(&run, &["--epochs", "1", "--dataset", "fashion-mnist"]));
    let eval = |ckpt: &Path, extra: &[&str]| {
        bin().args(["eval", "--device", "cpu", "--data-dir", "data/mnist", "--checkpoint"]).arg(ckpt).args(extra).output().unwrap()
    };
    let ckpt = run.join("model.safetensors");
    let err = fails(&eval(&ckpt, &[]));
    let named = |err: &str| err.contains("data/mnist holds the mnist test set, but") && err.contains("was trained on fashion-mnist");
    assert!(named(&err) && err.contains("pass --allow-other-dataset"), "{err}");
    let o = eval(&ckpt, &["--allow-other-dataset"]);
    assert!(ok(&o).contains("test_acc") && named(&String::from_utf8_lossy(&o.stderr)), "the override warns");
    // A checkpoint without its test set's fingerprint (as older versions wrote them): refused by the known one.
    let (tensors, mut meta) = checkpoint::load_tensors(&ckpt).unwrap();
    meta.remove("test_data_sha256").expect("checkpoints record their test set");
    let old = run.join("old.safetensors");
    save_with(&old, &tensors, &meta);
    assert!(named(&fails(&eval(&old, &[]))));
    clean(&[&run]);
}

#[test]
fn a_run_whose_optimizer_state_overflows_stops_and_a_non_finite_state_is_not_resumed() {
    let run = tmpdir("overflow");
    // Adam at a rate of 1e4 from epoch 2: its moments overflow while the loss stays finite.
    let schedule = ["--optimizer", "adam", "--lr", "1e-3", "--schedule", "step", "--milestones", "1", "--gamma", "1e7"];
    let err = fails(&train(&run, &[&["--epochs", "3"][..], &schedule].concat()));
    assert!(err.contains("training diverged in epoch 2") && err.contains("Adam moment estimates became inf"), "{err}");
    assert!(err.contains("the last good checkpoint (epoch 1) is intact"), "{err}");
    let (tensors, meta) = checkpoint::load_tensors(&run.join("train_state.safetensors")).unwrap();
    assert_eq!(meta["epoch"], "1");
    assert!(tensors.iter().all(|(_, _, v)| v.iter().all(|x| x.is_finite())), "only finite values are saved");
    assert_eq!(epoch_and_run(&run.join("model.safetensors")).0, 1);
    // A training state holding a NaN (written by hand) is not resumed.
    let state = run.join("train_state.safetensors");
    let mut poisoned = tensors.clone();
    poisoned.iter_mut().find(|(n, _, _)| n == "optimizer.state").unwrap().2[7] = f32::NAN;
    save_with(&state, &poisoned, &meta);
    let err = fails(&resume(&run, 3, &[]));
    assert!(err.contains("`optimizer.state` holds NaN") && err.contains("cannot be resumed"), "{err}");
    clean(&[&run]);
}

#[test]
fn a_run_of_no_epochs_says_so_and_a_resume_rebuilds_lost_views() {
    let (run, straight) = (tmpdir("zero"), tmpdir("zero-straight"));
    let out = ok(&train(&run, &["--epochs", "0"]));
    assert!(out.contains("no epochs to train") && !out.contains("model.safetensors"), "{out}");
    assert!(!run.join("model.safetensors").exists());
    // The initial state resumes into the straight run.
    ok(&resume(&run, 2, &[]));
    ok(&train(&straight, &["--epochs", "2"]));
    let reference = Outcome::read(&straight);
    assert!(Outcome::read(&run) == reference);
    // The checkpoint and metrics views come back from the training state, stale temporaries go.
    std::fs::remove_file(run.join("model.safetensors")).unwrap();
    std::fs::write(run.join("metrics.csv"), "epoch,train").unwrap();
    std::fs::write(run.join(".best.safetensors.tmp-12345"), "half a file").unwrap();
    // A per-step log with rows of an epoch the kill interrupted, the last one cut short.
    let steps = "epoch,step,loss,accuracy,lr,images_per_sec\n1,8,2.3,0.1,0.1,900\n2,16,2.2,0.2,0.1,900\n3,8,2.1,0.3,0.1,900\n3,16,2";
    std::fs::write(run.join("steps.csv"), steps).unwrap();
    let out = ok(&resume(&run, 2, &[]));
    assert!(out.contains("nothing to train") && !out.contains("images_per_sec"), "{out}");
    assert!(Outcome::read(&run) == reference);
    assert_eq!(temporaries(&run), Vec::<String>::new());
    assert_eq!(
        std::fs::read_to_string(run.join("steps.csv")).unwrap(),
        "epoch,step,loss,accuracy,lr,images_per_sec\n1,8,2.3,0.1,0.1,900\n2,16,2.2,0.2,0.1,900\n"
    );
    clean(&[&run, &straight]);
}

#[test]
fn eval_predict_and_serve_refuse_a_checkpoint_whose_dataset_does_not_fit_its_model() {
    let run = tmpdir("misfit");
    ok(&train(&run, &["--epochs", "1"]));
    // A LeNet (1x28x28 inputs) that says it was trained on 3x32x32 images.
    let (tensors, mut meta) = checkpoint::load_tensors(&run.join("model.safetensors")).unwrap();
    let mut info: serde_json::Value = serde_json::from_str(&meta["dataset"]).unwrap();
    info["shape"] = serde_json::json!([3, 32, 32]);
    info["mean"] = serde_json::json!([0.5, 0.5, 0.5]);
    info["std"] = serde_json::json!([0.25, 0.25, 0.25]);
    meta.insert("dataset".into(), info.to_string());
    let misfit = run.join("misfit.safetensors");
    save_with(&misfit, &tensors, &meta);
    let says = "the model takes [1, 28, 28] inputs in 10 classes, but its dataset description says [3, 32, 32] images";
    let cpu = ["--device", "cpu", "--checkpoint"];
    let eval = bin().arg("eval").args(cpu).arg(&misfit).output().unwrap();
    let predict = bin().arg("predict").args(cpu).arg(&misfit).arg(repo().join("README.md")).output().unwrap();
    let mut serve =
        bin().arg("serve").args(cpu).arg(&misfit).args(["--port", "0"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(!kill_after(&mut serve, Duration::from_secs(60)), "serve started with a misfit checkpoint");
    for o in [eval, predict, serve.wait_with_output().unwrap()] {
        let err = fails(&o);
        assert!(err.contains(says), "{err}");
    }
    clean(&[&run]);
}
