//! State rcr refuses to dump, for the tests of its refusal messages (which must say what the
//! thing is): the dump is refused, and the workload checks on go that it runs on untouched.
//!
//! - `refused-tcp`: a connected TCP pair on loopback, the client at fd 10 and the accepted
//!   end at fd 11 (the listener closed); after go, a byte goes each way.
//! - `refused-udp`: a UDP socket bound to 127.0.0.1 (any port) at fd 10.
//! - `refused-sysvshm`: a 64 KiB SysV shared memory segment (IPC_PRIVATE) attached and filled
//!   with a pattern, marked for removal at once (IPC_RMID: it goes with the last detach, so
//!   nothing is left behind whatever happens to the workload); after go, the pattern is
//!   there.

use crate::files::{FdSnap, place, verify_snaps};
use crate::sys::errno;
use crate::{Check, fail};

const A: i32 = 10;
const B: i32 = 11;
const SHM_SIZE: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Udp,
    SysvShm,
}

impl Kind {
    pub fn from_scenario(name: &str) -> Option<Kind> {
        Some(match name {
            "refused-tcp" => Kind::Tcp,
            "refused-udp" => Kind::Udp,
            "refused-sysvshm" => Kind::SysvShm,
            _ => return None,
        })
    }
}

pub struct Refused {
    kind: Kind,
    fds: usize,
    before: [FdSnap; 2],
    shm: *mut u64,
}

fn loopback(port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    addr.sin_port = port.to_be();
    addr
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// A socket bound to 127.0.0.1 on a port the kernel chooses, and that port.
fn bound(sock_type: i32) -> Result<(i32, u16), String> {
    let addr = loopback(0);
    // SAFETY: socket/bind/getsockname with a live sockaddr_in of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, sock_type, 0);
        if fd < 0 {
            return Err(format!("socket: errno {}", errno()));
        }
        if libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), ADDR_LEN) != 0 {
            return Err(format!("bind: errno {}", errno()));
        }
        let mut got = loopback(0);
        let mut len = ADDR_LEN;
        if libc::getsockname(fd, (&mut got as *mut libc::sockaddr_in).cast(), &mut len) != 0 {
            return Err(format!("getsockname: errno {}", errno()));
        }
        Ok((fd, u16::from_be(got.sin_port)))
    }
}

impl Refused {
    pub fn new(kind: Kind) -> Result<Refused, String> {
        let mut shm = std::ptr::null_mut();
        let fds = match kind {
            Kind::Tcp => {
                let (listener, port) = bound(libc::SOCK_STREAM)?;
                let addr = loopback(port);
                // SAFETY: listen/socket/connect/accept on fds this scenario owns, with a live
                // sockaddr_in.
                unsafe {
                    if libc::listen(listener, 1) != 0 {
                        return Err(format!("listen: errno {}", errno()));
                    }
                    let client = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    if client < 0
                        || libc::connect(
                            client,
                            (&addr as *const libc::sockaddr_in).cast(),
                            ADDR_LEN,
                        ) != 0
                    {
                        return Err(format!("connect: errno {}", errno()));
                    }
                    let accepted =
                        libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut());
                    if accepted < 0 {
                        return Err(format!("accept: errno {}", errno()));
                    }
                    libc::close(listener);
                    place(client, A, false)?;
                    place(accepted, B, false)?;
                }
                2
            }
            Kind::Udp => {
                let (fd, _) = bound(libc::SOCK_DGRAM)?;
                place(fd, A, false)?;
                1
            }
            Kind::SysvShm => {
                // SAFETY: a new private segment, attached where the kernel chooses, filled
                // within its size, and marked for removal (it lives while attached).
                unsafe {
                    let id = libc::shmget(libc::IPC_PRIVATE, SHM_SIZE, libc::IPC_CREAT | 0o600);
                    if id < 0 {
                        return Err(format!("shmget: errno {}", errno()));
                    }
                    let at = libc::shmat(id, std::ptr::null(), 0);
                    let removed = libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    if at as isize == -1 {
                        return Err(format!("shmat: errno {}", errno()));
                    }
                    if removed != 0 {
                        return Err(format!("shmctl IPC_RMID: errno {}", errno()));
                    }
                    shm = at.cast::<u64>();
                    for i in 0..SHM_SIZE / 8 {
                        shm.add(i).write_volatile(pattern(i));
                    }
                }
                0
            }
        };
        Ok(Refused {
            kind,
            fds,
            before: [FdSnap::EMPTY; 2],
            shm,
        })
    }
}

fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5953_5653
}

/// Sends one byte on `from` and reads it on `to`.
fn one_byte(from: i32, to: i32, chk: &mut Check) {
    let byte = [b'x'];
    let mut got = [0u8];
    // SAFETY: send and recv with live one-byte buffers on this scenario's fds.
    let (sent, received) = unsafe {
        (
            libc::send(from, byte.as_ptr().cast(), 1, 0),
            libc::recv(to, got.as_mut_ptr().cast(), 1, 0),
        )
    };
    if sent != 1 || received != 1 || got != byte {
        fail!(
            chk,
            "refused-tcp: fd {from} -> fd {to}: sent {sent}, received {received} (errno {})",
            errno()
        );
    }
}

impl crate::parts::Part for Refused {
    fn before_ready(&mut self) {
        for (i, fd) in [A, B][..self.fds].iter().enumerate() {
            self.before[i] = FdSnap::take(*fd);
        }
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("refused", &self.before[..self.fds], chk);
        match self.kind {
            Kind::Tcp => {
                one_byte(A, B, chk);
                one_byte(B, A, chk);
            }
            Kind::Udp => {}
            Kind::SysvShm => {
                for i in 0..SHM_SIZE / 8 {
                    // SAFETY: within the segment attached in new(), never detached.
                    let word = unsafe { self.shm.add(i).read_volatile() };
                    if word != pattern(i) {
                        fail!(
                            chk,
                            "refused-sysvshm: word {i} is {word:#x}, expected {:#x}",
                            pattern(i)
                        );
                        return;
                    }
                }
            }
        }
    }
}
