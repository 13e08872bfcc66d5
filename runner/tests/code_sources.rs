//! Getting the code: every source kind from a local fixture server, checksums, hostile
//! archives and inward addresses. Nothing here touches the internet.

mod common;

use std::io::Write;
use std::process::Command;

use common::{FixtureServer, run_to_end, runner};
use sha2::{Digest, Sha256};

fn zip_bytes(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    for (name, body, mode) in entries {
        let options: zip::write::SimpleFileOptions =
            zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        zip.start_file(*name, options).unwrap();
        zip.write_all(body).unwrap();
    }
    zip.finish().unwrap();
    buf.into_inner()
}

/// A tar.gz whose entries are written with raw names, so hostile paths can be expressed.
fn tar_gz_bytes(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let with_modes: Vec<_> = entries
        .iter()
        .map(|&(name, kind, body, link)| {
            (name, kind, body, link, if kind == tar::EntryType::Directory { 0o755 } else { 0o644 })
        })
        .collect();
    tar_gz_bytes_with_modes(&with_modes)
}

fn tar_gz_bytes_with_modes(entries: &[(&str, tar::EntryType, &[u8], &str, u32)]) -> Vec<u8> {
    let mut builder =
        tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, kind, body, link, mode) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(*kind);
        header.set_size(body.len() as u64);
        header.set_mode(*mode);
        header.set_cksum();
        builder.append(&header, *body).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

const ALLOW_LOOPBACK: [&str; 2] = ["--allow-cidrs", "127.0.0.0/8"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_is_unpacked_with_modes_and_installed_before_the_command() {
    let fx = FixtureServer::start().await;
    let url = fx.put(
        "dl/code.zip",
        &zip_bytes(&[
            ("proj/hello.txt", b"hello from zip\n", 0o644),
            ("proj/bin/run.sh", b"#!/bin/sh\necho script ran\n", 0o755),
        ]),
    );
    let (code, out, err) = run_to_end(
        runner("cat hello.txt && ./bin/run.sh && test -f installed-marker")
            .args(["--code-url", &url, "--install-cmd", "echo installing; touch installed-marker"])
            .args(ALLOW_LOOPBACK),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("hello from zip"), "{out}");
    assert!(out.contains("script ran"), "{out}");
    assert!(out.contains("installing"), "install output belongs in the session log: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarball_with_the_right_checksum_runs_and_a_wrong_one_is_refused() {
    let fx = FixtureServer::start().await;
    let tarball = tar_gz_bytes(&[
        ("pkg/", tar::EntryType::Directory, b"", ""),
        ("pkg/hello.txt", tar::EntryType::Regular, b"hello from tgz\n", ""),
    ]);
    let url = fx.put("code.tgz", &tarball);
    let (code, out, err) = run_to_end(
        runner("cat hello.txt")
            .args(["--code-url", &url, "--code-checksum-sha256", &sha256_hex(&tarball)])
            .args(ALLOW_LOOPBACK),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("hello from tgz"));

    let wrong = sha256_hex(b"something else");
    let (code, out, err) = run_to_end(
        runner("cat hello.txt")
            .args(["--code-url", &url, "--code-checksum-sha256", &wrong])
            .args(ALLOW_LOOPBACK),
    );
    assert_eq!(code, 122, "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!out.contains("hello from tgz"), "the command must not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_slip_and_escaping_symlinks_are_refused() {
    let fx = FixtureServer::start().await;
    let slip_zip = fx.put("slip.zip", &zip_bytes(&[("../escaped.txt", b"pwned", 0o644)]));
    let slip_tar = fx.put(
        "slip.tar.gz",
        &tar_gz_bytes(&[("../escaped.txt", tar::EntryType::Regular, b"pwned", "")]),
    );
    let abs_tar = fx.put(
        "abs.tar.gz",
        &tar_gz_bytes(&[("/tmp/escaped-abs.txt", tar::EntryType::Regular, b"pwned", "")]),
    );
    let link_out = fx.put(
        "link.tar.gz",
        &tar_gz_bytes(&[("up", tar::EntryType::Symlink, b"", "../../../../../..")]),
    );
    let link_through = fx.put(
        "through.tar.gz",
        &tar_gz_bytes(&[
            ("esc", tar::EntryType::Symlink, b"", ".."),
            ("esc/escaped.txt", tar::EntryType::Regular, b"pwned", ""),
        ]),
    );
    let link_abs =
        fx.put("linkabs.tar.gz", &tar_gz_bytes(&[("etc", tar::EntryType::Symlink, b"", "/etc")]));
    for url in [slip_zip, slip_tar, abs_tar, link_out, link_through, link_abs] {
        let r = runner("echo should-not-run").args(["--code-url", &url]).args(ALLOW_LOOPBACK);
        let mut r = r.args(["--linger", "0s"]).start();
        let code = r.wait();
        let err = r.stderr_text();
        assert_eq!(code, 121, "{url}: {err}");
        assert!(
            err.contains("archive rejected") || err.contains("could not unpack"),
            "{url}: {err}"
        );
        assert!(!r.work_dir().join("escaped.txt").exists(), "{url} wrote outside the work dir");
        assert!(!std::path::Path::new("/tmp/escaped-abs.txt").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_must_stay_inside_and_archive_bombs_are_capped() {
    use tar::EntryType::{Link, Regular, Symlink};
    let fx = FixtureServer::start().await;
    let refused = [
        // A hard link to a file outside, absolute or relative.
        (tar_gz_bytes(&[("stolen", Link, b"", "/etc/passwd")]), vec![], "has an absolute path"),
        (
            tar_gz_bytes(&[("stolen", Link, b"", "../../../../etc/passwd")]),
            vec![],
            "climbs out with '..'",
        ),
        // Through a symlink that points up: symlinks only exist once every file is written.
        (
            tar_gz_bytes(&[("esc", Symlink, b"", ".."), ("stolen", Link, b"", "esc/passwd")]),
            vec![],
            "is a hard link to esc/passwd, which is not an earlier file of the archive",
        ),
        // Too many entries, and too many bytes, whatever the compression ratio.
        (
            tar_gz_bytes(&[
                ("a", Regular, b"1", ""),
                ("b", Regular, b"2", ""),
                ("c", Regular, b"3", ""),
            ]),
            vec!["--extract-max-entries", "2"],
            "more than 2 entries",
        ),
        (
            tar_gz_bytes(&[("zeros", Regular, &[0u8; 5000], "")]),
            vec!["--extract-max-bytes", "4096"],
            "unpacks to more than 4096 bytes",
        ),
    ];
    for (i, (archive, flags, why)) in refused.into_iter().enumerate() {
        let url = fx.put(&format!("refused-{i}.tar.gz"), &archive);
        let (code, _, err) = run_to_end(
            runner("echo should-not-run")
                .args(["--code-url", &url])
                .args(flags)
                .args(ALLOW_LOOPBACK),
        );
        assert_eq!(code, 121, "archive {i}: {err}");
        assert!(err.contains(why), "archive {i} should be refused for {why:?}: {err}");
        assert!(!err.contains("should-not-run"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_id_bits_are_dropped_and_device_entries_skipped() {
    use tar::EntryType::{Char, Fifo, Link, Regular};
    let fx = FixtureServer::start().await;
    let archive = tar_gz_bytes_with_modes(&[
        ("proj/run.sh", Regular, b"#!/bin/sh\necho ran\n", "", 0o6755),
        ("proj/copy.sh", Link, b"", "proj/run.sh", 0o644),
        ("proj/pipe", Fifo, b"", "", 0o644),
        ("proj/tty", Char, b"", "", 0o666),
    ]);
    let url = fx.put("special.tar.gz", &archive);
    let (code, out, err) = run_to_end(
        runner("stat -c 'mode=%a' run.sh; ./copy.sh; test ! -e pipe && test ! -e tty && echo no-devices")
            .args(["--code-url", &url])
            .args(ALLOW_LOOPBACK),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("mode=755"), "set-id bits must go, execute bits stay: {out}");
    assert!(out.contains("ran"), "a hard link inside the archive is kept: {out}");
    assert!(out.contains("no-devices"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inward_addresses_are_refused_after_dns_resolution() {
    let fx = FixtureServer::start().await;
    let url = fx.put("code.zip", &zip_bytes(&[("a.txt", b"x", 0o644)]));
    let by_name = url.replace("127.0.0.1", "localhost");
    for (url, range) in [
        (url.as_str(), "loopback"),
        (by_name.as_str(), "loopback"),
        ("http://169.254.169.254/latest/code.zip", "metadata"),
        ("http://[::1]:9/code.zip", "loopback"),
        ("http://10.0.0.1:9/code.zip", "private"),
    ] {
        let (code, _, err) = run_to_end(runner("true").args(["--code-url", url]));
        assert_eq!(code, 121, "{url}: {err}");
        assert!(err.contains("refusing to fetch") && err.contains(range), "{url}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_failures_have_their_own_exit_code_and_message() {
    let fx = FixtureServer::start().await;
    let url = fx.put("big.zip", &vec![0u8; 4096]);
    let (code, _, err) = run_to_end(
        runner("true")
            .args(["--code-url", &url, "--download-max-bytes", "100"])
            .args(ALLOW_LOOPBACK),
    );
    assert_eq!(code, 121);
    assert!(err.contains("exceeds the limit of 100 bytes"), "{err}");
    let missing = format!("{}/missing.zip", fx.base);
    let (code, _, err) =
        run_to_end(runner("true").args(["--code-url", &missing]).args(ALLOW_LOOPBACK));
    assert_eq!(code, 121);
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = run_to_end(runner("true").args(["--code-url", "ftp://example.com/x.zip"]));
    assert_eq!(code, 120, "a bad URL is bad configuration: {err}");
}

/// A server that reads each request's head, answers with `reply` (possibly nothing), then
/// holds the connection open without another byte.
async fn stalling_server(reply: &'static [u8]) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            let mut socket = tokio::io::BufReader::new(socket);
            let mut line = String::new();
            while socket.read_line(&mut line).await.is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = socket.get_mut().write_all(reply).await;
            held.push(socket);
        }
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_stalls_is_cut_off_at_its_time_limit() {
    let silent = stalling_server(b"").await;
    // Headers and the first bytes of a body, then nothing: the limit covers the whole body.
    let trickle = stalling_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: 100000\r\n\r\nPK",
    )
    .await;
    // Git's fetches have the same limit and say so in the same words: a clone, and the ref
    // listing that resolves a GitHub tree URL.
    let cases = [
        (format!("{silent}/code.zip"), None),
        (format!("{trickle}/code.zip"), None),
        (format!("git+{silent}/acme/tools.git"), None),
        (
            "https://github.com/acme/tools/tree/feature/login/app".to_string(),
            Some(["--github-git-base".to_string(), silent.clone()]),
        ),
    ];
    for (url, extra) in cases {
        let started = std::time::Instant::now();
        let (code, _, err) = run_to_end(
            runner("echo should-not-run")
                .args(["--code-url", &url, "--download-timeout", "1s"])
                .args(extra.into_iter().flatten())
                .args(ALLOW_LOOPBACK),
        );
        assert_eq!(code, 121, "{url}: {err}");
        assert!(err.contains("took longer than the download time limit of 1s"), "{url}: {err}");
        assert!(started.elapsed() < common::HANG_GUARD / 2, "the limit did not cut it off");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_that_fails_or_overruns_exits_123_and_the_command_never_runs() {
    let (code, out, err) =
        run_to_end(runner("echo should-not-run").args(["--install-cmd", "echo building; exit 7"]));
    assert_eq!(code, 123, "{err}");
    assert!(out.contains("building"), "install output belongs in the session log: {out}");
    assert!(err.contains("exited with exit status: 7"), "{err}");
    assert!(!out.contains("should-not-run"));

    // An install that runs past its limit is killed with everything it started.
    let builder = runner("echo should-not-run").args([
        "--install-cmd",
        "sleep 600 & echo $! > background.pid; echo started; wait",
        "--install-timeout",
        "1s",
    ]);
    let mut r = builder.args(["--linger", "0s"]).capture_stdout().start();
    let code = r.wait();
    let err = r.stderr_text();
    assert_eq!(code, 123, "{err}");
    assert!(err.contains("ran past 1s"), "{err}");
    let pid: i32 = std::fs::read_to_string(r.work_dir().join("w/background.pid"))
        .expect("the install wrote its child's pid")
        .trim()
        .parse()
        .unwrap();
    // Killed by the runner, so the sleep is gone (or a zombie awaiting its reaper) by now.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.split_whitespace().nth(2) == Some("Z"),
        "the install's background child survived: {state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_the_install_leaves_running_does_not_hold_up_the_command() {
    use cliscale_core::token::TokenScope;
    // The install starts a background job that keeps the install's stdout open and speaks only
    // once the command has started (the command opens the FIFO it waits on). Waiting for the
    // install's pipes to close would deadlock until the install timeout (exit 123).
    let install =
        "mkfifo started; (read -r _ < started; echo background-said-$((6*7))) & echo installed";
    let r = runner("echo go > started; read -r x; echo command-done")
        .args(["--install-cmd", install, "--install-timeout", "60s"])
        .start();
    let mut c = r.attach(TokenScope::Interact, 0).await;
    let seen = c.read_until(b"background-said-42").await;
    assert!(String::from_utf8_lossy(&seen).contains("installed"));
    c.send_input(b"\r").await;
    let (rest, _, status) = c.read_to_end_any().await;
    assert_eq!(status.exit_code, Some(0), "{}", r.stderr_text());
    assert!(String::from_utf8_lossy(&rest).contains("command-done"));
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

/// Publishes a repository `acme/tools` on the fixture server: a bare repo for git's dumb HTTP
/// transport, and GitHub-style tarballs for the branch `feature/login`.
fn publish_repo(fx: &FixtureServer) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::create_dir_all(w.join("app/sub")).unwrap();
    std::fs::create_dir_all(w.join("other")).unwrap();
    std::fs::write(w.join("app/sub/hello.txt"), "hello from main\n").unwrap();
    std::fs::write(w.join("other/secret.txt"), "not wanted\n").unwrap();
    git(w, &["init", "-q"]);
    git(w, &["add", "."]);
    git(w, &["commit", "-qm", "main"]);
    git(w, &["checkout", "-qb", "feature/login"]);
    std::fs::write(w.join("app/sub/hello.txt"), "hello from feature/login\n").unwrap();
    git(w, &["commit", "-qam", "feature"]);
    git(w, &["checkout", "-q", "main"]);
    let bare = fx.path("git/acme/tools.git");
    git(fx.root.path(), &["clone", "-q", "--bare", w.to_str().unwrap(), bare.to_str().unwrap()]);
    git(&bare, &["update-server-info"]);
    let tarball = tar_gz_bytes(&[
        ("tools-feature-login/", tar::EntryType::Directory, b"", ""),
        (
            "tools-feature-login/app/sub/hello.txt",
            tar::EntryType::Regular,
            b"hello from feature/login\n",
            "",
        ),
        ("tools-feature-login/other/secret.txt", tar::EntryType::Regular, b"not wanted\n", ""),
    ]);
    fx.put("codeload/acme/tools/tar.gz/feature/login", &tarball);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_tree_url_with_a_slashed_ref_and_nested_path() {
    let fx = FixtureServer::start().await;
    publish_repo(&fx);
    let bases = [
        "--github-git-base".to_string(),
        format!("{}/git", fx.base),
        "--github-archive-base".to_string(),
        format!("{}/codeload", fx.base),
    ];
    let (code, out, err) = run_to_end(
        runner("cat hello.txt && test ! -e ../../other")
            .args(["--code-url", "https://github.com/acme/tools/tree/feature/login/app/sub"])
            .args(bases.clone())
            .args(ALLOW_LOOPBACK),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("hello from feature/login"), "{out}");

    let (code, _, err) = run_to_end(
        runner("true")
            .args(["--code-url", "https://github.com/acme/tools/tree/no-such-branch/app"])
            .args(bases)
            .args(ALLOW_LOOPBACK),
    );
    assert_eq!(code, 121);
    assert!(err.contains("no branch or tag"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_url_is_cloned_at_the_requested_ref() {
    let fx = FixtureServer::start().await;
    publish_repo(&fx);
    let url = format!("git+{}/git/acme/tools.git#feature/login", fx.base);
    let (code, out, err) =
        run_to_end(runner("cat app/sub/hello.txt").args(["--code-url", &url]).args(ALLOW_LOOPBACK));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("hello from feature/login"), "{out}");

    let plain = format!("{}/git/acme/tools.git", fx.base);
    let (code, out, err) = run_to_end(
        runner("cat app/sub/hello.txt").args(["--code-url", &plain]).args(ALLOW_LOOPBACK),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("hello from main"), "{out}");

    let (code, _, err) = run_to_end(runner("true").args(["--code-url", &plain]));
    assert_eq!(code, 121, "git is fenced by the same address guard: {err}");
    assert!(err.contains("loopback"), "{err}");
}
