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
