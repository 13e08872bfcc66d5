//! What the benchmark harnesses share: the release `cliscale up` with its runner, sessions and
//! their terminals, throughput through a terminal, and the raw PTY the figures are held to.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::stack::{ADMIN_KEY, Backend, Stack};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The release `cliscale up` (beside the running benchmark), with rate limits out of the way of
/// the load. `cargo bench -p cliscale` builds only that package's binaries; the runner is
/// another package's, so it is built (release, same target directory) first when missing.
pub async fn start_release(extra: &[&str]) -> Stack {
    let runner = crate::stack::workspace_bin("cliscale").with_file_name("cliscale-runner");
    if !runner.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--release", "--locked", "-p", "cliscale-runner"])
            .status()
            .expect("running cargo to build cliscale-runner");
        assert!(built.success() && runner.exists(), "could not build {}", runner.display());
    }
    let mut args = vec!["--rate-per-minute", "1000000"];
    args.extend_from_slice(extra);
    Stack::start(Backend::Sqlite, &args).await.unwrap()
}

/// A new session running `command`: its id and first terminal token.
pub async fn session(up: &Stack, command: &str) -> (String, String) {
    let created = up.create(ADMIN_KEY, json!({ "command": command })).await;
    (
        created["sessionId"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

/// A fresh interact token for `sid`.
pub async fn token(up: &Stack, sid: &str) -> String {
    let scope = cliscale_core::token::TokenScope::Interact;
    up.client(ADMIN_KEY).mint_token(sid, scope).await.unwrap().token
}

/// The runner's own address once it runs, for the direct measurements (read from the store).
pub async fn runner_addr(up: &Stack, sid: &str) -> String {
    let url = format!("sqlite://{}", up.data.path().join("cliscale.db").display());
    sqlx::any::install_default_drivers();
    loop {
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
        let row: (Option<String>, String) =
            sqlx::query_as("SELECT runner_addr, phase FROM sessions WHERE id = $1")
                .bind(sid)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if let (Some(addr), "Running") = (row.0, row.1.as_str()) {
            return addr;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn gateway_url(up: &Stack, sid: &str, token: &str) -> String {
    up.ws_url(sid, &format!("token={token}"))
}

pub fn direct_url(addr: &str, token: &str) -> String {
    format!("ws://{addr}/ws?token={token}")
}

pub async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async_with_config(url, None, true).await.unwrap().0
}

/// The next output frame's bytes; `None` at the successful end.
pub async fn next_output(ws: &mut Ws) -> Option<Vec<u8>> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(frame)) => {
                return Some(cliscale_core::protocol::decode_output(&frame).unwrap().1.to_vec());
            }
            Ok(Message::Text(t)) if t.contains("\"exitCode\":0") => return None,
            Ok(_) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

/// A payload of 76-column base64 lines, about `megabytes` MB, for `cat` in a PTY.
pub fn write_payload(path: &std::path::Path, megabytes: usize) {
    let line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\n";
    std::fs::write(path, line.repeat(megabytes * 1024 * 1024 / line.len())).unwrap();
}

/// The command a throughput session runs: it waits for a keystroke, then prints `payload`.
pub fn throughput_command(payload: &std::path::Path) -> String {
    format!("stty -echo; printf R; read -r go; cat '{}'", payload.display())
}

/// How many bytes a `cat` of `payload` is through a cooked PTY (each `\n` becomes `\r\n`).
pub fn bytes_through_pty(payload: &std::path::Path) -> usize {
    let text = std::fs::read(payload).unwrap();
    text.len() + text.iter().filter(|&&b| b == b'\n').count()
}

/// MB/s of one run of [`throughput_command`] read through `url`; every byte must arrive. The
/// reader is a blocking client on a thread of its own that counts each frame's payload without
/// copying it: the same kind of lean reader as the raw limit's, so a ratio compares the paths
/// and not the readers.
pub async fn throughput(url: &str, expected_bytes: usize) -> f64 {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        use tokio_tungstenite::tungstenite;
        let (mut ws, _) = tungstenite::connect(url).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_mut() {
            tcp.set_nodelay(true).unwrap();
        }
        let read = |ws: &mut tungstenite::WebSocket<_>| loop {
            match ws.read().unwrap() {
                Message::Binary(frame) => {
                    return Some(cliscale_core::protocol::decode_output(&frame).unwrap().1.len());
                }
                Message::Text(t) if t.contains("\"exitCode\":0") => return None,
                _ => continue,
            }
        };
        assert_eq!(read(&mut ws), Some(1), "the session's first output is its `R`");
        let t = Instant::now();
        ws.send(Message::Binary(b"\r".to_vec().into())).unwrap();
        let mut total = 0usize;
        while let Some(n) = read(&mut ws) {
            total += n;
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(total, expected_bytes, "bytes lost or added on the way");
        total as f64 / secs / 1e6
    })
    .await
    .unwrap()
}

/// The raw limit: `cat` into a PTY in the same (cooked) mode, read by a plain blocking reader.
/// Returns MB/s and the bytes read.
pub fn raw_pty_throughput(file: &std::path::Path) -> (f64, u64) {
    let (mut master, pts) = open_pty();
    let start = Instant::now();
    let mut child = pty_child(&pts, &format!("cat '{}'", file.display()), |_| {});
    drop(pts);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    child.wait().unwrap();
    (total as f64 / secs / 1e6, total)
}

pub fn open_pty() -> (std::fs::File, std::os::fd::OwnedFd) {
    let pty = nix::pty::openpty(None, None).unwrap();
    (std::fs::File::from(pty.master), pty.slave)
}

/// `sh -c command` on the PTY `pts` as its controlling terminal; `setup` may adjust the
/// command first (pin it to a CPU).
pub fn pty_child(
    pts: &std::os::fd::OwnedFd,
    command: &str,
    setup: impl FnOnce(&mut Command),
) -> Child {
    use std::os::unix::process::CommandExt;
    let fd = pts.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", command])
        .stdin(pts.try_clone().unwrap())
        .stdout(pts.try_clone().unwrap())
        .stderr(pts.try_clone().unwrap());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if nix::libc::ioctl(fd, nix::libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    setup(&mut cmd);
    cmd.spawn().unwrap()
}
