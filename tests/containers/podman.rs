//! The podman CLI as the container tests drive it: images built from this
//! checkout, and pods and containers named per test run, removed on drop.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Settings for hosts without systemd (see the file), unless the caller
/// has its own, exactly as deploy/image.sh does.
fn conf() -> Option<PathBuf> {
    std::env::var_os("CONTAINERS_CONF").is_none().then(|| Path::new(ROOT).join("deploy/podman/containers.conf"))
}

fn std_command(args: &[&str]) -> Command {
    let mut command = Command::new("podman");
    command.args(args);
    if let Some(conf) = conf() {
        command.env("CONTAINERS_CONF", conf);
    }
    command
}

fn check(args: &[&str], out: Output) -> String {
    assert!(out.status.success(), "podman {} failed ({}):\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs podman to completion without blocking the runtime; panics with its
/// stderr if it fails. Returns stdout, trimmed.
pub async fn podman(args: &[&str]) -> String {
    check(args, podman_output(args).await)
}

/// Runs podman to completion; the caller judges the outcome.
pub async fn podman_output(args: &[&str]) -> Output {
    let mut command = tokio::process::Command::from(std_command(args));
    command.output().await.unwrap_or_else(|e| panic!("cannot run podman: {e}"))
}

/// As [`podman`], in directory `dir`.
pub async fn podman_in(dir: &Path, args: &[&str]) -> String {
    let mut command = tokio::process::Command::from(std_command(args));
    check(args, command.current_dir(dir).output().await.unwrap_or_else(|e| panic!("cannot run podman: {e}")))
}

/// Whether podman is installed and can talk to its storage.
pub fn available() -> bool {
    std_command(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]).output().is_ok_and(|o| o.status.success())
}

/// The images every test uses, built once per test run from this checkout.
pub struct Images {
    /// outrider's own image, as deploy/image.sh builds it for users.
    pub outrider: String,
    /// The stand-in legacy app: busybox httpd and a slow CGI.
    pub app: String,
    /// The app's image with outrider as its entrypoint (wrap mode).
    pub wrap: String,
    /// The app's image with a `python -m http.server` stand-in.
    pub python: String,
}

pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(build_images)
}

fn build_images() -> Images {
    let started = Instant::now();
    eprintln!("building the images with deploy/image.sh and deploy/demo-app/build.sh (a release build the first time)");
    // The release build deploy/image.sh runs goes to its own target
    // directory (target/<arch>-unknown-linux-gnu), so it does not wait for
    // the lock of the test build that runs us.
    let outrider = script("deploy/image.sh", ("IMAGE", "localhost/outrider:test"));
    let app = script("deploy/demo-app/build.sh", ("APP_IMAGE", "localhost/outrider-test-app:test"));

    // Wrap mode exactly as the Dockerfile tells users to do it.
    let wrap = build(
        "localhost/outrider-test-wrap:test",
        &format!(
            "FROM {app}\nCOPY --from={outrider} /outrider /usr/local/bin/outrider\nENTRYPOINT [\"/usr/local/bin/outrider\", \"--\", \"/app.sh\"]\n"
        ),
        &[],
    );
    // The app of the Kubernetes manifests runs `python -m http.server`.
    let python = build(
        "localhost/outrider-test-python:test",
        &format!("FROM {app}\nCOPY python /usr/local/bin/python\n"),
        &[Path::new(ROOT).join("tests/containers/python-standin/python")],
    );
    eprintln!("images built in {:.1?}", started.elapsed());
    Images { outrider, app, wrap, python }
}

/// Runs one of the repository's image scripts; returns the image it names
/// on its last line.
fn script(path: &str, (var, image): (&str, &str)) -> String {
    let mut command = Command::new("bash");
    command.arg(Path::new(ROOT).join(path)).env(var, image);
    // Cargo runs a test with its package's variables set (and the build
    // script's `rustc-env` values). Build scripts watch some of them (ring:
    // CARGO_MANIFEST_DIR), so passed on they would make the script's
    // release build redo what the benchmark or a developer built a moment
    // ago.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let from_cargo_test = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_"].iter().any(|p| key.starts_with(p))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR", "BUILD_GIT_COMMIT"].contains(&key.as_ref());
        if from_cargo_test {
            command.env_remove(key.as_ref());
        }
    }
    if let Some(conf) = conf() {
        command.env("CONTAINERS_CONF", conf);
    }
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    assert!(out.status.success(), "{path} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    if let Some(line) = String::from_utf8_lossy(&out.stderr).lines().last() {
        eprintln!("{line}");
    }
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_owned()
}

/// `podman build` of `containerfile` with `files` beside it. The image the
/// tag named before is removed (if no container uses it), so that test runs
/// do not pile up untagged images.
pub fn build(tag: &str, containerfile: &str, files: &[PathBuf]) -> String {
    let context = TempDir::new("image");
    std::fs::write(context.path().join("Containerfile"), containerfile).expect("write Containerfile");
    for file in files {
        // std::fs::copy keeps the permissions (the scripts' +x).
        std::fs::copy(file, context.path().join(file.file_name().expect("a file name"))).expect("copy into the build context");
    }
    let id = |tag: &str| std_command(&["image", "inspect", "--format", "{{.Id}}", tag]).output().ok().filter(|o| o.status.success());
    let before = id(tag);
    let dir = context.path().to_str().expect("utf-8 temp dir");
    let args = ["build", "--quiet", "-t", tag, dir];
    check(&args, std_command(&args).output().expect("podman build"));
    if let Some(before) = before.filter(|b| id(tag).is_none_or(|now| now.stdout != b.stdout)) {
        let _ = std_command(&["rmi", String::from_utf8_lossy(&before.stdout).trim()]).output();
    }
    tag.to_owned()
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let path = std::env::temp_dir().join(format!("outrider-{what}-{}", unique()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A name no other test or test run uses.
pub fn unique() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Every container runs as Kubernetes' restricted profile asks (the image
/// sets the non-root user), and logs to a file `podman logs` reads back
/// (there is no journald on our machines).
const RUN_FLAGS: [&str; 4] = ["--read-only", "--cap-drop=all", "--security-opt=no-new-privileges", "--log-driver=k8s-file"];

/// A pod: containers sharing one network namespace, each with its own PID 1.
pub struct Pod {
    pub name: String,
    /// Named volumes made for the pod (its emptyDirs), removed with it.
    volumes: std::sync::Mutex<Vec<String>>,
}

impl Pod {
    pub async fn create(what: &str) -> Self {
        let name = format!("outrider-test-{what}-{}", unique());
        podman(&["pod", "create", "--name", &name]).await;
        Self { name, volumes: Default::default() }
    }

    /// Starts a container in the pod; returns its name.
    pub async fn run(&self, what: &str, image: &str, env: &[(&str, &str)]) -> String {
        self.run_with(what, image, env, &[]).await
    }

    /// As [`Pod::run`], with more `podman run` flags (volumes).
    pub async fn run_with(&self, what: &str, image: &str, env: &[(&str, &str)], flags: &[&str]) -> String {
        let name = format!("{}-{what}", self.name);
        let mut extra = vec![format!("--pod={}", self.name)];
        extra.extend(flags.iter().map(|f| f.to_string()));
        run_container(&name, image, env, &extra.iter().map(String::as_str).collect::<Vec<_>>()).await;
        name
    }

    /// Runs an init container to completion (panics if it fails), as the
    /// kubelet runs one before the pod's containers; `args` follow the
    /// image's entrypoint.
    pub async fn run_init(&self, what: &str, image: &str, flags: &[&str], args: &[&str]) {
        let name = format!("{}-{what}", self.name);
        let pod = format!("--pod={}", self.name);
        let mut all = vec!["run", "--name", &name, &pod];
        all.extend(RUN_FLAGS);
        all.extend(flags);
        all.push(image);
        all.extend(args);
        podman(&all).await;
    }

    /// An `emptyDir` of the pod: a named volume, removed with the pod.
    /// Returns its name, for `--volume=NAME:PATH`.
    pub fn empty_dir(&self, what: &str) -> String {
        let name = format!("{}-{what}", self.name);
        self.volumes.lock().expect("volumes").push(name.clone());
        name
    }

    /// The pod's IP on the podman bridge: what the host reaches it at.
    pub async fn ip(&self) -> IpAddr {
        let infra = podman(&["pod", "inspect", &self.name, "--format", "{{.InfraContainerID}}"]).await;
        container_ip(&infra).await
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        remove_pod(&self.name);
        for volume in self.volumes.get_mut().map(std::mem::take).unwrap_or_default() {
            let _ = std_command(&["volume", "rm", "-f", &volume]).output();
        }
    }
}

/// Removes a pod and its containers, now (for clean-up on drop).
pub fn remove_pod(name: &str) {
    let _ = std_command(&["pod", "rm", "-f", "-t", "0", name]).output();
}

/// Removes the volumes whose names start with `prefix`.
pub fn remove_volumes(prefix: &str) {
    let filter = format!("name=^{prefix}");
    let Ok(out) = std_command(&["volume", "ls", "--quiet", "--filter", &filter]).output() else { return };
    for volume in String::from_utf8_lossy(&out.stdout).lines().filter(|v| v.starts_with(prefix)) {
        let _ = std_command(&["volume", "rm", "-f", volume]).output();
    }
}

pub fn remove_secret(name: &str) {
    let _ = std_command(&["secret", "rm", name]).output();
}

/// A container of its own (wrap mode), removed on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    pub async fn run(what: &str, image: &str, env: &[(&str, &str)]) -> Self {
        let name = format!("outrider-test-{what}-{}", unique());
        run_container(&name, image, env, &[]).await;
        Self { name }
    }

    pub async fn ip(&self) -> IpAddr {
        container_ip(&self.name).await
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std_command(&["rm", "-f", "-t", "0", &self.name]).output();
    }
}

async fn run_container(name: &str, image: &str, env: &[(&str, &str)], extra: &[&str]) {
    let env: Vec<String> = env.iter().map(|(k, v)| format!("--env={k}={v}")).collect();
    let mut args = vec!["run", "--detach", "--name", name];
    args.extend(RUN_FLAGS);
    args.extend(extra);
    args.extend(env.iter().map(String::as_str));
    args.push(image);
    podman(&args).await;
}

async fn container_ip(name: &str) -> IpAddr {
    let ip = podman(&["inspect", name, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"]).await;
    ip.parse().unwrap_or_else(|_| panic!("{name} has no IP address: {ip:?}"))
}

/// The host's own address on the podman bridge: where a container reaches
/// a server of the test's (the OTLP receiver) without a published port.
pub async fn bridge_gateway() -> IpAddr {
    let gw = podman(&["network", "inspect", "podman", "--format", "{{range .Subnets}}{{.Gateway}}{{end}}"]).await;
    gw.parse().unwrap_or_else(|_| panic!("podman network has no gateway: {gw:?}"))
}

/// `podman stop -t grace`: SIGTERM, then SIGKILL at the deadline, as the
/// kubelet does. Returns the exit code and how long the stop took.
pub async fn stop(name: &str, grace: Duration) -> (i32, Duration) {
    let started = Instant::now();
    podman(&["stop", "-t", &grace.as_secs().to_string(), name]).await;
    let took = started.elapsed();
    (exit_code(name).await, took)
}

pub async fn exit_code(name: &str) -> i32 {
    let code = podman(&["inspect", name, "--format", "{{.State.ExitCode}}"]).await;
    code.parse().unwrap_or_else(|_| panic!("exit code of {name}: {code:?}"))
}

pub async fn logs(name: &str) -> String {
    let out = podman_output(&["logs", name]).await;
    // podman logs replays the container's stdout and stderr on its own.
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The host PID of a running container's PID 1.
pub async fn host_pid(name: &str) -> u32 {
    let pid = podman(&["inspect", name, "--format", "{{.State.Pid}}"]).await;
    pid.parse().unwrap_or_else(|_| panic!("pid of {name}: {pid:?}"))
}
