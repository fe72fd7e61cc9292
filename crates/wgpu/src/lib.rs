//! The portable GPU backend: every op is a WGSL compute shader (`shaders/`, one
//! file per op family) run through wgpu, so it runs on Vulkan (Linux, Windows),
//! Metal (macOS) and DirectX 12 (Windows).
//!
//! Work is recorded into one command encoder and submitted in large batches:
//! nothing is submitted until something needs the device's results (a
//! download, a synchronize) or the host writes into a buffer (a write must
//! land after the work recorded before it). Each dispatch's parameters go to a
//! slot of a uniform "arena" buffer (dynamic offsets), so a batch of thousands
//! of dispatches needs no allocation; bind groups are cached per set of buffers.

mod ops;

use rr_core::{Elem, Error, Result, Storage};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The shader sources, one file per op family (see [`kernel_source`]).
const SHADERS: &[(&str, &str)] = &[
    ("elementwise", include_str!("../shaders/elementwise.wgsl")),
    ("gemm", include_str!("../shaders/gemm.wgsl")),
    ("conv", include_str!("../shaders/conv.wgsl")),
    ("pool", include_str!("../shaders/pool.wgsl")),
    ("norm", include_str!("../shaders/norm.wgsl")),
    ("random", include_str!("../shaders/random.wgsl")),
    ("loss", include_str!("../shaders/loss.wgsl")),
    ("optim", include_str!("../shaders/optim.wgsl")),
    ("data", include_str!("../shaders/data.wgsl")),
    // dynamic loss scaling
    ("loss_scale", include_str!("../shaders/loss_scale.wgsl")),
];
const COMMON: &str = include_str!("../shaders/common.wgsl");

/// Every kernel: (entry point, shader file, read-only storage buffers, read-write storage buffers).
/// Binding 0 is the uniform parameters; then the read-only buffers, then the read-write ones.
const KERNELS: &[(&str, &str, u32, u32)] = &[
    ("fill", "elementwise", 0, 1),
    ("relu_forward", "elementwise", 1, 1),
    ("relu_backward", "elementwise", 2, 1),
    ("gelu_forward", "elementwise", 1, 1),
    ("gelu_backward", "elementwise", 2, 1),
    ("axpby", "elementwise", 1, 1),
    ("mul", "elementwise", 2, 1),
    ("add", "elementwise", 2, 1),
    ("add_assign", "elementwise", 1, 1),
    ("column_sums", "elementwise", 1, 1),
    ("copy_words", "elementwise", 1, 1),
    ("scale_to_norm", "elementwise", 0, 1),
    ("gemm", "gemm", 3, 1),
    ("conv_forward", "conv", 3, 1),
    ("conv_backward_weight", "conv", 2, 1),
    ("conv_backward_input", "conv", 2, 1),
    ("maxpool_forward", "pool", 1, 2),
    ("maxpool_backward", "pool", 2, 1),
    ("avgpool_forward", "pool", 1, 1),
    ("avgpool_backward", "pool", 1, 1),
    ("bn_stats", "norm", 1, 2),
    ("bn_apply", "norm", 3, 1),
    ("bn_backward_reduce", "norm", 5, 1),
    ("bn_backward_dx", "norm", 6, 1),
    ("dropout_forward", "random", 2, 2),
    ("augment", "random", 2, 1),
    ("crop_flip", "random", 2, 1),
    ("softmax_cross_entropy", "loss", 2, 2),
    ("sgd_step", "optim", 2, 2),
    ("adam_step", "optim", 2, 2),
    ("gather_batch", "data", 3, 2),
    // dynamic loss scaling
    ("loss_scale_dlogits", "loss_scale", 1, 1),
    ("loss_scale_unscale", "loss_scale", 0, 2),
    ("loss_scale_update", "loss_scale", 0, 1),
];

/// Bytes per parameter slot (the minimum uniform offset alignment wgpu allows everywhere).
const SLOT: u64 = 256;
/// Parameter words a kernel sees (`Params` in common.wgsl): the first 128 bytes of its slot.
const PARAM_WORDS: usize = 32;
/// Slots in the arena: dispatches per batch before a forced submit.
const SLOTS: u64 = 4096;

static NEXT_BUFFER_ID: AtomicU64 = AtomicU64::new(1);

/// A device buffer of `len` elements of `T` (storage is padded to whole 4-byte words).
pub struct WgpuBuf<T> {
    buf: Arc<wgpu::Buffer>,
    len: usize,
    id: u64,
    /// The backend's count of allocated bytes, given back on drop.
    allocated: Option<Arc<AtomicU64>>,
    _elem: PhantomData<T>,
}

impl<T> Drop for WgpuBuf<T> {
    fn drop(&mut self) {
        if let Some(count) = &self.allocated {
            count.fetch_sub(self.buf.size(), Ordering::Relaxed);
        }
    }
}

impl<T> Storage for WgpuBuf<T> {
    fn len(&self) -> usize {
        self.len
    }
}

struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// GPU timestamps for `--profile` (where the adapter can write them between dispatches).
struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// Queries written so far.
    used: u32,
    /// Ticks of queries 0..resolved.len(), read back after they were written.
    resolved: Vec<u64>,
    /// Nanoseconds per tick.
    period: f64,
}

/// Queries in the timestamp set (two per profiled op).
const QUERIES: u32 = 4096;

/// A point in the stream of ops: a GPU timestamp where the adapter has them,
/// else the wall clock after waiting for the GPU.
pub enum WgpuMark {
    Gpu(u32),
    Wall(std::time::Instant),
}

/// Work recorded but not yet submitted.
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    /// The open compute pass: consecutive dispatches share one (copies close it).
    pass: Option<wgpu::ComputePass<'static>>,
    /// Parameters of the recorded dispatches, one 256-byte arena slot each,
    /// written to the arena in one go when the batch is submitted.
    params: Vec<u32>,
    /// Arena slots used by the recorded dispatches.
    slots: u64,
    /// Cached bind groups: (kernel, buffer ids) -> bind group.
    bind_groups: HashMap<(usize, [u64; 8]), wgpu::BindGroup>,
    timestamps: Option<Timestamps>,
}

pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    kernels: Vec<Kernel>,
    arena: wgpu::Buffer,
    /// Bound where an op has no buffer for an optional output.
    dummy: WgpuBuf<f32>,
    pending: Mutex<Pending>,
    name: String,
    software: bool,
    /// The first error wgpu reported outside an error scope (see `wait`).
    uncaptured: Arc<Mutex<Option<String>>>,
    /// The adapter's limit on workgroups per dimension (read once: `limits()` copies a large struct).
    max_groups: u32,
    allocated: Arc<AtomicU64>,
    peak: AtomicU64,
}

pub(crate) fn device_err(msg: impl std::fmt::Display) -> Error {
    Error::Device { backend: "wgpu", msg: msg.to_string() }
}

impl WgpuBackend {
    /// Opens the first adapter wgpu offers (high performance preferred).
    /// `allow_software`: accept a CPU adapter (Mesa's llvmpipe, WARP); `auto`
    /// device selection passes false.
    pub fn new(allow_software: bool) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
            ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let mut best: Option<wgpu::Adapter> = None;
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let found: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
        for a in adapters {
            if !allow_software && a.get_info().device_type == wgpu::DeviceType::Cpu {
                continue;
            }
            if best.as_ref().is_none_or(|b| rank(&a) < rank(b)) {
                best = Some(a);
            }
        }
        let adapter = best.ok_or_else(|| {
            if found.is_empty() {
                device_err("no GPU adapter found (Vulkan, Metal or DirectX 12); on Linux install a Vulkan driver and libvulkan1")
            } else {
                device_err(format!("only software adapters found ({}); pass --device wgpu to use one", found.join("; ")))
            }
        })?;
        let info = adapter.get_info();
        let limits = wgpu::Limits { max_storage_buffers_per_shader_stage: 8, ..wgpu::Limits::downlevel_defaults() }
            .using_resolution(adapter.limits());
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: adapter.limits().max_storage_buffer_binding_size,
            max_buffer_size: adapter.limits().max_buffer_size,
            max_compute_workgroups_per_dimension: adapter.limits().max_compute_workgroups_per_dimension,
            ..limits
        };
        // Timestamps between dispatches, for --profile, where the adapter has them.
        let timing = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let features = adapter.features() & timing;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("rusty-recognition"),
            required_features: if features == timing { timing } else { wgpu::Features::empty() },
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| device_err(format!("cannot open {}: {e}", describe(&info))))?;
        // Validation errors are bugs of ours; report them as errors at the next wait instead
        // of wgpu's default of panicking.
        let uncaptured: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));
        let kernels = compile(&device)?;
        let max_groups = device.limits().max_compute_workgroups_per_dimension;
        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("parameter arena"),
            size: SLOT * SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let dummy_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let dummy = WgpuBuf {
            buf: Arc::new(dummy_buf),
            len: 4,
            id: NEXT_BUFFER_ID.fetch_add(1, Ordering::Relaxed),
            allocated: None,
            _elem: PhantomData,
        };
        let timestamps = (features == timing).then(|| Timestamps {
            set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: QUERIES,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile resolve"),
                size: QUERIES as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            used: 0,
            resolved: Vec::new(),
            period: queue.get_timestamp_period() as f64,
        });
        Ok(WgpuBackend {
            device,
            queue,
            kernels,
            arena,
            dummy,
            pending: Mutex::new(Pending {
                encoder: None,
                pass: None,
                params: Vec::new(),
                slots: 0,
                bind_groups: HashMap::new(),
                timestamps,
            }),
            name: format!("wgpu ({})", describe(&info)),
            software: info.device_type == wgpu::DeviceType::Cpu,
            max_groups,
            uncaptured,
            allocated: Arc::new(AtomicU64::new(0)),
            peak: AtomicU64::new(0),
        })
    }

    /// Whether the adapter is a software rasterizer (llvmpipe, WARP).
    pub fn is_software(&self) -> bool {
        self.software
    }

    fn create<T: Elem>(&self, len: usize) -> Result<WgpuBuf<T>> {
        let bytes = ((len * std::mem::size_of::<T>()).div_ceil(4) * 4).max(4) as u64;
        if bytes > self.device.limits().max_buffer_size {
            return Err(device_err(format!("a buffer of {bytes} bytes is above the adapter's limit")));
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let now = self.allocated.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Ok(WgpuBuf {
            buf: Arc::new(buf),
            len,
            id: NEXT_BUFFER_ID.fetch_add(1, Ordering::Relaxed),
            allocated: Some(self.allocated.clone()),
            _elem: PhantomData,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Submits the recorded work (does not wait).
    fn flush_locked(&self, p: &mut Pending) {
        p.pass = None;
        if !p.params.is_empty() {
            self.queue.write_buffer(&self.arena, 0, bytemuck::cast_slice(&p.params));
            p.params.clear();
        }
        if let Some(encoder) = p.encoder.take() {
            self.queue.submit([encoder.finish()]);
        }
        p.slots = 0;
    }

    /// The encoder, with no pass open (for copies).
    fn encoder_locked<'a>(&self, p: &'a mut Pending) -> &'a mut wgpu::CommandEncoder {
        p.pass = None;
        p.encoder.get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }))
    }

    fn flush(&self) {
        let mut p = self.lock();
        self.flush_locked(&mut p);
    }

    /// Queues `data` for `buf` at byte `offset` (lands before the next submission); pads to whole words.
    fn write_bytes(&self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if data.len().is_multiple_of(4) {
            self.queue.write_buffer(buf, offset, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(buf, offset, &padded);
        }
    }

    fn wait_idle(&self) -> Result<()> {
        self.wait()
    }

    fn wait(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| device_err(format!("waiting for the GPU: {e}")))?;
        if let Some(e) = self.uncaptured.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(device_err(format!("a queued GPU operation failed: {e}")));
        }
        Ok(())
    }

    /// Records `kernel` over `groups` workgroups with `params` (u32 words; f32s as bits) and buffers
    /// (read-only ones first, as the kernel table lists them).
    pub(crate) fn dispatch(
        &self,
        kernel: &str,
        groups: (u32, u32, u32),
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        ids: &[u64],
    ) -> Result<()> {
        let k = KERNELS.iter().position(|(name, ..)| *name == kernel).expect("kernel in the table");
        if params.len() > PARAM_WORDS {
            return Err(device_err(format!("{kernel}: {} parameter words, above the {PARAM_WORDS} a kernel sees", params.len())));
        }
        if groups.0 == 0 || groups.1 == 0 || groups.2 == 0 {
            return Ok(());
        }
        let max = self.max_groups;
        if groups.0 > max || groups.1 > max || groups.2 > max {
            return Err(device_err(format!("{kernel}: {groups:?} workgroups, above the adapter's {max} per dimension")));
        }
        let mut p = self.lock();
        if p.slots == SLOTS {
            self.flush_locked(&mut p);
        }
        let slot = p.slots;
        p.slots += 1;
        let words = (SLOT / 4) as usize;
        // The words past `params` stay 0 (loss.wgsl relies on it).
        p.params.resize((slot as usize + 1) * words, 0);
        p.params[slot as usize * words..][..params.len()].copy_from_slice(params);
        let mut key_ids = [0u64; 8];
        key_ids[..ids.len()].copy_from_slice(ids);
        let key = (k, key_ids);
        if !p.bind_groups.contains_key(&key) {
            if p.bind_groups.len() > 4096 {
                p.bind_groups.clear();
            }
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.arena,
                    offset: 0,
                    size: wgpu::BufferSize::new(PARAM_WORDS as u64 * 4),
                }),
            }];
            for (i, b) in buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
            }
            let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &self.kernels[k].layout,
                entries: &entries,
            });
            p.bind_groups.insert(key, bg);
        }
        let bg = p.bind_groups.get(&key).expect("inserted above").clone();
        if p.pass.is_none() {
            let encoder =
                p.encoder.get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }));
            p.pass =
                Some(encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None }).forget_lifetime());
        }
        let pass = p.pass.as_mut().expect("opened above");
        pass.set_pipeline(&self.kernels[k].pipeline);
        pass.set_bind_group(0, Some(&bg), &[(slot * SLOT) as u32]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        Ok(())
    }

    /// A timestamp at the current point of the recorded work (see [`WgpuMark`]).
    pub(crate) fn mark_now(&self) -> Result<WgpuMark> {
        let mut p = self.lock();
        let index = match &p.timestamps {
            Some(t) if t.used < QUERIES => t.used,
            _ => {
                drop(p);
                self.flush();
                self.wait()?;
                return Ok(WgpuMark::Wall(std::time::Instant::now()));
            }
        };
        if p.pass.is_none() {
            let encoder =
                p.encoder.get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }));
            p.pass =
                Some(encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None }).forget_lifetime());
        }
        let Pending { pass, timestamps, .. } = &mut *p;
        let t = timestamps.as_mut().expect("checked above");
        pass.as_mut().expect("opened above").write_timestamp(&t.set, index);
        t.used += 1;
        Ok(WgpuMark::Gpu(index))
    }

    /// Milliseconds between two marks (waits for the GPU).
    pub(crate) fn mark_elapsed_ms(&self, start: &WgpuMark, end: &WgpuMark) -> Result<f64> {
        match (start, end) {
            (WgpuMark::Gpu(a), WgpuMark::Gpu(b)) => {
                let (a, b) = (*a as usize, *b as usize);
                let needs_read = self.lock().timestamps.as_ref().is_some_and(|t| t.resolved.len() <= b);
                if needs_read {
                    let (used, resolve_ptr) = {
                        let mut p = self.lock();
                        let used = p.timestamps.as_ref().map_or(0, |t| t.used);
                        p.pass = None;
                        let Pending { encoder, timestamps, .. } = &mut *p;
                        let encoder = encoder
                            .get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }));
                        let t = timestamps.as_ref().expect("gpu marks come with timestamps");
                        encoder.resolve_query_set(&t.set, 0..used, &t.resolve, 0);
                        (used, t.resolve.clone())
                    };
                    let bytes = self.read_bytes(&resolve_ptr, 0, used as u64 * 8)?;
                    let ticks: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
                    if let Some(t) = self.lock().timestamps.as_mut() {
                        t.resolved = ticks;
                    }
                }
                let p = self.lock();
                let t = p.timestamps.as_ref().expect("gpu marks come with timestamps");
                Ok((t.resolved[b].saturating_sub(t.resolved[a])) as f64 * t.period / 1e6)
            }
            (WgpuMark::Wall(a), WgpuMark::Wall(b)) => Ok(b.duration_since(*a).as_secs_f64() * 1e3),
            // A pair that straddles the end of the query set: no figure.
            _ => Ok(0.0),
        }
    }

    /// Reads `bytes` bytes at `offset` (multiples of 4) after all recorded work.
    pub(crate) fn read_bytes(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("download"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut p = self.lock();
            self.encoder_locked(&mut p).copy_buffer_to_buffer(src, offset, &staging, 0, bytes);
            self.flush_locked(&mut p);
        }
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv().map_err(|_| device_err("the download was dropped"))?.map_err(|e| device_err(format!("download: {e}")))?;
        let data = slice.get_mapped_range().map_err(|e| device_err(format!("download: {e}")))?[..bytes as usize].to_vec();
        staging.unmap();
        Ok(data)
    }
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} via {:?}, {:?}, driver {} {}", info.name, info.backend, info.device_type, info.driver, info.driver_info).trim().to_string()
}

/// The WGSL of one kernel: its buffer declarations, the common helpers, the
/// part of its file before the first kernel (shared helpers), and its own section
/// (from `//! kernel NAME` to the next such line). A line `//! atomic wN` in the
/// section declares read-write buffer N as `array<atomic<u32>>`.
fn kernel_source(entry: &str, file: &str, reads: u32, writes: u32) -> String {
    let text = SHADERS.iter().find(|(name, _)| *name == file).expect("shader file in the table").1;
    let marker = "//! kernel ";
    let preamble = text.split(marker).next().unwrap_or("");
    let section = text
        .split(marker)
        .skip(1)
        .find(|sec| sec.split_whitespace().next() == Some(entry))
        .unwrap_or_else(|| panic!("{file}.wgsl has no kernel {entry}"));
    let mut src = String::from("@group(0) @binding(0) var<uniform> p: Params;\n");
    for i in 0..reads {
        src.push_str(&format!("@group(0) @binding({}) var<storage, read> r{i}: array<u32>;\n", 1 + i));
    }
    for i in 0..writes {
        let atomic = section.lines().any(|l| l.trim() == format!("//! atomic w{i}"));
        let elem = if atomic { "atomic<u32>" } else { "u32" };
        src.push_str(&format!("@group(0) @binding({}) var<storage, read_write> w{i}: array<{elem}>;\n", 1 + reads + i));
    }
    format!("{src}{COMMON}\n{preamble}\n// {section}")
}

fn compile(device: &wgpu::Device) -> Result<Vec<Kernel>> {
    KERNELS
        .iter()
        .map(|&(entry, file, reads, writes)| {
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(entry),
                source: wgpu::ShaderSource::Wgsl(kernel_source(entry, file, reads, writes).into()),
            });
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(device_err(format!("kernel {entry} ({file}.wgsl): {e}")));
            }
            let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            };
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(PARAM_WORDS as u64 * 4),
                },
                count: None,
            }];
            entries.extend((0..reads).map(|i| storage(1 + i, true)));
            entries.extend((0..writes).map(|i| storage(1 + reads + i, false)));
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &entries });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                ..Default::default()
            });
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(device_err(format!("kernel {entry} ({file}.wgsl): {e}")));
            }
            Ok(Kernel { pipeline, layout })
        })
        .collect()
}
