//! The signals master and workers act on. Both block them and read them from
//! a signalfd in their loops, so a handler only ever marks work (nginx's rule).

use nix::sys::signal::{SigSet, Signal};

/// The signals a worker acts on; the master blocks them before forking.
pub(crate) fn worker_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGIO,
    ] {
        s.add(sig);
    }
    s
}

/// The master's: a worker's, and children ending and terminal hang-ups.
pub(crate) fn master_signals() -> SigSet {
    let mut s = worker_signals();
    for sig in [Signal::SIGCHLD, Signal::SIGHUP] {
        s.add(sig);
    }
    s
}
