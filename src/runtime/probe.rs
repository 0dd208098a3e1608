//! Start-up check that the kernel has every io_uring operation and feature the workers use,
//! failing with one message that names everything missing (rather than an EINVAL later, on
//! the first connection).
//!
//! Opcodes are read from `IORING_REGISTER_PROBE`; features from the set-up parameters. The
//! multishot flavours have no opcode of their own, so they are tried for real on a throwaway
//! ring: a multishot accept into an allocated direct descriptor on a loopback listener, and a
//! multishot receive into a provided-buffer ring on a socket pair.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use io_uring::{opcode, types, Probe};

use super::bufring::BufRing;
use super::uring::{Completion, Ring, TaskrunMode};
use super::user_data::{Op, UserData};

/// What the probe found, for the start-up log line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KernelSupport {
    pub mode: TaskrunMode,
}

/// Checks everything; `msg_ring` when more than one worker must talk to another.
pub fn probe(msg_ring: bool) -> anyhow::Result<KernelSupport> {
    let mut ring = Ring::new(8, 16).map_err(|error| {
        anyhow::anyhow!(
            "io_uring_setup failed: {error} (is io_uring disabled by \
             /proc/sys/kernel/io_uring_disabled, or blocked by a seccomp filter?)"
        )
    })?;
    let mut missing = Vec::new();
    missing.extend(missing_features(&ring));
    missing.extend(missing_opcodes(&ring, msg_ring));
    if ring.submitter().register_files_sparse(4).is_err() {
        missing.push("sparse registered file table (Linux 5.19)".to_owned());
    } else {
        if let Err(error) = try_multishot_accept(&mut ring) {
            missing.push(format!("multishot accept into direct descriptors (Linux 5.19): {error}"));
        }
        if let Err(error) = try_multishot_recv(&mut ring) {
            missing.push(format!(
                "multishot receive with a provided-buffer ring (Linux 6.0): {error}"
            ));
        }
    }
    if !missing.is_empty() {
        anyhow::bail!("this kernel lacks io_uring support ringmq needs: {}", missing.join("; "));
    }
    Ok(KernelSupport { mode: ring.mode() })
}

fn missing_features(ring: &Ring) -> Vec<String> {
    let features = ring.features();
    let mut missing = Vec::new();
    if !features.nodrop {
        missing.push("IORING_FEAT_NODROP (Linux 5.5)".to_owned());
    }
    if !features.ext_arg {
        missing.push("IORING_FEAT_EXT_ARG (Linux 5.11)".to_owned());
    }
    missing
}

fn missing_opcodes(ring: &Ring, msg_ring: bool) -> Vec<String> {
    let mut probe = Probe::new();
    if let Err(error) = ring.submitter().register_probe(&mut probe) {
        return vec![format!("IORING_REGISTER_PROBE (Linux 5.6): {error}")];
    }
    let mut needed = vec![
        (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
        (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
        (opcode::Close::CODE, "IORING_OP_CLOSE"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Read::CODE, "IORING_OP_READ"),
    ];
    if msg_ring {
        needed.push((opcode::MsgRingData::CODE, "IORING_OP_MSG_RING"));
    }
    needed
        .into_iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| name.to_owned())
        .collect()
}

/// Runs the ring until a completion arrives (bounded: these operations finish at once on
/// loopback; a second without one means the feature does not work).
fn wait_for(ring: &mut Ring) -> anyhow::Result<Completion> {
    let mut out = Vec::new();
    for _ in 0..100 {
        ring.submit_and_wait(Some(Duration::from_millis(10)))?;
        ring.reap(&mut out);
        if let Some(completion) = out.first() {
            return Ok(*completion);
        }
    }
    anyhow::bail!("no completion within a second")
}

fn try_multishot_accept(ring: &mut Ring) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .allocate_file_index(true)
        .build()
        .user_data(UserData::new(Op::Accept, 0, 0).pack());
    // SAFETY: a multishot accept into the file table references no memory of ours; the
    // listener outlives the ring's use of it (the ring is dropped first, cancelling it).
    unsafe { ring.push(&entry) };
    let _client = TcpStream::connect(listener.local_addr()?)?;
    let completion = wait_for(ring)?;
    if completion.result < 0 {
        anyhow::bail!("{}", std::io::Error::from_raw_os_error(-completion.result));
    }
    if !completion.more() {
        anyhow::bail!("the accept did not stay armed");
    }
    Ok(())
}

fn try_multishot_recv(ring: &mut Ring) -> anyhow::Result<()> {
    let buffers = BufRing::new(2, 64, 0)?;
    buffers.register(&ring.submitter())?;
    let (mut writer, reader) = UnixStream::pair()?;
    let entry = opcode::RecvMulti::new(types::Fd(reader.as_raw_fd()), buffers.group())
        .build()
        .user_data(UserData::new(Op::Recv, 0, 0).pack());
    // SAFETY: the receive writes only into the registered buffers, and `buffers` is
    // unregistered below before it drops, so the kernel cannot pick one of them afterwards.
    unsafe { ring.push(&entry) };
    writer.write_all(b"x")?;
    let completion = wait_for(ring);
    ring.submitter().unregister_buf_ring(buffers.group())?;
    let completion = completion?;
    if completion.result != 1 || completion.buffer().is_none() {
        anyhow::bail!("result {} without a provided buffer", completion.result);
    }
    if !completion.more() {
        anyhow::bail!("the receive did not stay armed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The development and CI kernels are recent; the probe must pass there, and report the
    /// task-run mode it chose.
    #[test]
    fn this_kernel_passes_the_probe() {
        let support = probe(true).expect("probe");
        assert!(matches!(support.mode, TaskrunMode::Defer | TaskrunMode::Coop));
    }
}
