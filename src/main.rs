//! The `userwall` command line: the nftables commands on Linux, the WFP ones on Windows.

#[cfg(target_os = "linux")]
mod cli_linux;

#[cfg(not(any(target_os = "linux", windows)))]
compile_error!("userwall supports Linux (nftables) and Windows (WFP) only");

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    cli_linux::main()
}

#[cfg(windows)]
fn main() -> std::process::ExitCode {
    userwall::wfp::cli::main()
}
