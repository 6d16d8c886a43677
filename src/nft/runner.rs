//! The one process boundary of the Linux backend: running `nft` in JSON mode.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one nft run may take before it is killed. A batch of our size applies in tens of
/// milliseconds; a minute means nft is stuck (a lock, a hung netlink socket).
pub const NFT_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable that names another `nft` program (a wrapper that logs writes, say).
pub const NFT_PROGRAM_ENV: &str = "USERWALL_NFT";

/// What went wrong talking to nftables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The program is not installed or not on PATH.
    #[error("{program} was not found while {action}: install nftables (Debian/Ubuntu: apt-get install nftables) or set {NFT_PROGRAM_ENV} to its path")]
    NotFound {
        /// The program we tried.
        program: String,
        /// What we were doing.
        action: String,
    },
    /// It could not be started.
    #[error("could not run {program} while {action}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// What we were doing.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error(transparent)]
    Failed(Box<NftFailure>),
    /// It did not finish in time and was killed.
    #[error("{program} did not finish within {seconds} s while {action} and was killed; check for a stuck nft process")]
    TimedOut {
        /// The program.
        program: String,
        /// What we were doing.
        action: String,
        /// The limit.
        seconds: u64,
    },
    /// It printed JSON we could not read.
    #[error("{program} printed output we could not read while {action}: {detail}")]
    BadOutput {
        /// The program.
        program: String,
        /// What we were doing.
        action: String,
        /// What was wrong.
        detail: String,
    },
}

/// The details of a failed nft run: program, what we were doing, and what nft printed.
#[derive(Debug, thiserror::Error)]
#[error("{program} failed while {action} ({status}): {}{hint}", stderr.trim())]
pub struct NftFailure {
    /// The program.
    pub program: String,
    /// What we were doing.
    pub action: String,
    /// Its exit status.
    pub status: String,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// What to do about it, when we can tell.
    pub hint: String,
}

/// A handle on the `nft` program.
#[derive(Clone, Debug)]
pub struct Nft {
    program: PathBuf,
}

impl Default for Nft {
    fn default() -> Self {
        Nft::from_env()
    }
}

impl Nft {
    /// `nft` from PATH, or the program named by [`NFT_PROGRAM_ENV`].
    pub fn from_env() -> Self {
        let program = std::env::var_os(NFT_PROGRAM_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| "nft".into());
        Nft { program }
    }

    /// A specific program.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Nft {
            program: program.into(),
        }
    }

    /// The program as configured (a bare name is looked up on PATH when run).
    pub fn program(&self) -> &std::path::Path {
        &self.program
    }

    fn name(&self) -> String {
        self.program.display().to_string()
    }

    fn run(&self, args: &[&str], stdin: Option<&[u8]>, action: &str) -> Result<String, NftError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::sys::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NftError::NotFound {
                    program: self.name(),
                    action: action.into(),
                }
            } else {
                NftError::Spawn {
                    program: self.name(),
                    action: action.into(),
                    source,
                }
            }
        })?;
        // stdin is written and stdout/stderr are drained on their own threads, so a nft that
        // stops reading or floods its output cannot block us; a nft that hangs is killed.
        let writer = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => {
                let data = input.to_vec();
                // A write error shows up again as nft's own failure, with its stderr.
                Some(std::thread::spawn(move || drop(pipe.write_all(&data))))
            }
            _ => None,
        };
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout_reader = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr_reader = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + NFT_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(NftError::TimedOut {
                        program: self.name(),
                        action: action.into(),
                        seconds: NFT_TIMEOUT.as_secs(),
                    });
                }
                Err(source) => {
                    return Err(NftError::Spawn {
                        program: self.name(),
                        action: action.into(),
                        source,
                    })
                }
            }
        };
        if let Some(w) = writer {
            let _ = w.join();
        }
        let out = std::process::Output {
            status,
            stdout: stdout_reader.join().unwrap_or_default(),
            stderr: stderr_reader.join().unwrap_or_default(),
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            let hint = if stderr.contains("Operation not permitted") {
                "; run as root (nftables needs CAP_NET_ADMIN in this network namespace)".to_string()
            } else {
                String::new()
            };
            return Err(NftError::Failed(Box::new(NftFailure {
                program: self.name(),
                action: action.into(),
                status: out.status.to_string(),
                stdout,
                stderr,
                hint,
            })));
        }
        Ok(stdout)
    }

    fn json(&self, args: &[&str], action: &str) -> Result<Value, NftError> {
        let text = self.run(args, None, action)?;
        serde_json::from_str(&text).map_err(|e| NftError::BadOutput {
            program: self.name(),
            action: action.into(),
            detail: e.to_string(),
        })
    }

    /// Whether table `family name` exists, from `nft -j list tables`.
    pub fn table_exists(&self, family: &str, name: &str) -> Result<bool, NftError> {
        let listing = self.json(&["-j", "list", "tables"], "listing tables")?;
        let tables = listing
            .get("nftables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        Ok(tables.filter_map(|i| i.get("table")).any(|t| {
            t.get("family").and_then(Value::as_str) == Some(family)
                && t.get("name").and_then(Value::as_str) == Some(name)
        }))
    }

    /// `nft -j list table family name`.
    pub fn list_table(&self, family: &str, name: &str) -> Result<Value, NftError> {
        self.json(
            &["-j", "list", "table", family, name],
            &format!("listing table {family} {name}"),
        )
    }

    /// Runs a JSON batch as one transaction (`nft -j -f -`).
    pub fn apply(&self, batch: &Value, action: &str) -> Result<(), NftError> {
        let text = serde_json::to_vec(batch).expect("a JSON value serializes");
        self.run(&["-j", "-f", "-"], Some(&text), action).map(drop)
    }

    /// Validates a JSON batch without applying it (`nft -c -j -f -`).
    pub fn check(&self, batch: &Value, action: &str) -> Result<(), NftError> {
        let text = serde_json::to_vec(batch).expect("a JSON value serializes");
        self.run(&["-c", "-j", "-f", "-"], Some(&text), action)
            .map(drop)
    }
}
