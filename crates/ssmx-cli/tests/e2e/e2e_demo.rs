//! `ssmx demo`, the README's main command: gateway, agent and shell in one process, torn down
//! when the shell ends.

use crate::common::Tmux;

#[test]
fn demo_opens_a_shell_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::start(
        dir.path(),
        &format!("{} demo", crate::common::bin("ssmx").display()),
        120,
        40,
    );
    let banner = tmux.wait_for_text("Starting session with SessionId");
    assert!(
        banner.contains("aws ssm start-session --endpoint-url http://127.0.0.1:"),
        "{banner}"
    );
    let scratch = banner
        .split_whitespace()
        .find(|w| w.contains("ssmx-demo-"))
        .map(|w| w.trim_end_matches(')').to_owned())
        .expect("the banner names the scratch directory");

    tmux.type_text("echo demo-$((4*4))-ok");
    tmux.send_keys(&["Enter"]);
    tmux.wait_for_text("demo-16-ok");
    tmux.send_keys(&["C-d"]);
    let screen = tmux.wait_for_text("[exit ");
    assert!(screen.contains("[exit 0]"), "{screen}");
    assert!(
        !std::path::Path::new(&scratch).exists(),
        "{scratch} was left behind"
    );
}
