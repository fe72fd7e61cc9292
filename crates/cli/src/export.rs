//! `export`: a checkpoint as an ONNX model (see [`rr_core::onnx`]).

use anyhow::Result;
use rr_core::{checkpoint, onnx};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// ONNX (opset 17): input the normalized image (batch, C, H, W), output the logits (batch, classes)
    Onnx,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A .safetensors checkpoint written by `train`
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, value_enum, default_value = "onnx")]
    format: Format,
    /// Where to write the model [default: the checkpoint's path with the extension .onnx]
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let Format::Onnx = args.format;
    let ckpt = checkpoint::load(&args.checkpoint)?;
    let model = onnx::from_checkpoint(&ckpt, &args.checkpoint)?;
    let out = args.out.unwrap_or_else(|| args.checkpoint.with_extension("onnx"));
    let bytes = onnx::encode(&model);
    checkpoint::write_atomic(&out, &bytes)?;
    let info = ckpt.dataset(&args.checkpoint)?;
    let [c, h, w] = info.shape;
    println!("wrote {} ({}, ONNX opset {}, {} bytes)", out.display(), ckpt.graph.name, onnx::OPSET, bytes.len());
    println!(
        "input `{}`: float32 (batch, {c}, {h}, {w}), x = (pixel / 255 - mean) / std per channel, mean {:?}, std {:?}",
        onnx::INPUT,
        info.mean,
        info.std
    );
    println!("output `{}`: logits (batch, {}), classes {:?}", onnx::OUTPUT, info.classes, info.class_names);
    Ok(())
}
