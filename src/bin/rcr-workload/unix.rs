//! Unix socket scenarios beyond socket pairs.
//!
//! `unix` (one process; every socket at a fixed fd, O_NONBLOCK unless said):
//! - fd 60: stream listener bound to DIR/listen.sock (chmod 0640), backlog 5.
//!   fd 61: unnamed client connected to it, fd 62: the accepted end. 61 sent "to-server"
//!   and 62 sent "to-client", both unread; 62 peeked 3 bytes with SO_PEEK_OFF (now 3).
//!   fd 63: unnamed client, then fd 64: client bound to the abstract "@rcr-c3-PID", both
//!   connected and never accepted (they wait in 60's queue, 63 first).
//! - fd 65: seqpacket listener at the abstract "@rcr-sp-PID"; fd 66 client, fd 67 accepted.
//!   66 sent the packets "one" and "two"; 67 sent "last" then shut down its writing side.
//! - fd 68: datagram socket bound to DIR/dgram.sock; fd 69: datagram socket bound to
//!   DIR/e.sock and connected to 68, which sent "from-e"; an unbound datagram socket sent
//!   "from-anon" to 68 and was closed. Both datagrams are unread.
//! - fd 71: one end of a socket pair whose other end sent "bye" and was closed.
//! - fd 72: stream listener bound to DIR/gone.sock, whose file was then removed.
//! - fd 73: datagram socket bound to the relative path "rel.sock" (the process' cwd is DIR).
//! - Options: SO_SNDBUF 64 KiB on 61, SO_RCVBUF 50000 and SO_PASSCRED on 68, SO_RCVTIMEO
//!   1.5 s on 66; after go getsockopt gives what it gave at ready.
//!
//! After go: links, flags and FD_CLOEXEC as before; addresses (getsockname/getpeername) as
//! before; socket file modes; every queue delivers what it held, datagrams with their senders
//! and packets with their boundaries; 60 accepts 63's then 64's connection, and they talk; a
//! new client can connect to DIR/listen.sock; 67 cannot send any more and 66 reads "last"
//! then EOF; 69 still sends to 68; 71 reads "bye" then EOF; 72 still listens and its file is
//! still gone.
//!
//! `unix-renamed`: a listener and a datagram socket whose files were renamed after bind (see
//! the comment of `Renamed`).
//!
//! `unix-outside`: fd 10 connected to the stream listener ../outside.sock of the test (outside
//! the tree), fd 11 a datagram socket connected to the test's ../outside-dgram.sock. After go
//! it reads DIR/mode: `disconnect` (the test queued "queued" before the dump: 10 reads
//! "queued" then EOF; a send on 11 fails) or `reconnect` (10 is connected to
//! ../outside.sock again: it sends "ping" and reads "pong"; 11 is connected to
//! ../outside-dgram.sock again and sends "log-line" there).

use crate::files::{FdSnap, place, poll_in, read_once, snaps, verify_snaps};
use crate::sys::{self, Shown, errno};
use crate::{Check, Ctx, fail};
use std::ffi::CString;

const LISTENER: i32 = 60;
const CLIENT: i32 = 61;
const ACCEPTED: i32 = 62;
const WAITING_1: i32 = 63;
const WAITING_2: i32 = 64;
const SP_LISTENER: i32 = 65;
const SP_CLIENT: i32 = 66;
const SP_ACCEPTED: i32 = 67;
const DGRAM_SERVER: i32 = 68;
const DGRAM_CLIENT: i32 = 69;
const PEER_GONE: i32 = 71;
const GONE_LISTENER: i32 = 72;
const RELATIVE: i32 = 73;
const ALL: [i32; 13] = [
    LISTENER,
    CLIENT,
    ACCEPTED,
    WAITING_1,
    WAITING_2,
    SP_LISTENER,
    SP_CLIENT,
    SP_ACCEPTED,
    DGRAM_SERVER,
    DGRAM_CLIENT,
    PEER_GONE,
    GONE_LISTENER,
    RELATIVE,
];

/// A sockaddr_un and its length.
#[derive(Clone, Copy)]
pub struct Addr {
    raw: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl Addr {
    /// A path address, or an abstract one for a name starting with '@'.
    fn new(name: &[u8]) -> Addr {
        // SAFETY: sockaddr_un is plain data.
        let mut raw: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        raw.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let (bytes, abstract_name) = match name.split_first() {
            Some((b'@', rest)) => (rest, true),
            _ => (name, false),
        };
        let start = abstract_name as usize;
        for (i, &b) in bytes.iter().enumerate() {
            raw.sun_path[start + i] = b as libc::c_char;
        }
        let header = std::mem::size_of::<libc::sa_family_t>();
        let len = header + start + bytes.len() + (!abstract_name) as usize;
        Addr {
            raw,
            len: len as libc::socklen_t,
        }
    }

    const UNNAMED: Addr = Addr {
        // SAFETY-free: an all-zero sockaddr_un with only the family.
        raw: libc::sockaddr_un {
            sun_family: libc::AF_UNIX as libc::sa_family_t,
            sun_path: [0; 108],
        },
        len: std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t,
    };

    fn ptr(&self) -> *const libc::sockaddr {
        (&self.raw as *const libc::sockaddr_un).cast()
    }

    fn bytes(&self) -> &[u8] {
        let header = std::mem::size_of::<libc::sa_family_t>();
        let n = (self.len as usize).saturating_sub(header);
        // SAFETY: sun_path is n <= 108 initialized c_chars, the same size as u8.
        unsafe { std::slice::from_raw_parts(self.raw.sun_path.as_ptr().cast::<u8>(), n) }
    }

    fn same(&self, other: &Addr) -> bool {
        self.bytes() == other.bytes()
    }
}

fn new_socket(kind: i32) -> Result<i32, String> {
    // SAFETY: socket has no memory effects.
    let fd = unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(format!("socket: errno {}", errno()));
    }
    Ok(fd)
}

fn bind(fd: i32, addr: &Addr) -> Result<(), String> {
    // SAFETY: addr points at a live sockaddr_un of the stated length.
    if unsafe { libc::bind(fd, addr.ptr(), addr.len) } != 0 {
        return Err(format!("bind {}: errno {}", Shown(addr.bytes()), errno()));
    }
    Ok(())
}

fn connect(fd: i32, addr: &Addr) -> Result<(), i32> {
    // SAFETY: addr points at a live sockaddr_un of the stated length.
    if unsafe { libc::connect(fd, addr.ptr(), addr.len) } != 0 {
        return Err(errno());
    }
    Ok(())
}

fn listen(fd: i32, backlog: i32) -> Result<(), String> {
    // SAFETY: listen has no memory effects.
    if unsafe { libc::listen(fd, backlog) } != 0 {
        return Err(format!("listen: errno {}", errno()));
    }
    Ok(())
}

fn accept(fd: i32) -> Result<i32, i32> {
    // SAFETY: accept4 without an address buffer.
    let r = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK,
        )
    };
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn send(fd: i32, data: &[u8]) -> Result<(), i32> {
    // SAFETY: send reads data.len() bytes of data.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if n != data.len() as isize {
        return Err(if n < 0 { errno() } else { -1 });
    }
    Ok(())
}

fn sendto(fd: i32, data: &[u8], to: &Addr) -> Result<(), String> {
    // SAFETY: sendto reads data and a live sockaddr_un.
    let n = unsafe { libc::sendto(fd, data.as_ptr().cast(), data.len(), 0, to.ptr(), to.len) };
    if n != data.len() as isize {
        return Err(format!("sendto: errno {}", errno()));
    }
    Ok(())
}

/// getsockname or getpeername.
fn name_of(fd: i32, peer: bool) -> Addr {
    let mut addr = Addr::UNNAMED;
    addr.len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let p = (&mut addr.raw as *mut libc::sockaddr_un).cast();
    // SAFETY: the kernel writes at most addr.len bytes into addr.raw.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut addr.len)
        } else {
            libc::getsockname(fd, p, &mut addr.len)
        }
    };
    if r != 0 {
        addr.len = 0;
    }
    addr
}

/// Receives one message (waiting up to 2 s), with its sender's address.
fn recv_from(fd: i32, buf: &mut [u8]) -> Result<(usize, Addr), i32> {
    let _ = poll_in(fd, 2000);
    let mut from = Addr::UNNAMED;
    from.len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: the kernel writes into buf and from.raw within their sizes.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut from.raw as *mut libc::sockaddr_un).cast(),
            &mut from.len,
        )
    };
    if n < 0 {
        Err(errno())
    } else {
        Ok((n as usize, from))
    }
}

fn sockopt(fd: i32, opt: i32) -> i32 {
    let mut v: i32 = -1;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: getsockopt writes an int.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    v
}

fn expect_message(what: &str, fd: i32, want: &[u8], chk: &mut Check) {
    let mut buf = [0u8; 64];
    match recv_from(fd, &mut buf) {
        Ok((n, _)) if &buf[..n] == want => {}
        got => fail!(
            chk,
            "{what} fd {fd}: got {:?} `{}`, expected `{}`",
            got.as_ref().map(|g| g.0),
            Shown(&buf[..got.map_or(0, |g| g.0)]),
            Shown(want)
        ),
    }
}

fn expect_eof(what: &str, fd: i32, chk: &mut Check) {
    let mut buf = [0u8; 16];
    let _ = poll_in(fd, 2000);
    match read_once(fd, &mut buf) {
        Ok(0) => {}
        got => fail!(chk, "{what} fd {fd}: expected EOF, got {got:?}"),
    }
}

fn expect_name(what: &str, fd: i32, peer: bool, want: &Addr, chk: &mut Check) {
    let got = name_of(fd, peer);
    if !got.same(want) {
        fail!(
            chk,
            "{what} fd {fd}: {} is `{}`, expected `{}`",
            if peer { "getpeername" } else { "getsockname" },
            Shown(got.bytes()),
            Shown(want.bytes())
        );
    }
}

/// The socket options the scenario sets: (fd, option), and their values at ready.
const OPTIONS: [(i32, i32); 4] = [
    (CLIENT, libc::SO_SNDBUF),
    (DGRAM_SERVER, libc::SO_RCVBUF),
    (DGRAM_SERVER, libc::SO_PASSCRED),
    (SP_CLIENT, libc::SO_RCVTIMEO),
];

/// An option's value as getsockopt gives it (a timeval's microseconds for the timeouts).
fn option_value(fd: i32, opt: i32) -> i64 {
    if opt == libc::SO_RCVTIMEO || opt == libc::SO_SNDTIMEO {
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        // SAFETY: getsockopt writes a timeval.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut tv as *mut libc::timeval).cast(),
                &mut len,
            )
        };
        return if r == 0 {
            tv.tv_sec * 1_000_000 + tv.tv_usec
        } else {
            -1
        };
    }
    i64::from(sockopt(fd, opt))
}

pub struct UnixSockets {
    before: [FdSnap; 13],
    relative_addr: Addr,
    relative_full_addr: Addr,
    options: [i64; 4],
    listen_addr: Addr,
    c3_addr: Addr,
    sp_addr: Addr,
    dgram_addr: Addr,
    e_addr: Addr,
    gone_addr: Addr,
    listen_path: CString,
    gone_path: CString,
}

fn fail_errno(what: &'static str) -> impl Fn(i32) -> String {
    move |e| format!("{what}: errno {e}")
}

impl UnixSockets {
    pub fn new(ctx: &Ctx) -> Result<UnixSockets, String> {
        let path_of = |name: &str| ctx.path(name).into_bytes();
        let listen_path = ctx.path("listen.sock");
        let gone_path = ctx.path("gone.sock");
        let mut me = UnixSockets {
            before: [FdSnap::EMPTY; 13],
            relative_addr: Addr::new(b"rel.sock"),
            relative_full_addr: Addr::new(&path_of("rel.sock")),
            options: [0; 4],
            listen_addr: Addr::new(&path_of("listen.sock")),
            c3_addr: Addr::new(format!("@rcr-c3-{}", ctx.pid).as_bytes()),
            sp_addr: Addr::new(format!("@rcr-sp-{}", ctx.pid).as_bytes()),
            dgram_addr: Addr::new(&path_of("dgram.sock")),
            e_addr: Addr::new(&path_of("e.sock")),
            gone_addr: Addr::new(&path_of("gone.sock")),
            listen_path,
            gone_path,
        };

        let l = new_socket(libc::SOCK_STREAM)?;
        bind(l, &me.listen_addr)?;
        // SAFETY: chmod of a path of this scenario.
        if unsafe { libc::chmod(me.listen_path.as_ptr(), 0o640) } != 0 {
            return Err(format!("chmod listen.sock: errno {}", errno()));
        }
        listen(l, 5)?;
        place(l, LISTENER, false)?;
        let c = new_socket(libc::SOCK_STREAM)?;
        connect(c, &me.listen_addr).map_err(fail_errno("connect 31"))?;
        place(c, CLIENT, true)?;
        let a = accept(LISTENER).map_err(fail_errno("accept 32"))?;
        place(a, ACCEPTED, false)?;
        send(CLIENT, b"to-server").map_err(fail_errno("send 31"))?;
        send(ACCEPTED, b"to-client").map_err(fail_errno("send 32"))?;
        // The process peeks with an offset of its own: 3 bytes peeked, SO_PEEK_OFF at 3.
        let zero: i32 = 0;
        let mut peeked = [0u8; 3];
        // SAFETY: setsockopt reads an int; recv writes at most 3 bytes into peeked.
        let got = unsafe {
            libc::setsockopt(
                ACCEPTED,
                libc::SOL_SOCKET,
                libc::SO_PEEK_OFF,
                (&zero as *const i32).cast(),
                4,
            );
            libc::recv(ACCEPTED, peeked.as_mut_ptr().cast(), 3, libc::MSG_PEEK)
        };
        if got != 3 || sockopt(ACCEPTED, libc::SO_PEEK_OFF) != 3 {
            return Err(format!("SO_PEEK_OFF on fd {ACCEPTED}: errno {}", errno()));
        }
        let w1 = new_socket(libc::SOCK_STREAM)?;
        connect(w1, &me.listen_addr).map_err(fail_errno("connect 33"))?;
        place(w1, WAITING_1, false)?;
        let w2 = new_socket(libc::SOCK_STREAM)?;
        bind(w2, &me.c3_addr)?;
        connect(w2, &me.listen_addr).map_err(fail_errno("connect 34"))?;
        place(w2, WAITING_2, false)?;

        let sl = new_socket(libc::SOCK_SEQPACKET)?;
        bind(sl, &me.sp_addr)?;
        listen(sl, 3)?;
        place(sl, SP_LISTENER, false)?;
        let sc = new_socket(libc::SOCK_SEQPACKET)?;
        connect(sc, &me.sp_addr).map_err(fail_errno("connect 36"))?;
        place(sc, SP_CLIENT, false)?;
        let sa = accept(SP_LISTENER).map_err(fail_errno("accept 37"))?;
        place(sa, SP_ACCEPTED, false)?;
        send(SP_CLIENT, b"one").map_err(fail_errno("send one"))?;
        send(SP_CLIENT, b"two").map_err(fail_errno("send two"))?;
        send(SP_ACCEPTED, b"last").map_err(fail_errno("send last"))?;
        // SAFETY: shutdown has no memory effects.
        if unsafe { libc::shutdown(SP_ACCEPTED, libc::SHUT_WR) } != 0 {
            return Err(format!("shutdown 37: errno {}", errno()));
        }

        let d = new_socket(libc::SOCK_DGRAM)?;
        bind(d, &me.dgram_addr)?;
        place(d, DGRAM_SERVER, false)?;
        let e = new_socket(libc::SOCK_DGRAM)?;
        bind(e, &me.e_addr)?;
        connect(e, &me.dgram_addr).map_err(fail_errno("connect 39"))?;
        place(e, DGRAM_CLIENT, false)?;
        send(DGRAM_CLIENT, b"from-e").map_err(fail_errno("send from-e"))?;
        let anon = new_socket(libc::SOCK_DGRAM)?;
        sendto(anon, b"from-anon", &me.dgram_addr)?;
        sys::close(anon);

        let mut pair = [0i32; 2];
        // SAFETY: socketpair writes two fds.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) } != 0
        {
            return Err(format!("socketpair: errno {}", errno()));
        }
        place(pair[0], PEER_GONE, false)?;
        send(pair[1], b"bye").map_err(fail_errno("send bye"))?;
        sys::close(pair[1]);

        // Options: a send buffer, a receive buffer, SO_PASSCRED, a receive timeout.
        let set = |fd: i32, opt: i32, value: &[u8]| -> Result<(), String> {
            // SAFETY: setsockopt reads value.len() bytes.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    value.as_ptr().cast(),
                    value.len() as u32,
                )
            };
            if r != 0 {
                return Err(format!("setsockopt({fd}, {opt}): errno {}", errno()));
            }
            Ok(())
        };
        set(CLIENT, libc::SO_SNDBUF, &65536i32.to_ne_bytes())?;
        set(DGRAM_SERVER, libc::SO_RCVBUF, &50000i32.to_ne_bytes())?;
        set(DGRAM_SERVER, libc::SO_PASSCRED, &1i32.to_ne_bytes())?;
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 500_000,
        };
        // SAFETY: a timeval is plain data; its bytes are read by setsockopt.
        let timeout_bytes = unsafe {
            std::slice::from_raw_parts(
                (&timeout as *const libc::timeval).cast::<u8>(),
                std::mem::size_of::<libc::timeval>(),
            )
        };
        set(SP_CLIENT, libc::SO_RCVTIMEO, timeout_bytes)?;
        for (slot, (fd, opt)) in me.options.iter_mut().zip(OPTIONS) {
            *slot = option_value(fd, opt);
        }

        // A datagram socket bound to the relative path "rel.sock", from DIR as cwd.
        let dir = ctx.path(".");
        // SAFETY: chdir to a path of this scenario.
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            return Err(format!("chdir DIR: errno {}", errno()));
        }
        let r = new_socket(libc::SOCK_DGRAM)?;
        bind(r, &me.relative_addr)?;
        place(r, RELATIVE, false)?;

        let g = new_socket(libc::SOCK_STREAM)?;
        bind(g, &me.gone_addr)?;
        listen(g, 1)?;
        place(g, GONE_LISTENER, false)?;
        // SAFETY: unlink of a path of this scenario.
        if unsafe { libc::unlink(me.gone_path.as_ptr()) } != 0 {
            return Err(format!("unlink gone.sock: errno {}", errno()));
        }
        Ok(me)
    }
}

impl crate::parts::Part for UnixSockets {
    fn before_ready(&mut self) {
        self.before = snaps(ALL);
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("unix", &self.before, chk);
        for ((fd, opt), want) in OPTIONS.into_iter().zip(self.options) {
            let got = option_value(fd, opt);
            if got != want {
                fail!(chk, "fd {fd}: socket option {opt} is {got}, was {want}");
            }
        }
        let unnamed = Addr::UNNAMED;
        // The path listener, its accepted connection and the socket file.
        expect_name("listener", LISTENER, false, &self.listen_addr, chk);
        if sockopt(LISTENER, libc::SO_ACCEPTCONN) != 1 {
            fail!(chk, "fd {LISTENER}: not listening");
        }
        // SAFETY: stat into a local struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::stat(self.listen_path.as_ptr(), &mut st) } != 0 {
            fail!(chk, "listen.sock: stat errno {}", errno());
        } else if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_mode & 0o7777 != 0o640 {
            fail!(
                chk,
                "listen.sock: mode {:o}, expected a socket 640",
                st.st_mode
            );
        }
        expect_name("accepted", ACCEPTED, false, &self.listen_addr, chk);
        expect_name("accepted", ACCEPTED, true, &unnamed, chk);
        expect_name("client", CLIENT, true, &self.listen_addr, chk);
        expect_name("client", CLIENT, false, &unnamed, chk);
        let offset = sockopt(ACCEPTED, libc::SO_PEEK_OFF);
        if offset != 3 {
            fail!(chk, "fd {ACCEPTED}: SO_PEEK_OFF {offset}, expected 3");
        }
        expect_message("accepted", ACCEPTED, b"to-server", chk);
        expect_message("client", CLIENT, b"to-client", chk);
        if send(CLIENT, b"more").is_err() {
            fail!(chk, "fd {CLIENT}: send errno {}", errno());
        }
        expect_message("accepted", ACCEPTED, b"more", chk);

        // The two waiting connections, in order, connected to their clients.
        for (waiting, want_peer) in [(WAITING_1, &unnamed), (WAITING_2, &self.c3_addr)] {
            match accept(LISTENER) {
                Ok(conn) => {
                    expect_name("accepted later", conn, true, want_peer, chk);
                    if send(conn, b"hello").is_err() {
                        fail!(
                            chk,
                            "accepted connection of fd {waiting}: send errno {}",
                            errno()
                        );
                    }
                    expect_message("waiting client", waiting, b"hello", chk);
                    sys::close(conn);
                }
                Err(e) => fail!(chk, "accept the connection of fd {waiting}: errno {e}"),
            }
            expect_name("waiting client", waiting, true, &self.listen_addr, chk);
        }
        match accept(LISTENER) {
            Err(libc::EAGAIN) => {}
            got => fail!(
                chk,
                "a third accept on fd {LISTENER}: {got:?}, expected EAGAIN"
            ),
        }
        // A new client can connect to the path.
        match new_socket(libc::SOCK_STREAM) {
            Ok(fresh) => {
                if let Err(e) = connect(fresh, &self.listen_addr) {
                    fail!(chk, "connect to listen.sock after restore: errno {e}");
                }
                sys::close(fresh);
            }
            Err(e) => fail!(chk, "{e}"),
        }

        // Seqpacket: boundaries, the shutdown and the abstract address.
        expect_name("seqpacket listener", SP_LISTENER, false, &self.sp_addr, chk);
        expect_name("seqpacket accepted", SP_ACCEPTED, false, &self.sp_addr, chk);
        expect_name("seqpacket client", SP_CLIENT, true, &self.sp_addr, chk);
        expect_message("seqpacket accepted", SP_ACCEPTED, b"one", chk);
        expect_message("seqpacket accepted", SP_ACCEPTED, b"two", chk);
        expect_message("seqpacket client", SP_CLIENT, b"last", chk);
        expect_eof("seqpacket client", SP_CLIENT, chk);
        match send(SP_ACCEPTED, b"x") {
            Err(libc::EPIPE) => {}
            got => fail!(
                chk,
                "send on fd {SP_ACCEPTED} after SHUT_WR: {got:?}, expected EPIPE"
            ),
        }

        // Datagrams with their senders; the client is still connected.
        let mut buf = [0u8; 64];
        for (want, from) in [
            (&b"from-e"[..], &self.e_addr),
            (&b"from-anon"[..], &unnamed),
        ] {
            match recv_from(DGRAM_SERVER, &mut buf) {
                Ok((n, sender)) if &buf[..n] == want && sender.same(from) => {}
                Ok((n, sender)) => fail!(
                    chk,
                    "datagram `{}` from `{}`, expected `{}` from `{}`",
                    Shown(&buf[..n]),
                    Shown(sender.bytes()),
                    Shown(want),
                    Shown(from.bytes())
                ),
                Err(e) => fail!(chk, "recvfrom fd {DGRAM_SERVER}: errno {e}"),
            }
        }
        expect_name("dgram client", DGRAM_CLIENT, true, &self.dgram_addr, chk);
        expect_name("dgram client", DGRAM_CLIENT, false, &self.e_addr, chk);
        if send(DGRAM_CLIENT, b"again").is_err() {
            fail!(chk, "fd {DGRAM_CLIENT}: send errno {}", errno());
        }
        expect_message("dgram server", DGRAM_SERVER, b"again", chk);

        // The peer that had gone, and the listener whose file had gone.
        expect_message("peer gone", PEER_GONE, b"bye", chk);
        expect_eof("peer gone", PEER_GONE, chk);
        expect_name("gone listener", GONE_LISTENER, false, &self.gone_addr, chk);
        if sockopt(GONE_LISTENER, libc::SO_ACCEPTCONN) != 1 {
            fail!(chk, "fd {GONE_LISTENER}: not listening");
        }
        // SAFETY: access on a path of this scenario.
        if unsafe { libc::access(self.gone_path.as_ptr(), libc::F_OK) } == 0 {
            fail!(chk, "gone.sock exists again");
        }

        // The relative name, and its socket file in DIR.
        expect_name("relative", RELATIVE, false, &self.relative_addr, chk);
        match new_socket(libc::SOCK_DGRAM) {
            Ok(sender) => {
                if let Err(e) = sendto(sender, b"to-rel", &self.relative_full_addr) {
                    fail!(chk, "send to DIR/rel.sock: {e}");
                }
                sys::close(sender);
                expect_message("relative", RELATIVE, b"to-rel", chk);
            }
            Err(e) => fail!(chk, "{e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `unix-renamed`: sockets whose file was renamed after bind, as a JVM's attach listener binds
// `.java_pidN.tmp` and renames it to `.java_pidN`.
// - fd 125: stream listener bound to DIR/attach.tmp, its file renamed to DIR/attach and made
//   mode 0640; fd 126: an unnamed client connected to it (through DIR/attach), not accepted.
// - fd 127: datagram socket bound to the relative path "rel-dgram.tmp" (the cwd is DIR), its
//   file renamed to "rel-dgram".
// After go: getsockname shows the names bind got (DIR/attach.tmp, rel-dgram.tmp), as the
// kernel keeps them; DIR/attach is a socket file of mode 0640 and DIR/attach.tmp does not
// exist; 125 accepts 126's waiting connection and they talk, then a new client connects to
// DIR/attach and is accepted; a datagram sent to DIR/rel-dgram reaches 127.

const RENAMED_LISTENER: i32 = 125;
const RENAMED_WAITING: i32 = 126;
const RENAMED_DGRAM: i32 = 127;

pub struct Renamed {
    before: [FdSnap; 3],
    bound_addr: Addr,
    attach_addr: Addr,
    attach_path: CString,
    bound_path: CString,
    rel_bound: Addr,
    rel_now: Addr,
}

/// `old` renamed to `new`.
fn rename(old: &CString, new: &CString) -> Result<(), String> {
    // SAFETY: two NUL-terminated paths.
    if unsafe { libc::rename(old.as_ptr(), new.as_ptr()) } != 0 {
        return Err(format!("rename: errno {}", errno()));
    }
    Ok(())
}

impl Renamed {
    pub fn new(ctx: &Ctx) -> Result<Renamed, String> {
        let bound_path = ctx.path("attach.tmp");
        let attach_path = ctx.path("attach");
        let me = Renamed {
            before: [FdSnap::EMPTY; 3],
            bound_addr: Addr::new(bound_path.as_bytes()),
            attach_addr: Addr::new(attach_path.as_bytes()),
            attach_path,
            bound_path,
            rel_bound: Addr::new(b"rel-dgram.tmp"),
            rel_now: Addr::new(ctx.path("rel-dgram").as_bytes()),
        };
        let l = new_socket(libc::SOCK_STREAM)?;
        bind(l, &me.bound_addr)?;
        listen(l, 4)?;
        place(l, RENAMED_LISTENER, false)?;
        rename(&me.bound_path, &me.attach_path)?;
        // SAFETY: chmod of a path of this scenario.
        if unsafe { libc::chmod(me.attach_path.as_ptr(), 0o640) } != 0 {
            return Err(format!("chmod attach: errno {}", errno()));
        }
        let c = new_socket(libc::SOCK_STREAM)?;
        connect(c, &me.attach_addr).map_err(fail_errno("connect to DIR/attach"))?;
        place(c, RENAMED_WAITING, false)?;

        let dir = ctx.path(".");
        // SAFETY: chdir to a path of this scenario.
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            return Err(format!("chdir DIR: errno {}", errno()));
        }
        let d = new_socket(libc::SOCK_DGRAM)?;
        bind(d, &me.rel_bound)?;
        place(d, RENAMED_DGRAM, false)?;
        rename(&ctx.path("rel-dgram.tmp"), &ctx.path("rel-dgram"))?;
        Ok(me)
    }

    /// Accepts one connection on the listener (waiting up to 2 s) and checks it talks to
    /// `client`.
    fn accept_and_talk(&self, what: &str, client: i32, chk: &mut Check) {
        let _ = poll_in(RENAMED_LISTENER, 2000);
        match accept(RENAMED_LISTENER) {
            Ok(conn) => {
                if send(client, b"knock").is_err() {
                    fail!(chk, "{what}: send errno {}", errno());
                }
                expect_message(what, conn, b"knock", chk);
                if send(conn, b"come in").is_err() {
                    fail!(chk, "{what}: send back errno {}", errno());
                }
                expect_message(what, client, b"come in", chk);
                sys::close(conn);
            }
            Err(e) => fail!(chk, "{what}: accept on fd {RENAMED_LISTENER}: errno {e}"),
        }
    }
}

impl crate::parts::Part for Renamed {
    fn before_ready(&mut self) {
        self.before = snaps([RENAMED_LISTENER, RENAMED_WAITING, RENAMED_DGRAM]);
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("unix-renamed", &self.before, chk);
        expect_name(
            "renamed listener",
            RENAMED_LISTENER,
            false,
            &self.bound_addr,
            chk,
        );
        expect_name("renamed dgram", RENAMED_DGRAM, false, &self.rel_bound, chk);
        // SAFETY: lstat into a zeroed struct, access on a path of this scenario.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::lstat(self.attach_path.as_ptr(), &mut st) != 0 {
                fail!(chk, "DIR/attach: lstat errno {}", errno());
            } else if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_mode & 0o7777 != 0o640 {
                fail!(
                    chk,
                    "DIR/attach: mode {:o}, expected a socket of mode 0640",
                    st.st_mode
                );
            }
            if libc::access(self.bound_path.as_ptr(), libc::F_OK) == 0 {
                fail!(chk, "DIR/attach.tmp exists");
            }
        }
        self.accept_and_talk("waiting client", RENAMED_WAITING, chk);
        match new_socket(libc::SOCK_STREAM) {
            Ok(client) => {
                match connect(client, &self.attach_addr) {
                    Ok(()) => self.accept_and_talk("new client", client, chk),
                    Err(e) => fail!(chk, "connect to DIR/attach: errno {e}"),
                }
                sys::close(client);
            }
            Err(e) => fail!(chk, "{e}"),
        }
        match new_socket(libc::SOCK_DGRAM) {
            Ok(sender) => {
                if let Err(e) = sendto(sender, b"to-renamed", &self.rel_now) {
                    fail!(chk, "send to DIR/rel-dgram: {e}");
                }
                sys::close(sender);
                expect_message("renamed dgram", RENAMED_DGRAM, b"to-renamed", chk);
            }
            Err(e) => fail!(chk, "{e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------

const OUTSIDE: i32 = 10;
const OUTSIDE_DGRAM: i32 = 11;

pub struct Outside {
    before: [FdSnap; 2],
    peer_addr: Addr,
    dgram_peer_addr: Addr,
    mode_path: CString,
}

impl Outside {
    pub fn new(ctx: &Ctx) -> Result<Outside, String> {
        let s = new_socket(libc::SOCK_STREAM)?;
        connect(s, &Addr::new(&ctx.path("../outside.sock").into_bytes()))
            .map_err(|e| format!("connect ../outside.sock: errno {e}"))?;
        place(s, OUTSIDE, false)?;
        // The address as the listener has it (the test bound it by another spelling).
        let peer_addr = name_of(OUTSIDE, true);
        // Blocking from here on: the reads below wait for the test.
        // SAFETY: fcntl on our own fd.
        unsafe { libc::fcntl(OUTSIDE, libc::F_SETFL, 0) };
        // A datagram socket connected to the test's ../outside-dgram.sock (like /dev/log).
        let d = new_socket(libc::SOCK_DGRAM)?;
        connect(
            d,
            &Addr::new(&ctx.path("../outside-dgram.sock").into_bytes()),
        )
        .map_err(|e| format!("connect ../outside-dgram.sock: errno {e}"))?;
        place(d, OUTSIDE_DGRAM, false)?;
        let dgram_peer_addr = name_of(OUTSIDE_DGRAM, true);
        Ok(Outside {
            before: [FdSnap::EMPTY; 2],
            peer_addr,
            dgram_peer_addr,
            mode_path: ctx.path("mode"),
        })
    }
}

impl crate::parts::Part for Outside {
    fn before_ready(&mut self) {
        self.before = snaps([OUTSIDE, OUTSIDE_DGRAM]);
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("unix-outside", &self.before, chk);
        let mut mode = [0u8; 32];
        let n = match sys::open(&self.mode_path, libc::O_RDONLY, 0) {
            Ok(fd) => {
                let n = read_once(fd, &mut mode).unwrap_or(0);
                sys::close(fd);
                n
            }
            Err(e) => {
                fail!(chk, "DIR/mode: errno {e}");
                return;
            }
        };
        match mode[..n].trim_ascii() {
            b"disconnect" => {
                expect_message("outside peer gone", OUTSIDE, b"queued", chk);
                expect_eof("outside peer gone", OUTSIDE, chk);
                if send(OUTSIDE_DGRAM, b"nobody").is_ok() {
                    fail!(
                        chk,
                        "fd {OUTSIDE_DGRAM}: a send reached a peer that is gone"
                    );
                }
            }
            b"reconnect" => {
                expect_name("reconnected", OUTSIDE, true, &self.peer_addr, chk);
                if send(OUTSIDE, b"ping").is_err() {
                    fail!(chk, "fd {OUTSIDE}: send errno {}", errno());
                }
                expect_message("reconnected", OUTSIDE, b"pong", chk);
                expect_name(
                    "reconnected",
                    OUTSIDE_DGRAM,
                    true,
                    &self.dgram_peer_addr,
                    chk,
                );
                if send(OUTSIDE_DGRAM, b"log-line").is_err() {
                    fail!(chk, "fd {OUTSIDE_DGRAM}: send errno {}", errno());
                }
            }
            other => fail!(chk, "DIR/mode says `{}`", Shown(other)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `unix-fds-in-flight` (for a dump that must be refused): a socket pair at fds 10 and 11; 11
// sent "fd" with a copy of fd 0 (SCM_RIGHTS), unread. After go, 10 receives the message and
// the fd, which names what fd 0 names.

const IN_FLIGHT_A: i32 = 10;
const IN_FLIGHT_B: i32 = 11;

pub struct FdsInFlight {
    before: [FdSnap; 2],
}

impl FdsInFlight {
    pub fn new() -> Result<FdsInFlight, String> {
        let mut pair = [0i32; 2];
        // SAFETY: socketpair writes two fds.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) } != 0
        {
            return Err(format!("socketpair: errno {}", errno()));
        }
        place(pair[0], IN_FLIGHT_A, false)?;
        place(pair[1], IN_FLIGHT_B, false)?;
        let mut data = *b"fd";
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: CMSG_SPACE of one int; the buffer is u64-aligned and large enough.
        let space = unsafe { libc::CMSG_SPACE(4) } as usize;
        let mut control = [0u64; 4];
        // SAFETY: msghdr is plain data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: one SCM_RIGHTS header with one int, inside `control`; sendmsg reads msg.
        let sent = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
            libc::CMSG_DATA(cmsg).cast::<i32>().write_unaligned(0);
            libc::sendmsg(IN_FLIGHT_B, &msg, 0)
        };
        if sent != 2 {
            return Err(format!("sendmsg with SCM_RIGHTS: errno {}", errno()));
        }
        Ok(FdsInFlight {
            before: [FdSnap::EMPTY; 2],
        })
    }
}

impl crate::parts::Part for FdsInFlight {
    fn before_ready(&mut self) {
        self.before = snaps([IN_FLIGHT_A, IN_FLIGHT_B]);
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("unix-fds-in-flight", &self.before, chk);
        let mut data = [0u8; 8];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: recvmsg writes into the buffers msg describes.
        let n = unsafe { libc::recvmsg(IN_FLIGHT_A, &mut msg, libc::MSG_DONTWAIT) };
        if n != 2 || &data[..2] != b"fd" {
            fail!(
                chk,
                "fd {IN_FLIGHT_A}: recvmsg gave {n} (errno {})",
                errno()
            );
            return;
        }
        // SAFETY: the first control header, if any, lies within `control`.
        let received = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
                -1
            } else {
                libc::CMSG_DATA(cmsg).cast::<i32>().read_unaligned()
            }
        };
        if received < 0 {
            fail!(chk, "fd {IN_FLIGHT_A}: no fd came with the message");
            return;
        }
        let mut a = [0u8; 512];
        let mut b = [0u8; 512];
        if sys::fd_link(received, &mut a) != sys::fd_link(0, &mut b) {
            fail!(chk, "the fd in flight does not name what fd 0 names");
        }
        sys::close(received);
    }
}

// ---------------------------------------------------------------------------------------------
// `unixtree`: a connection between two processes. Root P: stream listener at DIR/tree.sock
// (fd 60). Child C (armed `C`): client fd 61 connected and accepted by P (fd 63 in P), with
// "from-child" sent by C and "from-parent" sent by P, both unread; client fd 62 connected but
// not accepted. After go: C reads "from-parent", sees its peer's address, sends "second" on
// 62 and reports; then P reads "from-child" on 63, accepts 62's connection and reads
// "second" from it.

const TREE_LISTENER: i32 = 60;
const TREE_CLIENT: i32 = 61;
const TREE_WAITING: i32 = 62;
const TREE_ACCEPTED: i32 = 63;

pub fn unixtree(ctx: &Ctx, bufs: &mut crate::procs::MapsBufs) -> ! {
    use crate::files::{Child, wait_armed};
    use crate::procs::abort_setup;
    let bound = sys::wait_bound();
    let addr = Addr::new(&ctx.path("tree.sock").into_bytes());
    let setup = || -> Result<(), String> {
        let l = new_socket(libc::SOCK_STREAM)?;
        bind(l, &addr)?;
        listen(l, 4)?;
        place(l, TREE_LISTENER, false)
    };
    if let Err(e) = setup() {
        crate::die(format_args!("unixtree: {e}"));
    }
    let c = match sys::fork() {
        Ok(0) => unixtree_child(ctx, bufs, &addr),
        Ok(pid) => pid,
        Err(e) => crate::die(format_args!("unixtree: fork: errno {e}")),
    };
    if let Err(e) = wait_armed(ctx, "C", c) {
        abort_setup(&[c], &[], &e);
    }
    let accepted = || -> Result<(), String> {
        let a = accept(TREE_LISTENER).map_err(fail_errno("accept"))?;
        place(a, TREE_ACCEPTED, false)?;
        send(TREE_ACCEPTED, b"from-parent").map_err(fail_errno("send from-parent"))
    };
    if let Err(e) = accepted() {
        abort_setup(&[c], &[], &e);
    }
    let child = Child::new(ctx, "C", c);
    let before = snaps([TREE_LISTENER, TREE_ACCEPTED]);
    let own = crate::procs::root_ready(ctx, bufs, &[c], &[]);

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    verify_snaps("unixtree", &before, &mut chk);
    child.collect(std::time::Instant::now() + bound, &mut chk);
    expect_message("unixtree accepted", TREE_ACCEPTED, b"from-child", &mut chk);
    match accept(TREE_LISTENER) {
        Ok(conn) => {
            expect_message("unixtree second connection", conn, b"second", &mut chk);
            sys::close(conn);
        }
        Err(e) => fail!(chk, "unixtree: accept the waiting connection: errno {e}"),
    }
    chk.finish()
}

fn unixtree_child(ctx: &Ctx, bufs: &mut crate::procs::MapsBufs, addr: &Addr) -> ! {
    let me = crate::procs::Member::new(ctx, "C");
    let setup = || -> Result<(), String> {
        let c = new_socket(libc::SOCK_STREAM)?;
        connect(c, addr).map_err(fail_errno("connect 61"))?;
        place(c, TREE_CLIENT, false)?;
        send(TREE_CLIENT, b"from-child").map_err(fail_errno("send from-child"))?;
        let w = new_socket(libc::SOCK_STREAM)?;
        connect(w, addr).map_err(fail_errno("connect 62"))?;
        place(w, TREE_WAITING, false)
    };
    if let Err(e) = setup() {
        me.setup_failed(&e);
    }
    let before = snaps([TREE_CLIENT, TREE_WAITING]);
    let own = match crate::procs::Own::record(bufs) {
        Ok(o) => o,
        Err(e) => me.setup_failed(&e),
    };
    me.arm();
    sys::wait_for_every(&ctx.go, 20);
    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    verify_snaps("unixtree (C)", &before, &mut chk);
    // P accepted 61's connection after C armed: wait for its data.
    expect_message("unixtree client", TREE_CLIENT, b"from-parent", &mut chk);
    expect_name("unixtree client", TREE_CLIENT, true, addr, &mut chk);
    expect_name("unixtree waiting", TREE_WAITING, true, addr, &mut chk);
    if send(TREE_WAITING, b"second").is_err() {
        fail!(
            chk,
            "unixtree: send on fd {TREE_WAITING}: errno {}",
            errno()
        );
    }
    me.report(&chk)
}
