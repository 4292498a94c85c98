//! A private tmux server for end-to-end tests of `pgkill top` (included with
//! `#[path = "support/tmux.rs"] mod tmux;`).
#![allow(dead_code)] // each test binary uses a part

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

/// A tmux server of the test's own (so parallel tests do not meet), with one window
/// named `top`.
pub struct Tmux {
    /// The tmux socket name (`tmux -L`): unique per test process and version.
    pub socket: String,
}

impl Tmux {
    /// Runs a tmux command on this server.
    pub fn cmd(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running tmux")?;
        ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the window `top` (120x30) running the shell command `line`.
    pub fn start(&self, line: &str) -> Result<()> {
        self.start_sized(line, 120, 30)
    }

    /// Starts the window `top`, `width` by `height`, running the shell command `line`.
    pub fn start_sized(&self, line: &str, width: u16, height: u16) -> Result<()> {
        let (width, height) = (width.to_string(), height.to_string());
        self.cmd(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width,
            "-y",
            &height,
            line,
        ])
        .map(drop)
    }

    /// What the `top` window shows.
    pub fn screen(&self) -> Result<String> {
        self.cmd(&["capture-pane", "-p", "-t", "top"])
    }

    /// Types `keys` (tmux key names) into the `top` window.
    pub fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.cmd(&args).map(drop)
    }

    /// Waits (up to 20 s) until the window shows `what`; returns the screen.
    pub async fn wait_for(&self, what: &str) -> Result<String> {
        let began = Instant::now();
        loop {
            let screen = self.screen()?;
            if screen.contains(what) {
                return Ok(screen);
            }
            ensure!(
                began.elapsed() < Duration::from_secs(20),
                "screen never showed {what:?}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}
