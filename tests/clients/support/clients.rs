//! The real client programs (skopeo, buildah, podman, curl, openssl), run with a configuration
//! that belongs to the test and not to the host.
//!
//! Invariants:
//! - A missing program fails the test with the command that installs it; nothing is skipped.
//! - buildah and podman store images under the test's temporary directory (`vfs`: no kernel
//!   mounts, so nothing outlives a failed test); registries, auth and signature policy come
//!   from files written here, never from `/etc/containers` or the user's home.
//! - Every command has a deadline, and a failure shows the command line, stdout and stderr;
//!   a command left running by a failed test is killed (`Running`).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// No single client command in these tests should take anywhere near this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Fails with an actionable message unless `program` is on `PATH`.
pub fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not installed: run tools/check, which installs every client the \
         black-box tests drive (apt-get install skopeo buildah podman umoci curl openssl \
         busybox-static fuse-overlayfs docker.io haproxy docker-compose iproute2)"
    );
}

/// Runs `command` to completion and returns its output, whatever its exit status.
pub fn output(command: &mut Command) -> Output {
    output_with_input(command, None)
}

/// Runs `command` with `input` (if any) as its stdin, to completion, and returns its output,
/// whatever its exit status.
pub fn output_with_input(command: &mut Command, input: Option<&[u8]>) -> Output {
    Running::start(command, input).finish()
}

/// A client command running in the background while the test does something else: its pipes
/// are read as it goes (a verbose command cannot block on a full pipe), `finish` waits with
/// the command deadline, and dropping it (a failed test) kills the process.
pub struct Running {
    line: String,
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Running {
    /// Starts `command` with `input` (if any) as its stdin.
    pub fn start(command: &mut Command, input: Option<&[u8]>) -> Running {
        let program = command.get_program().to_string_lossy().into_owned();
        require(&program);
        let line = describe(command);
        let stdin = if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("starting `{line}`: {err}"));
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            let input = input.to_vec();
            // A writer thread: a command that prints before reading cannot deadlock the test.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        let read = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let stdout = read(Box::new(child.stdout.take().expect("stdout is piped")));
        let stderr = read(Box::new(child.stderr.take().expect("stderr is piped")));
        Running {
            line,
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| {
            child
                .try_wait()
                .expect("waiting for a client command")
                .is_none()
        })
    }

    /// Waits for the process to exit (killing it past the deadline) and returns its output.
    pub fn finish(mut self) -> Output {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut child = self.child.take().expect("the process");
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for a client command") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{}` did not finish within {COMMAND_TIMEOUT:?}", self.line);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let collect = |pipe: Option<JoinHandle<Vec<u8>>>| {
            pipe.expect("the pipe's reader")
                .join()
                .expect("reading the pipe")
        };
        Output {
            status,
            stdout: collect(self.stdout.take()),
            stderr: collect(self.stderr.take()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `command` and fails the test, showing everything it printed, unless it succeeds.
pub fn run(command: &mut Command) -> Output {
    let result = output(command);
    assert!(
        result.status.success(),
        "`{}` failed ({})\n{}",
        describe(command),
        result.status,
        printed(&result)
    );
    result
}

/// Runs `command` and fails the test, showing everything it printed, unless it fails.
pub fn run_failing(command: &mut Command) -> Output {
    let result = output(command);
    assert!(
        !result.status.success(),
        "`{}` succeeded but was expected to fail\n{}",
        describe(command),
        printed(&result)
    );
    result
}

/// The stdout and stderr of a finished command, for failure messages.
pub fn printed(output: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The command line of `command`, for failure messages.
pub fn describe(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// A private configuration and image store for the containers tools.
pub struct Clients {
    dir: TempDir,
}

impl Clients {
    pub fn new() -> Clients {
        let dir = tempfile::Builder::new()
            .prefix("bulwark-clients-")
            .tempdir()
            .expect("creating the clients' directory");
        let root = dir.path();
        let write = |name: &str, text: String| {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().expect("a parent"))
                .expect("creating a config directory");
            std::fs::write(&path, text)
                .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        };
        // vfs copies layers instead of mounting them: slower for big images, but ours are a
        // few MiB, and a killed test leaves no overlay mount behind.
        write(
            "storage.conf",
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                root.join("run").display(),
                root.join("graph").display()
            ),
        );
        write(
            "containers.conf",
            format!(
                "[engine]\ntmp_dir = \"{}\"\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n",
                root.join("libpod-tmp").display()
            ),
        );
        write("registries.conf", String::new());
        write("auth.json", "{\"auths\":{}}\n".to_owned());
        // containers/image reads $HOME/.config/containers/policy.json before the host's.
        write(
            "home/.config/containers/policy.json",
            "{\"default\":[{\"type\":\"insecureAcceptAnything\"}]}\n".to_owned(),
        );
        Clients { dir }
    }

    /// `program` with the test's configuration in its environment.
    pub fn command(&self, program: &str) -> Command {
        let root = self.dir.path();
        let mut command = Command::new(program);
        command
            .env("HOME", root.join("home"))
            .env("CONTAINERS_STORAGE_CONF", root.join("storage.conf"))
            .env("CONTAINERS_CONF", root.join("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", root.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", root.join("auth.json"))
            .env("TMPDIR", root);
        command
    }

    /// Runs `skopeo ARGS` and returns its output; fails the test if skopeo fails.
    pub fn skopeo<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command("skopeo").args(args))
    }

    /// Runs `skopeo ARGS` expecting it to fail, and returns its output.
    pub fn skopeo_failing<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_failing(self.command("skopeo").args(args))
    }

    pub fn buildah<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command("buildah").args(args))
    }

    pub fn podman<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command("podman").args(args))
    }

    /// The auth file (`REGISTRY_AUTH_FILE`) that `login` writes and every command reads.
    pub fn auth_file(&self) -> std::path::PathBuf {
        self.dir.path().join("auth.json")
    }

    /// A scratch directory inside the clients' temporary directory.
    pub fn scratch(&self, name: &str) -> std::path::PathBuf {
        let path = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&path).expect("creating a scratch directory");
        path
    }
}

/// The trimmed stdout of a command, as text.
pub fn stdout_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// `path` as a `&str`, for arguments built with `format!`.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}
