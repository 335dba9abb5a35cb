//! Unix sockets as the kernel describes them (sock_diag over netlink) and a socket's receive
//! queue read without consuming it (SO_PEEK_OFF + MSG_PEEK).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::check;

/// What sock_diag says of one unix socket.
#[derive(Debug, Clone, Default)]
pub struct UnixInfo {
    pub sock_type: u8,
    pub state: u8,
    pub peer: u32,
    /// The address as bound (sun_path bytes, a path without its trailing NUL).
    pub name: Option<Vec<u8>>,
    /// The inode of the socket file a path name created.
    pub vfs_inode: Option<u32>,
    /// The device of that file's filesystem, as the kernel encodes it (major << 20 | minor).
    pub vfs_dev: Option<u32>,
    /// A listening socket: the client sockets waiting to be accepted, oldest first.
    pub pending: Vec<u32>,
    /// Listening: connections queued; otherwise bytes queued for reading.
    pub rqueue: u32,
    /// Listening: the backlog; otherwise bytes sent and not yet read by the peer.
    pub wqueue: u32,
    /// RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2.
    pub shutdown: u8,
}

impl UnixInfo {
    /// Whether `meta` (of a path) is this socket's file: the same inode on the same device
    /// (an inode number alone repeats across filesystems).
    pub fn is_file(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Some(ino), Some(dev)) = (self.vfs_inode, self.vfs_dev) else {
            return false;
        };
        let (major, minor) = (dev >> 20, dev & 0xf_ffff);
        u64::from(ino) == meta.ino()
            && u64::from(major) == nix::sys::stat::major(meta.dev())
            && u64::from(minor) == nix::sys::stat::minor(meta.dev())
    }
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_VFS: u32 = 2;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_RQLEN: u32 = 16;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// An address as sock_diag gives it: a path name keeps the NUL bind() counted; an abstract
/// name (leading NUL) is taken whole.
fn name_bytes(data: &[u8]) -> Vec<u8> {
    match data.split_first() {
        Some((0, _)) => data.to_vec(),
        _ => data.split(|&b| b == 0).next().unwrap_or_default().to_vec(),
    }
}

/// Every unix socket of this network namespace, by inode.
pub fn unix_sockets() -> io::Result<HashMap<u32, UnixInfo>> {
    // SAFETY: a new netlink socket, owned below.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    } as libc::c_long)?;
    // SAFETY: fd is fresh and ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut request = Vec::with_capacity(40);
    request.extend_from_slice(&40u32.to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    // struct unix_diag_req
    request.push(libc::AF_UNIX as u8);
    request.push(0);
    request.extend_from_slice(&0u16.to_ne_bytes());
    request.extend_from_slice(&u32::MAX.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    request.extend_from_slice(&show.to_ne_bytes());
    request.extend_from_slice(&[0xff; 8]);
    // SAFETY: the kernel reads request.len() bytes of a live buffer.
    check(
        unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) }
            as libc::c_long,
    )?;
    let mut sockets = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the kernel writes at most buf.len() bytes into buf.
        let n = check(
            unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) }
                as libc::c_long,
        )? as usize;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
            if len < 16 || at + len > n {
                return Err(io::Error::other("malformed sock_diag answer"));
            }
            match kind {
                NLMSG_DONE => return Ok(sockets),
                NLMSG_ERROR => return Err(io::Error::other("sock_diag refused the request")),
                _ => {
                    let msg = &buf[at + 16..at + len];
                    if msg.len() >= 16 {
                        let inode = u32::from_ne_bytes(msg[4..8].try_into().unwrap());
                        let mut info = UnixInfo {
                            sock_type: msg[1],
                            state: msg[2],
                            ..Default::default()
                        };
                        let mut attr = 16;
                        while attr + 4 <= msg.len() {
                            let alen = u16::from_ne_bytes(msg[attr..attr + 2].try_into().unwrap())
                                as usize;
                            let atype =
                                u16::from_ne_bytes(msg[attr + 2..attr + 4].try_into().unwrap());
                            if alen < 4 || attr + alen > msg.len() {
                                break;
                            }
                            let data = &msg[attr + 4..attr + alen];
                            let word = |i: usize| {
                                data.get(i * 4..i * 4 + 4)
                                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
                            };
                            match atype {
                                UNIX_DIAG_NAME => info.name = Some(name_bytes(data)),
                                UNIX_DIAG_VFS => {
                                    info.vfs_inode = word(0);
                                    info.vfs_dev = word(1);
                                }
                                UNIX_DIAG_PEER => info.peer = word(0).unwrap_or(0),
                                UNIX_DIAG_ICONS => {
                                    info.pending = (0..data.len() / 4).filter_map(word).collect()
                                }
                                UNIX_DIAG_RQLEN => {
                                    info.rqueue = word(0).unwrap_or(0);
                                    info.wqueue = word(1).unwrap_or(0);
                                }
                                UNIX_DIAG_SHUTDOWN => {
                                    info.shutdown = data.first().copied().unwrap_or(0)
                                }
                                _ => {}
                            }
                            attr += (alen + 3) & !3;
                        }
                        sockets.insert(inode, info);
                    }
                }
            }
            at += (len + 3) & !3;
        }
    }
}

/// SO_PEEK_OFF of a socket: -1 when the process never enabled it.
pub fn peek_offset(sock: &impl AsRawFd) -> io::Result<i32> {
    get_int(sock, libc::SO_PEEK_OFF)
}

/// Sets SO_PEEK_OFF (a restored socket whose process had enabled it).
pub fn set_peek_offset(sock: &impl AsRawFd, offset: i32) -> io::Result<()> {
    set_int(sock, libc::SO_PEEK_OFF, offset)
}

/// One message queued on a socket and the address of its sender (empty: unnamed).
pub struct Queued {
    pub data: Vec<u8>,
    pub sender: Vec<u8>,
}

/// The messages queued for reading on a socket (rcr's copy of it), in order, without
/// consuming them: one entry per datagram, or the whole byte stream as one. Fails on queued
/// ancillary data (fds or credentials in flight).
pub fn peek_queue(sock: &impl AsRawFd) -> io::Result<(Vec<Queued>, i32)> {
    let fd = sock.as_raw_fd();
    let set_peek_off = |off: i32| set_peek_offset(sock, off);
    let original = peek_offset(sock)?;
    set_peek_off(0)?;
    let mut messages = Vec::new();
    let mut result = Ok(());
    loop {
        let mut data = vec![0u8; 256 * 1024];
        let mut control = [0u8; 256];
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut sender: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: msghdr points at live buffers of the sizes it states.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_name = (&mut sender as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: recvmsg writes into the buffers described by msg.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EAGAIN) {
                result = Err(err);
            }
            break;
        }
        // Credentials (SO_PASSCRED) are made again by the kernel for the refilled message
        // (they then name rcr); file descriptors in flight are not supported: the peek
        // installed copies in rcr, closed here.
        let mut fds_in_flight = false;
        // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
        // msg_controllen; an SCM_RIGHTS payload is an array of ints (fds rcr now owns).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    fds_in_flight = true;
                    let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let fds = libc::CMSG_DATA(cmsg).cast::<i32>();
                    for i in 0..payload / 4 {
                        libc::close(fds.add(i).read_unaligned());
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if fds_in_flight || msg.msg_flags & libc::MSG_CTRUNC != 0 {
            result = Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "file descriptors in flight (not supported)",
            ));
            break;
        }
        if n == 0 {
            break;
        }
        data.truncate(n as usize);
        let path_len = (msg.msg_namelen as usize)
            .saturating_sub(std::mem::size_of::<libc::sa_family_t>())
            .min(sender.sun_path.len());
        let raw: Vec<u8> = sender.sun_path[..path_len]
            .iter()
            .map(|&c| c as u8)
            .collect();
        messages.push(Queued {
            data,
            sender: name_bytes(&raw),
        });
    }
    set_peek_off(original)?;
    result.map(|()| (messages, original))
}

/// What a socket is, for messages, as a user names it: "TCP 127.0.0.1:6379 listening",
/// "TCP 127.0.0.1:41234 -> 127.0.0.1:6379 established", "UDP [::1]:53", "netlink
/// NETLINK_ROUTE socket", "packet socket"...
pub fn describe(sock: &impl AsRawFd) -> io::Result<String> {
    let domain = get_int(sock, libc::SO_DOMAIN)?;
    let sock_type = get_int(sock, libc::SO_TYPE)?;
    let protocol = get_int(sock, libc::SO_PROTOCOL).unwrap_or(0);
    let kind = match sock_type {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        libc::SOCK_RAW => "raw",
        _ => "other",
    };
    Ok(match domain {
        libc::AF_INET | libc::AF_INET6 => describe_inet(sock, domain, sock_type, protocol),
        libc::AF_NETLINK => format!("netlink {} socket", netlink_protocol(protocol)),
        libc::AF_PACKET => format!("packet socket ({kind})"),
        libc::AF_UNIX => format!("unix {kind} socket"),
        libc::AF_VSOCK => format!("vsock {kind} socket"),
        libc::AF_ALG => "AF_ALG (kernel crypto) socket".to_owned(),
        other => format!("socket of address family {other} ({kind}, protocol {protocol})"),
    })
}

/// An IPv4 or IPv6 socket: its protocol, addresses and (TCP) state.
fn describe_inet(sock: &impl AsRawFd, domain: i32, sock_type: i32, protocol: i32) -> String {
    let v6 = domain == libc::AF_INET6;
    let ip = if v6 { "IPv6" } else { "IPv4" };
    let name = match (sock_type, protocol) {
        (libc::SOCK_STREAM, 0 | libc::IPPROTO_TCP) => "TCP",
        (libc::SOCK_STREAM, libc::IPPROTO_MPTCP) => "MPTCP",
        (libc::SOCK_DGRAM, 0 | libc::IPPROTO_UDP) => "UDP",
        (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => "UDP-Lite",
        (libc::SOCK_DGRAM, libc::IPPROTO_ICMP) => "ICMP (ping)",
        (libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6) => "ICMPv6 (ping)",
        (libc::SOCK_STREAM | libc::SOCK_SEQPACKET, libc::IPPROTO_SCTP) => "SCTP",
        (libc::SOCK_RAW, _) => return format!("raw {ip} socket (protocol {protocol})"),
        _ => return format!("{ip} socket (type {sock_type}, protocol {protocol})"),
    };
    let local = inet_address(sock, false);
    let peer = inet_address(sock, true);
    let mut text = match (&local, &peer) {
        (Some(local), _) if local.port() != 0 || peer.is_some() => format!("{name} {local}"),
        _ => return format!("{name} socket, not bound"),
    };
    if let Some(peer) = peer {
        text.push_str(&format!(" -> {peer}"));
    }
    if name == "TCP"
        && let Ok(state) = tcp_state(sock)
    {
        text.push(' ');
        text.push_str(match state {
            1 => "established",
            2 => "connecting (SYN sent)",
            3 => "SYN received",
            4 => "closing (FIN-WAIT-1)",
            5 => "closing (FIN-WAIT-2)",
            6 => "TIME-WAIT",
            7 => "closed",
            8 => "closed by the peer (CLOSE-WAIT)",
            9 => "closing (LAST-ACK)",
            10 => "listening",
            11 => "closing (CLOSING)",
            _ => "in an unknown state",
        });
    }
    text
}

/// A socket's own address (`peer` false: getsockname) or its peer's (getpeername), when it
/// is an IPv4 or IPv6 one.
fn inet_address(sock: &impl AsRawFd, peer: bool) -> Option<std::net::SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let at = (&mut storage as *mut libc::sockaddr_storage).cast();
    // SAFETY: the kernel writes at most len bytes into a live sockaddr_storage.
    let r = unsafe {
        if peer {
            libc::getpeername(sock.as_raw_fd(), at, &mut len)
        } else {
            libc::getsockname(sock.as_raw_fd(), at, &mut len)
        }
    };
    if r != 0 {
        return None;
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4: libc::sockaddr_in =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(std::net::SocketAddr::from((ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            Some(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                u32::from_be(v6.sin6_flowinfo),
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The TCP state of a socket (tcpi_state, the first byte of struct tcp_info: TCP_ESTABLISHED
/// 1 ... TCP_CLOSING 11).
fn tcp_state(sock: &impl AsRawFd) -> io::Result<u8> {
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most len bytes into a live buffer.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    } as libc::c_long)?;
    Ok(info[0])
}

/// A netlink protocol's name (linux/netlink.h).
fn netlink_protocol(protocol: i32) -> String {
    let name = match protocol {
        0 => "NETLINK_ROUTE",
        2 => "NETLINK_USERSOCK",
        4 => "NETLINK_SOCK_DIAG",
        5 => "NETLINK_NFLOG",
        6 => "NETLINK_XFRM",
        7 => "NETLINK_SELINUX",
        8 => "NETLINK_ISCSI",
        9 => "NETLINK_AUDIT",
        10 => "NETLINK_FIB_LOOKUP",
        11 => "NETLINK_CONNECTOR",
        12 => "NETLINK_NETFILTER",
        15 => "NETLINK_KOBJECT_UEVENT",
        16 => "NETLINK_GENERIC",
        _ => return format!("protocol {protocol}"),
    };
    name.to_owned()
}

/// The SOL_SOCKET options rcr keeps: (sndbuf, rcvbuf, passcred, passsec, rcvlowat,
/// sndtimeo µs, rcvtimeo µs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Options {
    pub sndbuf: i32,
    pub rcvbuf: i32,
    pub passcred: bool,
    pub passsec: bool,
    pub rcvlowat: i32,
    pub sndtimeo_us: u64,
    pub rcvtimeo_us: u64,
}

fn get_int(sock: &impl AsRawFd, option: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: getsockopt writes an int into a live variable.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut i32).cast(),
            &mut len,
        )
    } as libc::c_long)?;
    Ok(value)
}

fn set_int(sock: &impl AsRawFd, option: i32, value: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads an int from a live variable.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const i32).cast(),
            4,
        )
    } as libc::c_long)?;
    Ok(())
}

fn get_timeout_us(sock: &impl AsRawFd, option: i32) -> io::Result<u64> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: getsockopt writes a timeval into a live variable.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    } as libc::c_long)?;
    Ok(tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64)
}

fn set_timeout_us(sock: &impl AsRawFd, option: i32, us: u64) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_usec: (us % 1_000_000) as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads a timeval from a live variable.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    } as libc::c_long)?;
    Ok(())
}

pub fn options(sock: &impl AsRawFd) -> io::Result<Options> {
    Ok(Options {
        sndbuf: get_int(sock, libc::SO_SNDBUF)?,
        rcvbuf: get_int(sock, libc::SO_RCVBUF)?,
        passcred: get_int(sock, libc::SO_PASSCRED)? != 0,
        passsec: get_int(sock, libc::SO_PASSSEC)? != 0,
        rcvlowat: get_int(sock, libc::SO_RCVLOWAT)?,
        sndtimeo_us: get_timeout_us(sock, libc::SO_SNDTIMEO)?,
        rcvtimeo_us: get_timeout_us(sock, libc::SO_RCVTIMEO)?,
    })
}

/// Sets the options that differ from the socket's own. Buffer sizes: the kernel keeps twice
/// what it is given, so half is given, with the FORCE variant (past the sysctl maximum, which
/// needs CAP_NET_ADMIN) when the plain one does not reach it.
pub fn set_options(sock: &impl AsRawFd, want: &Options) -> io::Result<()> {
    let now = options(sock)?;
    for (value, current, plain, force) in [
        (
            want.sndbuf,
            now.sndbuf,
            libc::SO_SNDBUF,
            libc::SO_SNDBUFFORCE,
        ),
        (
            want.rcvbuf,
            now.rcvbuf,
            libc::SO_RCVBUF,
            libc::SO_RCVBUFFORCE,
        ),
    ] {
        if value > 0 && value != current {
            set_int(sock, plain, value / 2)?;
            if get_int(sock, plain)? != value {
                set_int(sock, force, value / 2)?;
            }
        }
    }
    if want.passcred != now.passcred {
        set_int(sock, libc::SO_PASSCRED, want.passcred as i32)?;
    }
    if want.passsec != now.passsec {
        set_int(sock, libc::SO_PASSSEC, want.passsec as i32)?;
    }
    if want.rcvlowat > 0 && want.rcvlowat != now.rcvlowat {
        set_int(sock, libc::SO_RCVLOWAT, want.rcvlowat)?;
    }
    if want.sndtimeo_us != now.sndtimeo_us {
        set_timeout_us(sock, libc::SO_SNDTIMEO, want.sndtimeo_us)?;
    }
    if want.rcvtimeo_us != now.rcvtimeo_us {
        set_timeout_us(sock, libc::SO_RCVTIMEO, want.rcvtimeo_us)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    /// A socket of rcr's own (this test's), closed on drop.
    fn raw_socket(domain: i32, sock_type: i32, protocol: i32) -> io::Result<OwnedFd> {
        // SAFETY: a new socket, owned below.
        let fd = check(
            unsafe { libc::socket(domain, sock_type | libc::SOCK_CLOEXEC, protocol) }
                as libc::c_long,
        )?;
        // SAFETY: fd is fresh and ours.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    #[test]
    fn tcp_sockets_by_address_and_state() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            describe(&listener).unwrap(),
            format!("TCP 127.0.0.1:{port} listening")
        );
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let client_port = client.local_addr().unwrap().port();
        assert_eq!(
            describe(&client).unwrap(),
            format!("TCP 127.0.0.1:{client_port} -> 127.0.0.1:{port} established")
        );
        assert_eq!(
            describe(&accepted).unwrap(),
            format!("TCP 127.0.0.1:{port} -> 127.0.0.1:{client_port} established")
        );
        let unbound = raw_socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
        assert_eq!(describe(&unbound).unwrap(), "TCP socket, not bound");
    }

    #[test]
    fn udp_sockets_v4_and_v6() {
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        assert_eq!(describe(&v4).unwrap(), format!("UDP 127.0.0.1:{port}"));
        // IPv6 loopback may be absent (disabled): then there is nothing to check.
        if let Ok(v6) = UdpSocket::bind("[::1]:0") {
            let port6 = v6.local_addr().unwrap().port();
            v6.connect(("::1", port6)).unwrap();
            assert_eq!(
                describe(&v6).unwrap(),
                format!("UDP [::1]:{port6} -> [::1]:{port6}")
            );
        }
    }

    #[test]
    fn other_families_by_name() {
        let netlink = raw_socket(libc::AF_NETLINK, libc::SOCK_RAW, 0).unwrap();
        assert_eq!(describe(&netlink).unwrap(), "netlink NETLINK_ROUTE socket");
        let diag = raw_socket(libc::AF_NETLINK, libc::SOCK_DGRAM, NETLINK_SOCK_DIAG).unwrap();
        assert_eq!(describe(&diag).unwrap(), "netlink NETLINK_SOCK_DIAG socket");
        // Packet and raw IP sockets need CAP_NET_RAW: checked where the test has it.
        if let Ok(packet) = raw_socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0) {
            assert_eq!(describe(&packet).unwrap(), "packet socket (datagram)");
        }
        if let Ok(raw) = raw_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) {
            assert_eq!(describe(&raw).unwrap(), "raw IPv4 socket (protocol 1)");
        }
    }
}
