//! `tunelab info` on broken asset folders: the error names the file and the fix; unknown
//! values of the CPU switches in the environment are refused at start-up.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::process::Command;

fn tunelab(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(args)
        .env_remove("TUNELAB_ASSETS")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn missing_assets_name_the_manifest_and_the_fetch_command() {
    let dir = std::env::temp_dir().join(format!("tunelab-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, text) = tunelab(&["info", "--assets", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("manifest.json is missing"), "{text}");
    assert!(text.contains("cargo xtask assets"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn malformed_manifest_is_reported_not_panicked() {
    let dir = std::env::temp_dir().join(format!("tunelab-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("manifest.json"), "{ not json").unwrap();
    let (ok, text) = tunelab(&["info", "--assets", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("is not valid"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

/// A CPU switch set to a value it does not know stops the program before any work, naming
/// the variable and its two values; a known value runs.
#[test]
fn unknown_cpu_switch_values_are_refused() {
    for (var, values) in [
        ("TUNELAB_CPU_WAIT", "active or passive"),
        ("TUNELAB_CPU_PASSES", "split or whole"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
            .args(["info", "--help"])
            .env(var, "sometimes")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            text.contains(&format!("{var} is `sometimes`; expected {values}")),
            "{text}"
        );
        let known = values.split(" or ").nth(1).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
            .args(["info", "--help"])
            .env(var, known)
            .output()
            .unwrap();
        assert!(out.status.success(), "{var}={known}");
    }
}
