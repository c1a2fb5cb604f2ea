//! The kernel's socket table through netlink `sock_diag`, filtered by port in
//! the kernel. /proc/net/tcp lists every socket of the machine as text, which
//! takes a good part of a second when another program left a hundred thousand
//! sockets in TIME_WAIT; this answers in milliseconds.

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use std::collections::HashMap;
use std::os::fd::AsRawFd;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_ESTABLISHED: u32 = 1;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_msg` up to and including `idiag_inode`.
const DIAG_MSG: usize = 72;

/// Established IPv4 TCP sockets whose local port is `port`: remote port ->
/// socket inode. `None` if sock_diag is not available.
pub fn established_by_local_port(port: u16) -> Option<HashMap<u16, u64>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;

    // struct nlmsghdr + struct inet_diag_req_v2 (family, protocol, ext, pad,
    // states, then inet_diag_sockid with the source port set as the filter).
    let mut req = Vec::with_capacity(NLMSG_HDR + 56);
    req.extend_from_slice(&((NLMSG_HDR + 56) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    req.extend_from_slice(&port.to_be_bytes()); // idiag_sport
    req.extend_from_slice(&[0u8; 2 + 16 + 16 + 4 + 8]); // dport, src, dst, if, cookie
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .ok()?;

    let mut out = HashMap::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
        if n == 0 {
            return None;
        }
        let mut at = 0;
        while at + NLMSG_HDR <= n {
            let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
            let len = u32_at(at) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < NLMSG_HDR || at + len > n {
                return None;
            }
            match kind {
                NLMSG_DONE => return Some(out),
                NLMSG_ERROR => return None,
                SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDR + DIAG_MSG => {
                    let m = at + NLMSG_HDR;
                    let sport = u16::from_be_bytes([buf[m + 4], buf[m + 5]]);
                    let dport = u16::from_be_bytes([buf[m + 6], buf[m + 7]]);
                    let inode = u64::from(u32_at(m + 68));
                    if sport == port && inode != 0 {
                        out.insert(dport, inode);
                    }
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}
