//! Interactive shell end to end: the real `ssmx shell` in a real terminal (tmux) → gateway →
//! agent → a shell on a PTY, and back.

use crate::common::{Stack, Tmux};

fn shell_command(stack: &Stack) -> String {
    stack.command_line(&["shell", &stack.instance_id])
}

#[test]
fn shell_runs_commands_resizes_and_exits_cleanly() {
    let stack = Stack::start();
    let tmux = Tmux::start(stack.dir.path(), &shell_command(&stack), 100, 30);

    tmux.type_text("echo ssmx-$((6*7))-ok");
    tmux.send_keys(&["Enter"]);
    tmux.wait_for_text("ssmx-42-ok");

    // The remote PTY follows the local terminal's size.
    tmux.type_text("stty size");
    tmux.send_keys(&["Enter"]);
    tmux.wait_for_text("30 100");
    tmux.resize(132, 40);
    std::thread::sleep(std::time::Duration::from_millis(300));
    tmux.type_text("clear; stty size");
    tmux.send_keys(&["Enter"]);
    tmux.wait_for_text("40 132");

    // Control keys pass through: Ctrl-C interrupts the remote command, not the client.
    tmux.type_text("sleep 30; echo not-interrupted");
    tmux.send_keys(&["Enter"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    tmux.send_keys(&["C-c"]);
    tmux.type_text("echo after-$((1+1))-interrupt");
    tmux.send_keys(&["Enter"]);
    let screen = tmux.wait_for_text("after-2-interrupt");
    assert!(
        !screen.lines().any(|l| l.trim() == "not-interrupted"),
        "Ctrl-C did not reach the remote shell:\n{screen}"
    );

    // Leaving the shell ends the client with status 0.
    tmux.type_text("exit");
    tmux.send_keys(&["Enter"]);
    let screen = tmux.wait_for_text("[exit ");
    assert!(
        screen.contains("[exit 0]"),
        "client did not exit cleanly:\n{screen}\n{}",
        stack.logs()
    );
}

#[test]
fn shell_escape_sequence_ends_a_session() {
    let stack = Stack::start();
    let tmux = Tmux::start(stack.dir.path(), &shell_command(&stack), 80, 24);
    tmux.type_text("echo ready-$((2+3))");
    tmux.send_keys(&["Enter"]);
    tmux.wait_for_text("ready-5");
    // `~.` right after a newline ends the session from the keyboard, as in ssh.
    tmux.send_keys(&["Enter"]);
    tmux.type_text("~.");
    let screen = tmux.wait_for_text("[exit ");
    assert!(
        !screen.contains("~."),
        "escape sequence was sent to the remote shell:\n{screen}"
    );
}

#[test]
fn updated_session_preferences_apply_to_the_next_shell() {
    let stack = Stack::start();
    // As the AWS guide does it: the preferences document, updated at $LATEST.
    let preferences = serde_json::json!({
        "schemaVersion": "1.0",
        "description": "Document to hold regional settings for Session Manager",
        "sessionType": "Standard_Stream",
        "inputs": {
            "idleSessionTimeout": "15",
            "runAsEnabled": false,
            "runAsDefaultUser": "",
            "shellProfile": {"linux": "echo profile-ran-$((40+2))", "windows": ""}
        }
    });
    let file = stack.path("SessionManagerRunShell.json");
    std::fs::write(&file, preferences.to_string()).unwrap();
    let updated = stack.aws_json(&[
        "ssm",
        "update-document",
        "--name",
        "SSM-SessionManagerRunShell",
        "--document-version",
        "$LATEST",
        "--content",
        &format!("file://{}", file.display()),
    ]);
    let description = &updated["DocumentDescription"];
    assert_eq!(description["DocumentVersion"], "2", "{updated}");
    assert_eq!(description["DefaultVersion"], "2", "{updated}");
    let builtin = stack.aws_json(&[
        "ssm",
        "get-document",
        "--name",
        "SSM-SessionManagerRunShell",
        "--document-version",
        "1",
    ]);
    let content: serde_json::Value =
        serde_json::from_str(builtin["Content"].as_str().unwrap()).unwrap();
    assert_eq!(content["inputs"]["shellProfile"]["linux"], "", "{builtin}");

    let tmux = Tmux::start(stack.dir.path(), &shell_command(&stack), 100, 30);
    tmux.wait_for_text("profile-ran-42");
    tmux.type_text("exit");
    tmux.send_keys(&["Enter"]);
    tmux.wait_for_text("[exit ");
    drop(tmux);

    // Version 1 the default again: the built-in preferences, no profile.
    crate::common::run_ok(stack.aws().args([
        "ssm",
        "update-document-default-version",
        "--name",
        "SSM-SessionManagerRunShell",
        "--document-version",
        "1",
    ]));
    let tmux = Tmux::start(stack.dir.path(), &shell_command(&stack), 100, 30);
    tmux.type_text("echo plain-$((1+2))");
    tmux.send_keys(&["Enter"]);
    let screen = tmux.wait_for_text("plain-3");
    assert!(!screen.contains("profile-ran"), "{screen}");
}
