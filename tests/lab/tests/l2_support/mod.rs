//! What the L2 lab test measures with: a thread in another network namespace, an ARP request
//! and its answers over an AF_PACKET socket (the machine has no arping), and a 50 ms UDP
//! probe recording when answers arrive.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `f` on a fresh thread inside the network namespace `netns`.
pub fn in_netns_thread<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// Sends one ARP request for `ip` out of `ifname` in `netns` and returns the MACs of every
/// answer within a second.
pub fn arp_answers(
    netns: &str,
    ifname: &'static str,
    ip: Ipv4Addr,
    sender_ip: Ipv4Addr,
    sender_mac: [u8; 6],
) -> BTreeSet<String> {
    in_netns_thread(netns, move || {
        raw_arp::ask(ifname, ip, sender_ip, sender_mac)
    })
    .join()
    .unwrap()
}

/// The ARP request and the answers, over an AF_PACKET socket (no arping on the machine).
mod raw_arp {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    use nix::libc;

    const ETH_P_ARP: u16 = 0x0806;

    fn request(ip: Ipv4Addr, sender_ip: Ipv4Addr, mac: [u8; 6]) -> [u8; 42] {
        let mut f = [0u8; 42];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&mac);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&mac);
        f[28..32].copy_from_slice(&sender_ip.octets());
        f[38..42].copy_from_slice(&ip.octets());
        f
    }

    /// Asks once on `ifname` (of the calling thread's namespace); the answering MACs.
    pub fn ask(ifname: &str, ip: Ipv4Addr, sender_ip: Ipv4Addr, mac: [u8; 6]) -> BTreeSet<String> {
        let index = nix::net::if_::if_nametoindex(ifname).unwrap();
        // SAFETY: socket(2) with constant arguments; checked before use.
        #[allow(unsafe_code)]
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        assert!(raw >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        #[allow(unsafe_code)]
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        #[allow(unsafe_code)]
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `addr` lives for the call and `len` is its size.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: `tv` lives for the call; the length is its size.
        #[allow(unsafe_code)]
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let frame = request(ip, sender_ip, mac);
        // SAFETY: `frame` and `addr` live for the call; the lengths are their sizes.
        #[allow(unsafe_code)]
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                len,
            )
        };
        assert_eq!(
            sent,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
        let mut out = BTreeSet::new();
        let start = Instant::now();
        let mut buf = [0u8; 1600];
        while start.elapsed() < Duration::from_secs(1) {
            // SAFETY: `buf` is writable for its length.
            #[allow(unsafe_code)]
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 42 {
                continue;
            }
            let f = &buf[..n as usize];
            if f[12..14] == ETH_P_ARP.to_be_bytes()
                && f[20..22] == [0, 2]
                && f[28..32] == ip.octets()
            {
                let m = &f[22..28];
                out.insert(
                    m.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            }
        }
        out
    }
}

/// A UDP probe from the internet namespace: one datagram every 50 ms, the arrival time of
/// every answer.
pub struct Probe {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    pub fn start(netns: &str, target: String) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), answers.clone());
        let thread = in_netns_thread(netns, move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.connect(&target).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            let mut next = Instant::now();
            let mut buf = [0u8; 256];
            while !s.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let _ = sock.send(b"probe");
                    next += Duration::from_millis(50);
                }
                if sock.recv(&mut buf).is_ok() {
                    a.lock().unwrap().push(Instant::now());
                }
            }
        });
        Probe {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    /// Answers after `t`.
    pub fn since(&self, t: Instant) -> Vec<Instant> {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|a| *a > t)
            .collect()
    }

    /// The longest time without an answer between `from` and the last answer.
    pub fn longest_gap(&self, from: Instant) -> Duration {
        let mut last = from;
        let mut gap = Duration::ZERO;
        for a in self.since(from) {
            gap = gap.max(a - last);
            last = a;
        }
        gap
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
