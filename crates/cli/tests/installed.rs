//! How a binary run outside the repository (as `cargo install` leaves it)
//! finds MNIST: `RR_DATA_DIR/mnist`, else the repository it was built from.

mod common;

use common::{bin, repo};
use std::path::PathBuf;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-installed-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `train` for a few steps from `cwd` into `cwd/out`, with RR_DATA_DIR set to `data_root` or unset.
fn train_from(cwd: &std::path::Path, out: &str, data_root: Option<&std::path::Path>) -> std::process::Output {
    let mut c = bin();
    c.current_dir(cwd).args(["train", "--device", "cpu", "--epochs", "1", "--limit-train", "256", "--out"]).arg(cwd.join(out));
    match data_root {
        Some(root) => c.env("RR_DATA_DIR", root),
        None => c.env_remove("RR_DATA_DIR"),
    };
    c.output().unwrap()
}

#[test]
fn data_is_found_through_rr_data_dir_or_the_build_repository() {
    let elsewhere = temp_dir("cwd");
    // RR_DATA_DIR without an mnist folder: an error naming it, not a silent fallback.
    let empty = temp_dir("empty");
    let o = train_from(&elsewhere, "a", Some(&empty));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("RR_DATA_DIR") && stderr.contains(&empty.join("mnist").display().to_string()), "{stderr}");

    // RR_DATA_DIR holding mnist/ (a copy of the shipped files).
    let root = temp_dir("root");
    std::fs::create_dir_all(root.join("mnist")).unwrap();
    for entry in std::fs::read_dir(repo().join("data/mnist")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, root.join("mnist").join(path.file_name().unwrap())).unwrap();
    }
    let o = train_from(&elsewhere, "b", Some(&root));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains(&format!("from {}", root.join("mnist").display())), "{stdout}");

    // No variable, no data/ here: the repository the binary was built from.
    let o = train_from(&elsewhere, "c", None);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let built_from = repo().canonicalize().unwrap().join("data/mnist");
    assert!(stdout.contains(&format!("from {}", built_from.display())), "{stdout}");
    for dir in [elsewhere, empty, root] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
