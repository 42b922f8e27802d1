//! `ssmx demo`, the README's main command: gateway, agent and shell in one process, torn down
//! when the shell ends; the banner's commands work as printed from a second terminal that has
//! nothing of ours on its PATH.

use std::process::Command;

use crate::common::{self, Tmux};

/// The banner line that starts with `prefix` (after its indentation) and contains `needle`,
/// without a trailing comment.
fn banner_line(banner: &str, prefix: &str, needle: &str) -> String {
    let line = banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix) && l.contains(needle))
        .unwrap_or_else(|| panic!("no line {prefix:?}…{needle:?} in the banner:\n{banner}"));
    line.split("  #").next().unwrap().trim().to_owned()
}

/// The gateway URL the banner names.
fn url(banner: &str) -> &str {
    let start = banner
        .find("http://127.0.0.1:")
        .expect("the banner names the gateway");
    banner[start..].split([' ', ',']).next().unwrap()
}

/// A shell command line that runs `command` after the banner's exports, in an environment with
/// only the system's directories (and aws-cli's) on PATH.
fn second_terminal(exports: &str, command: &str) -> String {
    format!(
        "env -i HOME=\"$HOME\" TERM=xterm PATH={}:/usr/bin:/bin sh -c '{exports}; {command}'",
        common::venv_bin("aws").parent().unwrap().display()
    )
}

#[test]
fn demo_opens_a_shell_its_banner_commands_work_and_it_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::start(
        dir.path(),
        &format!("{} demo", common::bin("ssmx").display()),
        220,
        50,
    );
    let banner = tmux.wait_for_text("(ssmx demo) ");
    let scratch = banner
        .split_whitespace()
        .find(|w| w.contains("ssmx-demo-"))
        .map(|w| w.trim_end_matches([')', ',', '.']).to_owned())
        .expect("the banner names the scratch directory");
    assert!(
        banner.contains("`exit`"),
        "the banner says how to end: {banner}"
    );
    let exports = [
        banner_line(&banner, "export PATH=", ""),
        banner_line(&banner, "export AWS_ACCESS_KEY_ID=", ""),
    ]
    .join("; ");
    assert!(
        exports.contains("AWS_DEFAULT_REGION="),
        "aws-cli v1 reads it: {exports}"
    );

    // ssmx exec and ssmx run, as printed.
    for (subcommand, expected) in [(" exec ", "Linux"), (" run ", "hello from Run Command")] {
        let line = banner_line(
            &banner,
            &format!("ssmx --endpoint-url {}", url(&banner)),
            subcommand,
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(second_terminal(&exports, &line))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(expected),
            "{line}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // ssmx shell, and aws-cli with the plugin the demo put on PATH, each in a terminal of its
    // own.
    for line in [
        banner_line(&banner, "ssmx --endpoint-url", " shell "),
        banner_line(&banner, "aws ssm start-session", ""),
    ] {
        let other_dir = tempfile::tempdir().unwrap();
        let other = Tmux::start(other_dir.path(), &second_terminal(&exports, &line), 120, 30);
        other.wait_for_text("(ssmx demo) ");
        other.type_text("echo second-$((2+3))");
        other.send_keys(&["Enter"]);
        other.wait_for_text("second-5");
        other.type_text("exit");
        other.send_keys(&["Enter"]);
        let screen = other.wait_for_text("[exit ");
        assert!(screen.contains("[exit 0]"), "{line}\n{screen}");
    }

    // The port forward reaches the gateway's metrics through the agent, as the banner says.
    let forward = banner_line(&banner, "ssmx --endpoint-url", " port-forward ");
    let curl = banner
        .lines()
        .find(|l| l.contains(" port-forward "))
        .and_then(|l| l.split("# then: ").nth(1))
        .expect("the banner says what to do with the forward")
        .trim()
        .to_owned();
    let mut forwarding = common::ChildGuard(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec {}",
                second_terminal(&exports, &format!("exec {forward}"))
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        "port-forward",
    );
    let metrics = common::wait_for(
        || {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("{curl} -sf"))
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("ssmx_connected_agents 1").then_some(text)
        },
        "the metrics through the port forward",
    );
    assert!(metrics.contains("# EOF"), "{metrics}");
    forwarding.kill();

    // The demo's own shell; no log line reached its terminal.
    tmux.type_text("echo demo-$((4*4))-ok");
    tmux.send_keys(&["Enter"]);
    let screen = tmux.wait_for_text("demo-16-ok");
    for level in [" INFO ", " WARN ", " ERROR "] {
        assert!(
            !screen.contains(level),
            "a log line in the terminal:\n{screen}"
        );
    }
    tmux.send_keys(&["C-d"]);
    let screen = tmux.wait_for_text("[exit ");
    assert!(screen.contains("[exit 0]"), "{screen}");
    assert!(
        !std::path::Path::new(&scratch).exists(),
        "{scratch} was left behind"
    );
}
