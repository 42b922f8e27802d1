//! `ssh -o ProxyCommand="ssmx ssh-proxy %h --port P"` to a real sshd on loopback.

use std::process::{Command, Stdio};

use crate::common::{ChildGuard, Stack};

fn keygen(path: &std::path::Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client) must be installed: scripts/setup-test-env");
    assert!(status.success());
}

#[test]
fn ssh_through_the_proxy_command_runs_a_remote_command() {
    let stack = Stack::start();
    let dir = stack.path("ssh");
    std::fs::create_dir_all(&dir).unwrap();
    keygen(&dir.join("host_key"));
    keygen(&dir.join("user_key"));
    std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
    let port = crate::common::free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n",
            hk = dir.join("host_key").display(),
            ak = dir.join("authorized_keys").display(),
            pid = dir.join("sshd.pid").display(),
        ),
    )
    .unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    let sshd_path = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("sshd (openssh-server) must be installed: scripts/setup-test-env");
    let _sshd = ChildGuard(
        Command::new(sshd_path)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("sshd.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
        "sshd",
    );
    crate::common::connect(port);

    let proxy = format!(
        "{} --endpoint-url {} --region {} ssh-proxy %h --port {port}",
        crate::common::bin("ssmx").display(),
        stack.url,
        crate::common::REGION
    );
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let mut ssh = Command::new("ssh");
    stack.aws_env(&mut ssh);
    let out = ssh
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(dir.join("user_key"))
        .arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        .arg(format!("{user}@{}", stack.instance_id))
        .arg("echo ssh-through-ssmx-$((40+2))")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ssh-through-ssmx-42"),
        "ssh failed: {}\nstderr: {}\nsshd: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default(),
        stack.logs()
    );
}
