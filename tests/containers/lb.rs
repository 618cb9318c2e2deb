//! HAProxy standing in for a Service: kube-proxy's load balancing and the
//! endpoints controller's removal of a pod that stops being ready.
//!
//! TCP mode, as kube-proxy balances connections, not requests; a health
//! check of each pod every 250 ms, down after 4 failures: a pod leaves the
//! rotation about 1 s after its readiness fails, the propagation lag a
//! real cluster has. No retries on another pod: kube-proxy has none.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::podman::TempDir;

/// Pod slots, more than a rollout with surge ever needs at once.
const SLOTS: usize = 4;
/// The port each pod serves on.
pub const POD_PORT: u16 = 8080;

pub struct Haproxy {
    child: Child,
    dir: TempDir,
    pub addr: SocketAddr,
}

impl Haproxy {
    /// Whether haproxy is installed.
    pub fn available() -> bool {
        Command::new("haproxy").arg("-v").output().is_ok_and(|o| o.status.success())
    }

    /// A frontend on a free loopback port; pods are health-checked with
    /// `GET check_path` on `check_port`.
    pub async fn start(check_port: u16, check_path: &str) -> Self {
        let dir = TempDir::new("haproxy");
        let addr = free_loopback_port();
        let config = format!(
            "global
    stats socket {socket} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 0
frontend service
    bind {addr}
    default_backend pods
backend pods
    option httpchk GET {check_path}
    default-server check inter 250ms fall 4 rise 1 port {check_port}
    server-template pod 1-{SLOTS} 127.0.0.1:{POD_PORT} disabled
",
            socket = dir.path().join("admin.sock").display()
        );
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let lb = Self { child, dir, addr };
        super::common::eventually("haproxy's admin socket", || async { lb.try_command("show info").await.map(|_| ()) }).await;
        lb
    }

    async fn try_command(&self, command: &str) -> Option<String> {
        let mut socket = tokio::net::UnixStream::connect(self.dir.path().join("admin.sock")).await.ok()?;
        socket.write_all(format!("{command}\n").as_bytes()).await.ok()?;
        let mut out = String::new();
        socket.read_to_string(&mut out).await.ok()?;
        Some(out)
    }

    async fn command(&self, command: &str) -> String {
        let out = self.try_command(command).await.unwrap_or_else(|| panic!("haproxy: {command}: no answer"));
        assert!(!out.contains("Require") && !out.contains("No such"), "haproxy: {command}: {out}");
        out
    }

    /// Puts a pod into slot `slot` (1-based); it takes traffic once its
    /// health check passes.
    pub async fn add(&self, slot: usize, ip: IpAddr) {
        self.command(&format!("set server pods/pod{slot} addr {ip} port {POD_PORT}")).await;
        self.command(&format!("set server pods/pod{slot} state ready")).await;
    }

    /// Takes slot `slot` out for good (the endpoints controller forgetting
    /// a deleted pod).
    pub async fn remove(&self, slot: usize) {
        self.command(&format!("set server pods/pod{slot} state maint")).await;
    }

    /// Waits until slot `slot` passed its health check and takes traffic.
    pub async fn until_up(&self, slot: usize) {
        let name = format!("pod{slot}");
        super::common::eventually(&format!("haproxy to see {name} up"), || async {
            let stat = self.try_command("show stat").await?;
            // CSV: pxname,svname,...,status (18th field).
            stat.lines()
                .map(|l| l.split(',').collect::<Vec<_>>())
                .any(|f| f.len() > 17 && f[0] == "pods" && f[1] == name && f[17] == "UP")
                .then_some(())
        })
        .await;
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_loopback_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}
