//! Checkpoints as safetensors files with PyTorch's state-dict names and layouts
//! (`conv1.weight` (6, 1, 5, 5), `fc1.weight` (120, 400), ...), so
//! `model.load_state_dict(safetensors.torch.load_file(path))` works in PyTorch.
//! The model config is stored as JSON under the metadata key `model` and the
//! architecture (the [`Graph`]) under `graph`, so any graph model is rebuilt
//! from its checkpoint alone.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::model::{Init, Model, ModelConfig, NamedTensor, BATCHES_TRACKED, MNIST_CLASSES, MNIST_INPUT};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// Metadata key holding the JSON [`ModelConfig`].
pub const MODEL_KEY: &str = "model";
/// Metadata key holding the JSON [`Graph`] (absent in checkpoints of version 0.1 models:
/// those are MNIST-shaped built-ins).
pub const GRAPH_KEY: &str = "graph";

/// A checkpoint read from disk.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub config: ModelConfig,
    pub graph: Graph,
    /// (name, shape, values), sorted by name.
    pub tensors: Vec<NamedTensor>,
    /// Every metadata entry, `model` included.
    pub metadata: BTreeMap<String, String>,
}

/// Writes the model's parameters to `path` (via a temporary file and a rename,
/// so an interrupted write never leaves a half-written checkpoint). `extra`
/// metadata (epoch, accuracy, training config...) is stored beside the config.
pub fn save<B: Backend>(path: &Path, backend: &B, model: &Model<B>, extra: &[(&str, String)]) -> Result<()> {
    let mut metadata: Vec<(&str, String)> = extra.to_vec();
    metadata.extend(model_metadata(model));
    save_tensors(path, &model.state_dict(backend)?, &metadata)
}

/// The metadata that makes a file a checkpoint of `model` (its config and
/// graph, the PyTorch format tag, the writer), for [`save_tensors`] callers
/// that add tensors of their own.
pub fn model_metadata<B: Backend>(model: &Model<B>) -> Vec<(&'static str, String)> {
    vec![
        ("format", "pt".into()),
        (MODEL_KEY, serde_json::to_string(&model.config).expect("config serializes")),
        (GRAPH_KEY, serde_json::to_string(&model.graph).expect("graph serializes")),
        ("framework", format!("rusty-recognition {}", env!("CARGO_PKG_VERSION"))),
    ]
}

/// Counts (BatchNorm's `num_batches_tracked`) are int64 in PyTorch: they are
/// stored as I64 and read back as f32 (exact below 2^24).
fn is_count(name: &str) -> bool {
    name.ends_with(&format!(".{BATCHES_TRACKED}"))
}

/// Writes named f32 tensors and string metadata as a safetensors file, atomically.
pub fn save_tensors(path: &Path, tensors: &[NamedTensor], metadata: &[(&str, String)]) -> Result<()> {
    let metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(name, _, v)| {
            if is_count(name) {
                v.iter().flat_map(|&c| (c as i64).to_le_bytes()).collect()
            } else {
                bytemuck::cast_slice::<f32, u8>(v).to_vec()
            }
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            let dtype = if is_count(name) { Dtype::I64 } else { Dtype::F32 };
            TensorView::new(dtype, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), msg: format!("tensor `{name}`: {e}") })
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), msg: format!("cannot encode: {e}") })?;
    write_atomic(path, &data)
}

/// Reads a safetensors file of f32 tensors: (tensors in file order, metadata).
pub fn load_tensors(path: &Path) -> Result<(Vec<NamedTensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let err = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let metadata: BTreeMap<String, String> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let mut tensors = Vec::new();
    for (name, view) in st.iter() {
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect(),
            Dtype::I64 if is_count(name) => {
                view.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
            }
            other => return Err(err(format!("tensor `{name}` is {other:?}, expected F32"))),
        };
        tensors.push((name.to_string(), view.shape().to_vec(), values));
    }
    // Deterministic order (the format stores tensors by offset, not by name).
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((tensors, metadata))
}

/// The name [`write_atomic`] writes `path`'s new content under first:
/// `.NAME.tmp-PID` beside it (see [`is_temporary`]).
fn temporary_path(path: &Path, name: &std::ffi::OsStr) -> std::path::PathBuf {
    path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()))
}

/// Whether a file name is one of [`write_atomic`]'s temporary files
/// (`.NAME.tmp-PID`), which a killed writer leaves behind.
pub fn is_temporary(file_name: &str) -> bool {
    file_name.starts_with('.')
        && file_name.rsplit_once(".tmp-").is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes `data` to `path` so that a crash at any instant leaves `path` with
/// its old content or its new one, never a mix: the bytes go to a temporary
/// file in the same folder, which is synced to disk, renamed over `path`, and
/// the folder is synced so that the rename itself is durable.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| Error::io(path, std::io::Error::other("not a file path")))?;
    let tmp = temporary_path(path, name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        // Written in two halves so that the crash tests can kill a half-written file.
        let (first, rest) = data.split_at(data.len() / 2);
        f.write_all(first)?;
        test_write_delay();
        f.write_all(rest)?;
        f.sync_all()?;
        test_write_delay();
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    test_write_delay();
    Ok(())
}

/// Makes a rename in `dir` durable (a no-op where folders cannot be opened,
/// as on Windows, or synced, as on some network file systems).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    match std::fs::File::open(dir)?.sync_all() {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported) => {}
        other => other?,
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The environment variable that makes every [`write_atomic`] sleep this many
/// milliseconds inside and after its writes: a test hook, so that a test
/// killing the process at random instants often lands inside a checkpoint write.
pub const TEST_WRITE_DELAY_VAR: &str = "RR_TEST_WRITE_DELAY_MS";

/// Sleeps as [`TEST_WRITE_DELAY_VAR`] says (read once; unset: no sleep).
pub fn test_write_delay() {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        let ms = std::env::var(TEST_WRITE_DELAY_VAR).ok()?.parse::<u64>().ok()?;
        Some(std::time::Duration::from_millis(ms))
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}

/// Reads and validates a checkpoint: a well-formed safetensors file whose
/// tensors are all f32 and whose metadata names a known model.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let (tensors, metadata) = load_tensors(path)?;
    from_tensors(path, tensors, metadata)
}

/// A checkpoint from tensors and metadata read by [`load_tensors`] (validated
/// as [`load`] does; `path` is only used in error messages).
pub fn from_tensors(path: &Path, tensors: Vec<NamedTensor>, metadata: BTreeMap<String, String>) -> Result<Checkpoint> {
    let err = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
    let config_json = metadata.get(MODEL_KEY).ok_or_else(|| {
        err(format!("no `{MODEL_KEY}` entry in the metadata: not written by rusty-recognition, so the architecture is unknown"))
    })?;
    let config: ModelConfig = serde_json::from_str(config_json)
        .map_err(|e| err(format!("metadata `{MODEL_KEY}` is not a known model config ({e}): {config_json}")))?;
    let graph = match metadata.get(GRAPH_KEY) {
        Some(json) => serde_json::from_str(json).map_err(|e| err(format!("metadata `{GRAPH_KEY}` is not a model graph ({e})")))?,
        None => config.graph(&MNIST_INPUT, MNIST_CLASSES).map_err(|e| err(format!("no `{GRAPH_KEY}` entry and {e}")))?,
    };
    graph.shapes().map_err(|e| err(format!("the stored architecture is invalid: {e}")))?;
    Ok(Checkpoint { config, graph, tensors, metadata })
}

impl Checkpoint {
    /// The description of the data the model was trained on (metadata `dataset`),
    /// checked against the model's input shape and classes. Checkpoints without
    /// one are taken as MNIST's only when the model takes MNIST's shape.
    pub fn dataset(&self, path: &Path) -> Result<crate::data::DatasetInfo> {
        let err = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
        let stored = self.metadata.get("dataset").map(String::as_str);
        let info = crate::data::DatasetInfo::from_metadata(stored).map_err(|e| err(e.to_string()))?;
        let shapes = self.graph.shapes().map_err(|e| err(e.to_string()))?;
        let classes: usize = shapes.last().map_or(0, |s| s.iter().product());
        if shapes[0] != info.shape || classes != info.classes {
            let what = if stored.is_some() {
                "its dataset description says"
            } else {
                "it has no dataset description (metadata `dataset`), and MNIST has"
            };
            return Err(err(format!(
                "the model takes {:?} inputs in {classes} classes, but {what} {:?} images in {} classes",
                shapes[0], info.shape, info.classes
            )));
        }
        Ok(info)
    }
}

/// Loads a checkpoint and builds its model on `backend`.
pub fn load_model<B: Backend>(path: &Path, backend: &B) -> Result<(Model<B>, Checkpoint)> {
    let ckpt = load(path)?;
    let mut model = Model::build(backend, ckpt.config.clone(), ckpt.graph.clone(), 0, Init::PyTorch)?;
    model.load_state_dict(backend, &ckpt.tensors, path)?;
    Ok((model, ckpt))
}
