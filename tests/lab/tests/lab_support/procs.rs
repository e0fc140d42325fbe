//! Processes a lab test starts beside the lab (servers in namespaces, controllers), killed by
//! pid when the test ends, also when it panics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::LAB;

/// A process started by the test, killed (by pid) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its output in `log` (or nowhere).
pub fn spawn(cmd: &mut Command, log: Option<PathBuf>) -> Proc {
    let (out, err) = match log {
        Some(p) => {
            let f = std::fs::File::create(p).unwrap();
            (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    Proc(cmd.stdout(out).stderr(err).spawn().unwrap())
}

/// `switchyard-lab echo-server --name @peer` in `netns` on HTTP `http` and UDP `udp` (0: none):
/// answers with the client's address as the server sees it.
pub fn peer_server(netns: &str, http: u16, udp: u16) -> Proc {
    spawn(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                LAB,
                "echo-server",
                "--name",
                "@peer",
            ])
            .args(["--http", &http.to_string(), "--udp", &udp.to_string()]),
        None,
    )
}
