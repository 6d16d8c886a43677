//! The WFP backend on a real Windows engine. Ignored unless asked for, and it needs an elevated
//! session: `cargo test --test wfp_live -- --ignored`. It installs the default preset for the
//! current user in a dynamic session (the engine deletes every object it added when the session
//! closes, so a crash leaves nothing behind), shows a loopback connect to port 53 failing with
//! WSAEACCES, then closes the session and checks nothing of ours is left. On Linux it only
//! type-checks, under `--cfg userwall_wfp_check`; it has not run on Windows yet.

#![cfg(any(windows, userwall_wfp_check))]

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;
use userwall::policy::{Policy, Preset};
use userwall::wfp::raw::WindowsFwpm;
use userwall::wfp::safe::{self, Engine, Lifetime};
use userwall::wfp::{accounts, logic};
use windows_sys::Win32::Networking::WinSock::WSAEACCES;

#[test]
#[ignore = "needs an elevated Windows session"]
fn blocks_the_current_user_on_loopback_port_53_then_leaves_nothing() {
    let me = accounts::invoking_user().expect("the current user's SID");
    // A dynamic session cannot delete persistent objects (FWP_E_DYNAMIC_SESSION_IN_PROGRESS): on
    // a machine where userwall is installed, uninstall it first.
    {
        let engine = Engine::open(&WindowsFwpm).expect("open the engine (elevated?)");
        assert!(
            safe::our_filters(&engine).unwrap().is_empty(),
            "userwall is installed on this machine; run `userwall uninstall` before the live test"
        );
    }
    {
        let engine = Engine::open_with(&WindowsFwpm, Lifetime::Dynamic)
            .expect("open a dynamic session (elevated?)");
        logic::install_in(
            &engine,
            &Policy::preset(Preset::BypassSurfaces),
            &[me],
            Lifetime::Dynamic,
        )
        .expect("install");

        let dns: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let tcp = TcpStream::connect_timeout(&dns, Duration::from_secs(3));
        assert_eq!(
            tcp.err().and_then(|e| e.raw_os_error()),
            Some(WSAEACCES),
            "tcp connect to 127.0.0.1:53"
        );
        let udp = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"userwall", dns);
        assert_eq!(
            udp.err().and_then(|e| e.raw_os_error()),
            Some(WSAEACCES),
            "udp send to 127.0.0.1:53"
        );
    }
    // The dynamic session is closed: its objects are gone.
    let engine = Engine::open(&WindowsFwpm).unwrap();
    assert!(
        safe::our_filters(&engine).unwrap().is_empty(),
        "filters outlived the dynamic session"
    );
    assert!(safe::our_sublayers(&engine).unwrap().is_empty());
}
