//! The command backend: a CLI agent spawned for each answer.
//!
//! The program runs without a shell. It gets the prompt (or the whole request as JSON) on stdin,
//! which is then closed; whatever it prints on stdout is the answer, streamed as it comes. A
//! non-zero exit ends the answer with an error carrying the end of its stderr.
//!
//! The agent reads untrusted text, so it gets nothing it was not given: an empty environment
//! plus `PATH`, the configured `env` and the `pass_env` names (never mxfleet's secrets); its own
//! process group, killed as a whole when the answer is dropped (the turn was cancelled) or the
//! timeout passes; and, with `sandbox = "bwrap"`, a read-only view of the system in which the
//! data directory, the configuration and the secret files are hidden.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use futures_util::stream;
use mxfleet_config::{AgentIsolation, BackendSpec, CommandInput, Sandbox};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::{Child, ChildStdout, Command},
    task::JoinHandle,
    time::Instant,
};

use crate::{Backend, BackendError, ChatRequest, RoutedRequest, TextStream};

/// How much stderr is kept for an error message.
const STDERR_TAIL_BYTES: usize = 2000;
/// Read size for stdout.
const READ_CHUNK: usize = 4096;
/// `PATH` for an agent when mxfleet itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs a CLI agent per answer.
#[derive(Debug, Clone)]
pub struct CommandBackend {
    command: Vec<String>,
    input: CommandInput,
    working_dir: Option<PathBuf>,
    model: Option<String>,
    system_prompt: Option<String>,
    timeout: Duration,
    isolation: AgentIsolation,
}

/// A running agent: dropping it kills its process group.
struct Running {
    group: ProcessGroup,
    child: Child,
    stdout: ChildStdout,
    stderr: JoinHandle<Vec<u8>>,
    undecoded: Vec<u8>,
    deadline: Instant,
    done: bool,
}

impl CommandBackend {
    /// Builds the backend from a `command` spec.
    pub fn new(spec: &BackendSpec) -> Result<Self, BackendError> {
        let BackendSpec::Command {
            command,
            input,
            working_dir,
            model,
            system_prompt,
            request_timeout_secs,
            isolation,
            ..
        } = spec
        else {
            return Err(BackendError::Config("not a command backend".into()));
        };
        if command.is_empty() {
            return Err(BackendError::Config("the command is empty".into()));
        }
        Ok(Self {
            command: command.clone(),
            input: *input,
            working_dir: working_dir.clone(),
            model: model.clone(),
            system_prompt: system_prompt.clone(),
            timeout: Duration::from_secs(*request_timeout_secs),
            isolation: isolation.clone(),
        })
    }

    /// The process to start: the agent itself, or bubblewrap running it; environment cleared.
    fn command(&self, program: &str, args: &[String]) -> Command {
        let mut command = match self.isolation.sandbox {
            Sandbox::None => Command::new(program),
            Sandbox::Bwrap => {
                let mut bwrap = Command::new("bwrap");
                bwrap
                    .args(bwrap_args(
                        &self.isolation.hidden,
                        self.working_dir.as_deref(),
                    ))
                    .arg("--")
                    .arg(program);
                bwrap
            }
        };
        command.args(args).env_clear();
        let inherited = |name: &str| std::env::var_os(name).map(|value| (name.to_owned(), value));
        let path = inherited("PATH").map_or_else(|| DEFAULT_PATH.into(), |(_, value)| value);
        command.env("PATH", path);
        command.envs(self.isolation.pass_env.iter().filter_map(|n| inherited(n)));
        command.envs(&self.isolation.env);
        command.process_group(0);
        command
    }

    fn spawn(&self, request: &ChatRequest) -> Result<Running, BackendError> {
        let stdin_bytes = match self.input {
            CommandInput::Prompt => format!("{}\n", request.last_user_message()).into_bytes(),
            CommandInput::Json => serde_json::to_vec(&RoutedRequest {
                request,
                model: self.model.as_deref(),
                system_prompt: self.system_prompt.as_deref(),
            })
            .map_err(|e| BackendError::Protocol(e.to_string()))?,
        };
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| BackendError::Config("the command is empty".into()))?;
        let mut command = self.command(program, args);
        // The message's trace context, so an agent's own spans join its trace.
        if let Some(traceparent) = &request.traceparent {
            command.env("TRACEPARENT", traceparent);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &self.working_dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .map_err(|e| BackendError::Config(format!("cannot start {program:?}: {e}")))?;
        let group = ProcessGroup(child.id());
        if let Some(mut stdin) = child.stdin.take() {
            tokio::spawn(async move {
                // An agent that exits without reading its input is not an error here.
                let _ = stdin.write_all(&stdin_bytes).await;
            });
        }
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BackendError::Protocol("no stdout pipe".into()))?;
        let mut stderr = child.stderr.take();
        let stderr = tokio::spawn(async move {
            let mut tail = Vec::new();
            if let Some(stderr) = stderr.as_mut() {
                let mut buf = [0u8; READ_CHUNK];
                while let Ok(n) = stderr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tail.extend_from_slice(&buf[..n]);
                    let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                    tail.drain(..excess);
                }
            }
            tail
        });
        Ok(Running {
            group,
            child,
            stdout,
            stderr,
            undecoded: Vec::new(),
            deadline: Instant::now() + self.timeout,
            done: false,
        })
    }
}

impl Backend for CommandBackend {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn stream(&self, request: ChatRequest) -> TextStream {
        match self.spawn(&request) {
            Ok(running) => Box::pin(stream::unfold(running, next_delta)),
            Err(e) => Box::pin(stream::once(async move { Err(e) })),
        }
    }
}

async fn next_delta(mut r: Running) -> Option<(Result<String, BackendError>, Running)> {
    if r.done {
        return None;
    }
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read = tokio::time::timeout_at(r.deadline, r.stdout.read(&mut buf)).await;
        let n = match read {
            Err(_) => {
                r.done = true;
                r.group.kill();
                return Some((Err(BackendError::Timeout), r));
            }
            Ok(Err(e)) => {
                r.done = true;
                return Some((
                    Err(BackendError::Network(format!("reading stdout: {e}"))),
                    r,
                ));
            }
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            r.done = true;
            return finish(r).await;
        }
        r.undecoded.extend_from_slice(&buf[..n]);
        let text = take_utf8(&mut r.undecoded);
        if !text.is_empty() {
            return Some((Ok(text), r));
        }
    }
}

/// At the end of stdout: wait for the exit status within the deadline.
async fn finish(mut r: Running) -> Option<(Result<String, BackendError>, Running)> {
    let status = match tokio::time::timeout_at(r.deadline, r.child.wait()).await {
        Err(_) => {
            r.group.kill();
            return Some((Err(BackendError::Timeout), r));
        }
        Ok(Err(e)) => return Some((Err(BackendError::Network(format!("waiting: {e}"))), r)),
        Ok(Ok(status)) => status,
    };
    if !status.success() {
        let tail = (&mut r.stderr).await.unwrap_or_default();
        let tail = String::from_utf8_lossy(&tail).trim().to_owned();
        let detail = if tail.is_empty() {
            "no stderr output".into()
        } else {
            tail
        };
        return Some((
            Err(BackendError::Protocol(format!(
                "agent exited with {status}: {detail}"
            ))),
            r,
        ));
    }
    let rest = String::from_utf8_lossy(&std::mem::take(&mut r.undecoded)).into_owned();
    (!rest.is_empty()).then_some((Ok(rest), r))
}

/// Takes the longest valid UTF-8 prefix of `bytes`, keeping an incomplete character at the end
/// for the next read. Invalid sequences become U+FFFD.
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    let valid_up_to = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => bytes.len(),
    };
    let head: Vec<u8> = bytes.drain(..valid_up_to).collect();
    String::from_utf8_lossy(&head).into_owned()
}

/// The arguments that make bubblewrap show the agent a read-only system with a private `/tmp`,
/// `/dev` and `/proc`, `working_dir` writable, and every existing `hidden` path replaced by an
/// empty directory or file. Mounts are ordered shallow to deep so that a hidden data directory
/// inside the working directory stays hidden, and a working directory inside a hidden one shows
/// only itself.
fn bwrap_args(hidden: &[PathBuf], working_dir: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--die-with-parent",
        "--new-session",
        "--unshare-all",
        "--share-net",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
    ]
    .map(str::to_owned)
    .into();
    // (path, its mount arguments); the working directory is bound to itself, a hidden
    // directory becomes an empty tmpfs, a hidden file /dev/null.
    let mut mounts: Vec<(&Path, Vec<String>)> = Vec::new();
    let shown = |path: &Path| path.display().to_string();
    if let Some(dir) = working_dir {
        mounts.push((dir, vec!["--bind".into(), shown(dir), shown(dir)]));
    }
    for path in hidden {
        // Under `/tmp` too: a working directory there is bound into the private `/tmp`, and a
        // data directory inside it must stay hidden (bwrap creates the mount point).
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => mounts.push((path, vec!["--tmpfs".into(), shown(path)])),
            Ok(_) => mounts.push((
                path,
                vec!["--ro-bind".into(), "/dev/null".into(), shown(path)],
            )),
            Err(_) => {}
        }
    }
    mounts.sort_by_key(|(path, _)| path.components().count());
    args.extend(mounts.into_iter().flat_map(|(_, mount)| mount));
    if let Some(dir) = working_dir {
        args.extend(["--chdir".to_owned(), dir.display().to_string()]);
    }
    args
}

/// The process group an agent runs in (its pid: it leads the group). Dropping it kills the
/// whole group, so helpers the agent started do not outlive the answer.
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    /// Kills every process in the group.
    fn kill(&self) {
        if let Some(pgid) = self.0.and_then(|pid| libc::pid_t::try_from(pid).ok()) {
            kill_group(pgid);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGKILL to process group `pgid`; a group that is already gone is no error.
#[allow(unsafe_code)]
fn kill_group(pgid: libc::pid_t) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative pid
    // addresses the process group, which we created for this agent (pgid > 1 checked above).
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::{ChatMessage, Role, collect};

    fn backend(command: &[&str], input: CommandInput, timeout_secs: u64) -> CommandBackend {
        CommandBackend {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            input,
            working_dir: None,
            model: Some("m1".into()),
            system_prompt: None,
            timeout: Duration::from_secs(timeout_secs),
            isolation: AgentIsolation::default(),
        }
    }

    fn request(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User,
                content: text.into(),
                ..ChatMessage::default()
            }],
            room_id: "!r:x".into(),
            ..ChatRequest::default()
        }
    }

    #[test]
    fn split_utf8_characters_wait_for_their_last_byte() {
        let mut bytes = "aé".as_bytes()[..2].to_vec();
        assert_eq!(take_utf8(&mut bytes), "a");
        bytes.extend_from_slice(&"é".as_bytes()[1..]);
        assert_eq!(take_utf8(&mut bytes), "é");
        assert!(bytes.is_empty());
    }

    #[tokio::test]
    async fn stdin_prompt_in_stdout_answer_out() {
        let b = backend(
            &["sh", "-c", "read line; echo \"you said: $line\""],
            CommandInput::Prompt,
            10,
        );
        let answer = collect(&b, request("hello")).await;
        assert_eq!(answer.ok().as_deref(), Some("you said: hello\n"));
    }

    #[tokio::test]
    async fn json_input_carries_the_conversation_and_model() {
        let b = backend(&["cat"], CommandInput::Json, 10);
        let answer = collect(&b, request("hi")).await.unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        assert_eq!(value["messages"][0]["content"], "hi");
        assert_eq!(value["model"], "m1");
        assert_eq!(value["room_id"], "!r:x");
    }

    #[tokio::test]
    async fn failures_and_timeouts_are_errors() {
        let b = backend(
            &["sh", "-c", "echo oops >&2; exit 3"],
            CommandInput::Prompt,
            10,
        );
        let e = collect(&b, request("x")).await;
        assert!(matches!(e, Err(BackendError::Protocol(m)) if m.contains("oops")));
        let b = backend(&["sleep", "30"], CommandInput::Prompt, 1);
        assert!(matches!(
            collect(&b, request("x")).await,
            Err(BackendError::Timeout)
        ));
        let b = backend(&["/nonexistent/agent"], CommandInput::Prompt, 1);
        assert!(matches!(
            collect(&b, request("x")).await,
            Err(BackendError::Config(_))
        ));
    }

    #[tokio::test]
    async fn dropping_the_answer_kills_the_agent() {
        let dir = tempfile_dir();
        let marker = dir.join("still-running");
        let script = format!("echo started; sleep 2; touch {}", marker.display());
        let b = backend(&["sh", "-c", &script], CommandInput::Prompt, 30);
        let mut stream = b.stream(request("x"));
        assert_eq!(
            stream.next().await.and_then(Result::ok).as_deref(),
            Some("started\n")
        );
        drop(stream);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !marker.exists(),
            "the agent kept running after the turn was dropped"
        );
    }

    #[tokio::test]
    async fn the_agent_gets_only_path_and_what_is_configured() {
        let mut b = backend(&["env"], CommandInput::Prompt, 10);
        b.isolation.env.insert("AGENT_MODE".into(), "quiet".into());
        b.isolation.pass_env = vec!["HOME".into(), "NOT_SET_ANYWHERE_42".into()];
        let answer = collect(&b, request("x")).await.unwrap_or_default();
        let mut names: Vec<&str> = answer
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .collect();
        names.sort_unstable();
        let mut expected = vec!["AGENT_MODE", "PATH"];
        if std::env::var_os("HOME").is_some() {
            expected.insert(1, "HOME");
        }
        assert_eq!(names, expected, "{answer}");
        assert!(answer.contains("AGENT_MODE=quiet"));
    }

    #[tokio::test]
    async fn a_timeout_kills_what_the_agent_started_too() {
        let dir = tempfile_dir();
        let marker = dir.join("helper-outlived-the-agent");
        let _ = std::fs::remove_file(&marker);
        let script = format!(
            "(sleep 2; touch {}) & echo started; sleep 30",
            marker.display()
        );
        let b = backend(&["sh", "-c", &script], CommandInput::Prompt, 1);
        assert!(matches!(
            collect(&b, request("x")).await,
            Err(BackendError::Timeout)
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!marker.exists(), "the agent's helper survived the timeout");
    }

    #[test]
    fn bwrap_mounts_go_shallow_to_deep_and_skip_what_is_not_there() {
        let root = std::env::current_dir()
            .unwrap_or_default()
            .join("target-bwrap-test");
        let data = root.join("data");
        let work = root.join("work");
        let secret = root.join("secret.txt");
        for dir in [&data, &work] {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&secret, "s");
        let hidden = vec![
            data.clone(),
            secret.clone(),
            root.join("missing"),
            "/tmp/elsewhere-that-does-not-exist".into(),
        ];
        let args = bwrap_args(&hidden, Some(&work)).join(" ");
        let (d, w, f) = (data.display(), work.display(), secret.display());
        assert!(
            args.ends_with(&format!(
                "--tmpfs /tmp --tmpfs {d} --bind {w} {w} --ro-bind /dev/null {f} --chdir {w}"
            )) || args.ends_with(&format!(
                "--tmpfs /tmp --bind {w} {w} --tmpfs {d} --ro-bind /dev/null {f} --chdir {w}"
            )),
            "{args}"
        );
        assert!(
            !args.contains("missing") && !args.contains("elsewhere"),
            "{args}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn under_bwrap_hidden_paths_show_nothing() {
        if !Path::new("/usr/bin/bwrap").exists() {
            eprintln!("bubblewrap is not installed; skipping");
            return;
        }
        // A data dir elsewhere, and one inside a working directory under /tmp (which the
        // sandbox binds into its private /tmp).
        let pid = std::process::id();
        let elsewhere = PathBuf::from(format!("/var/tmp/mxfleet-bwrap-run-{pid}"));
        let in_tmp = std::env::temp_dir().join(format!("mxfleet-bwrap-work-{pid}"));
        for (root, working_dir) in [(elsewhere, None), (in_tmp.clone(), Some(in_tmp))] {
            let data = root.join("data");
            let _ = std::fs::create_dir_all(&data);
            let _ = std::fs::write(data.join("mxfleet.redb"), "access-token-xyz");
            let script = format!(
                "ls -A {d}; cat {d}/mxfleet.redb; echo done",
                d = data.display()
            );
            let mut b = backend(&["sh", "-c", &script], CommandInput::Prompt, 10);
            b.isolation.sandbox = Sandbox::Bwrap;
            b.isolation.hidden = vec![data.clone()];
            b.working_dir = working_dir;
            let answer = collect(&b, request("x")).await;
            let _ = std::fs::remove_dir_all(&root);
            let answer = answer.unwrap_or_else(|e| format!("error: {e}"));
            assert!(answer.ends_with("done\n"), "{answer}");
            assert!(
                !answer.contains("access-token") && !answer.contains("mxfleet.redb\n"),
                "{}: {answer}",
                root.display()
            );
        }
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mxfleet-cmd-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    }
}
