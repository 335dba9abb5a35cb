//! Credentials, set in each thread's context as the last privileged step: groups, gids, uids
//! (keeping capabilities across the uid change), the bounding set, capabilities, ambient set,
//! securebits, no_new_privs.

use anyhow::{Result, bail};

use super::steps::Steps;
use crate::image::proto::Creds;

const PR_SET_KEEPCAPS: u64 = 8;
const SECBIT_KEEP_CAPS: u32 = 1 << 4;
const PR_CAPBSET_DROP: u64 = 24;
const PR_SET_SECUREBITS: u64 = 28;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_LAST: u32 = 40;
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn own_caps(set: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(set))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Refuses credentials rcr cannot give: capabilities it does not hold itself, or a uid/gid
/// change without CAP_SETUID/CAP_SETGID.
pub fn check(pid: u32, creds: &Creds) -> Result<()> {
    let permitted = own_caps("CapPrm:");
    let bounding = own_caps("CapBnd:");
    let wanted =
        creds.cap_permitted | creds.cap_effective | creds.cap_inheritable | creds.cap_ambient;
    for cap in 0..=CAP_LAST {
        if wanted & (1 << cap) != 0 && (permitted & bounding) & (1 << cap) == 0 {
            bail!(
                "pid {pid}: capability {} is not available to rcr here",
                CAP_NAMES[cap as usize]
            );
        }
    }
    if creds.cap_bounding & !bounding != 0 {
        let missing = (0..=CAP_LAST).find(|c| creds.cap_bounding & !bounding & (1 << c) != 0);
        bail!(
            "pid {pid}: bounding-set capability {} is not in rcr's own bounding set",
            missing.map_or("?", |c| CAP_NAMES[c as usize])
        );
    }
    let own_uid = nix::unistd::geteuid().as_raw();
    let changes_ids = creds
        .uids
        .iter()
        .chain(&creds.gids)
        .any(|&id| id != own_uid);
    if changes_ids && permitted & (1 << 7 | 1 << 6) != (1 << 7 | 1 << 6) {
        bail!("pid {pid}: uid/gid change needs CAP_SETUID and CAP_SETGID, which rcr lacks");
    }
    Ok(())
}

/// Run by each thread, after everything that needs privilege.
pub fn restore(steps: &mut Steps, creds: &Creds) -> Result<()> {
    let [ruid, euid, suid, fsuid] = four(&creds.uids);
    let [rgid, egid, sgid, fsgid] = four(&creds.gids);
    steps.room(16 + CAP_LAST as usize, 256 + creds.groups.len() * 4)?;
    // Securebits while rcr's capabilities are still there (it takes CAP_SETPCAP), with
    // KEEP_CAPS so that the uid change below keeps the permitted set.
    steps.add(
        "prctl(PR_SET_SECUREBITS)",
        libc::SYS_prctl,
        &[
            PR_SET_SECUREBITS,
            u64::from(creds.securebits | SECBIT_KEEP_CAPS),
            0,
            0,
            0,
        ],
    );
    for cap in 0..=CAP_LAST {
        if creds.cap_bounding & (1 << cap) == 0 {
            steps.add_may_fail(
                format!("drop {} from the bounding set", CAP_NAMES[cap as usize]),
                libc::SYS_prctl,
                &[PR_CAPBSET_DROP, cap.into(), 0, 0, 0],
            );
        }
    }
    let groups: Vec<u8> = creds.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    let groups_addr = steps.put(&groups);
    steps.add(
        "setgroups",
        libc::SYS_setgroups,
        &[creds.groups.len() as u64, groups_addr],
    );
    steps.add("setresgid", libc::SYS_setresgid, &[rgid, egid, sgid]);
    steps.add_may_fail("setfsgid", libc::SYS_setfsgid, &[fsgid]);
    steps.add("setresuid", libc::SYS_setresuid, &[ruid, euid, suid]);
    // The uid change emptied the effective set (KEEP_CAPS keeps only the permitted one):
    // raise it again, as rcr's, for setfsuid and what follows.
    let rcr_caps = own_caps("CapPrm:");
    let header =
        steps.put(&[LINUX_CAPABILITY_VERSION_3.to_le_bytes(), 0u32.to_le_bytes()].concat());
    let regain = steps.put(&cap_data(rcr_caps, rcr_caps, creds.cap_inheritable));
    steps.add("capset (regain)", libc::SYS_capset, &[header, regain]);
    steps.add_may_fail("setfsuid", libc::SYS_setfsuid, &[fsuid]);
    // Capabilities as they were: effective first with everything permitted so that
    // securebits and the ambient set can still be set, then the dumped sets.
    let header =
        steps.put(&[LINUX_CAPABILITY_VERSION_3.to_le_bytes(), 0u32.to_le_bytes()].concat());
    let all_permitted = cap_data(
        creds.cap_permitted,
        creds.cap_permitted,
        creds.cap_inheritable,
    );
    let staged = steps.put(&all_permitted);
    steps.add("capset (staging)", libc::SYS_capset, &[header, staged]);
    steps.add(
        "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
        libc::SYS_prctl,
        &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0],
    );
    for cap in 0..=CAP_LAST {
        if creds.cap_ambient & (1 << cap) != 0 {
            steps.add(
                format!("raise ambient {}", CAP_NAMES[cap as usize]),
                libc::SYS_prctl,
                &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap.into(), 0, 0],
            );
        }
    }
    let header =
        steps.put(&[LINUX_CAPABILITY_VERSION_3.to_le_bytes(), 0u32.to_le_bytes()].concat());
    let dumped = steps.put(&cap_data(
        creds.cap_effective,
        creds.cap_permitted,
        creds.cap_inheritable,
    ));
    steps.add("capset", libc::SYS_capset, &[header, dumped]);
    if creds.securebits & SECBIT_KEEP_CAPS == 0 {
        steps.add(
            "prctl(PR_SET_KEEPCAPS, 0)",
            libc::SYS_prctl,
            &[PR_SET_KEEPCAPS, 0, 0, 0, 0],
        );
    }
    if creds.no_new_privs {
        steps.add(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            &[PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0],
        );
    }
    Ok(())
}

fn four(ids: &[u32]) -> [u64; 4] {
    let id = |i: usize| u64::from(ids.get(i).copied().unwrap_or(0));
    [id(0), id(1), id(2), id(3)]
}

/// Two struct __user_cap_data_struct {effective, permitted, inheritable}: low and high words.
fn cap_data(effective: u64, permitted: u64, inheritable: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(24);
    for shift in [0, 32] {
        for set in [effective, permitted, inheritable] {
            data.extend_from_slice(&((set >> shift) as u32).to_le_bytes());
        }
    }
    data
}
