//! `ssmx exec` end to end: stdout and stderr kept apart, the remote exit code becomes ours.

use crate::common::Stack;

#[test]
fn exec_keeps_streams_apart_and_returns_the_exit_code() {
    let stack = Stack::start();
    let out = stack
        .ssmx()
        .args([
            "exec",
            &stack.instance_id,
            "--",
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; exit 3",
        ])
        .output()
        .unwrap();
    stack.assert_exit(&out, 3);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr\n"));

    let ok = stack
        .ssmx()
        .args(["exec", &stack.instance_id, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
}

#[test]
fn exec_moves_large_output_intact() {
    let stack = Stack::start();
    let out = stack
        .ssmx()
        .args(["exec", &stack.instance_id, "--", "sh", "-c", "seq 1 200000"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert!(
        out.stdout == expected.as_bytes(),
        "output differs ({} bytes vs {})",
        out.stdout.len(),
        expected.len()
    );
}

#[test]
fn exec_against_an_unknown_target_says_so() {
    let stack = Stack::start();
    let out = stack
        .ssmx()
        .args(["exec", "mi-00000000000000000", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("not connected") || err.contains("not found") || err.contains("unknown"),
        "{err}"
    );
}
