//! `--precision` on a machine without a GPU: the CPU computes in fp32 and says
//! so when asked for another precision; unknown names are refused.

mod common;
use common::bin;

#[test]
fn the_cpu_says_it_stays_fp32() {
    let dir = std::env::temp_dir().join(format!("rr-precision-{}", std::process::id()));
    let o = bin()
        .args(["train", "--device", "cpu", "--epochs", "1", "--limit-train", "256", "--precision", "bf16", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("the CPU computes in fp32 only; --precision bf16 does not apply"), "{err}");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(config.contains("\"precision\": \"fp32\""), "config.json records the precision used: {config}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_precision_is_refused() {
    let o = bin().args(["eval", "--precision", "fp8"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown precision `fp8`: expected auto, fp32, tf32, bf16 or fp16"), "{err}");
}

/// fp16 on the CPU: a note that it (and its loss scaling) does not apply, then
/// an fp32 run without loss scaling, as config.json records.
#[test]
fn fp16_on_the_cpu_trains_in_fp32_without_loss_scaling() {
    let dir = std::env::temp_dir().join(format!("rr-precision-fp16-{}", std::process::id()));
    let o = bin()
        .args(["train", "--device", "cpu", "--epochs", "1", "--limit-train", "256", "--precision", "fp16", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("note: the CPU computes in fp32 only; --precision fp16 does not apply there (nor its loss scaling: training runs in fp32 without)"),
        "{err}"
    );
    assert!(!out.contains("loss scaling") && !out.contains("loss_scale"), "{out}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["precision"], "fp32", "{config}");
    assert_eq!(config["train"]["loss_scale"], serde_json::json!({ "kind": "off" }), "{config}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// wgpu computes in fp32 only: fp16 is refused there, naming the device.
#[test]
fn fp16_on_wgpu_is_refused() {
    let o = bin().args(["train", "--device", "wgpu", "--epochs", "1", "--limit-train", "64", "--precision", "fp16"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error: --precision: invalid precision: fp16 is not available on wgpu ("), "{err}");
    assert!(err.contains("it computes in fp32 only"), "{err}");
}
