//! Every libc call the command makes, behind safe signatures: process liveness, signals, the terminal,
//! and `dlopen` for the workloads. Outside this module the command is ordinary Rust.

use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Sends SIGTERM to a child of ours.
pub fn terminate(pid: u32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

/// The pid whose exit status `vgpu run` waits for; signals that reach `vgpu` are passed on to it.
static FORWARD_TO_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(signal: libc::c_int) {
    let pid = FORWARD_TO_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe; the pid is our own child, not yet reaped.
        unsafe { libc::kill(pid, signal) };
    }
}

/// While `vgpu run` waits: SIGTERM and SIGHUP sent to `vgpu` go to the child instead of killing `vgpu`
/// (so its status is still collected), and SIGINT/SIGQUIT from the terminal are left to the child,
/// which gets them directly as a member of the same foreground process group.
pub fn forward_signals_to(pid: u32) {
    FORWARD_TO_PID.store(pid as i32, Ordering::Relaxed);
    let handler = forward_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler that only reads an atomic and calls kill(2); SIG_IGN is always valid.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGHUP, handler);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
}

static QUIT_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_quit(_signal: libc::c_int) {
    QUIT_REQUESTED.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM set a flag instead of killing us, so a live screen can restore the terminal.
pub fn catch_quit_signals() {
    let handler = request_quit as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic. No SA_RESTART, so a blocking poll returns EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = 0;
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

pub fn quit_requested() -> bool {
    QUIT_REQUESTED.load(Ordering::Relaxed)
}

pub fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Columns of the terminal on `fd`, if it is one.
pub fn terminal_columns(fd: i32) -> Option<u16> {
    // SAFETY: TIOCGWINSZ writes one winsize struct through the pointer we pass.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        (libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_col > 0)
            .then_some(size.ws_col)
    }
}

/// Standard input in "one key at a time, no echo" mode for as long as this lives. Signals from the
/// terminal (Ctrl-C) still work; the previous settings come back on drop.
pub struct RawInput {
    saved: libc::termios,
}

impl RawInput {
    pub fn enable() -> Option<RawInput> {
        if !is_terminal(0) {
            return None;
        }
        // SAFETY: tcgetattr/tcsetattr read and write one termios struct for fd 0, a terminal.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            raw.c_cc[libc::VMIN] = 0;
            raw.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawInput { saved })
        }
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable` on the same descriptor.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// Waits up to `timeout_ms` for standard input to become readable and returns what it read (empty on
/// timeout, on a signal, or at end of input).
pub fn read_stdin_within(timeout_ms: i32) -> Vec<u8> {
    let mut fds = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    let ready = unsafe { libc::poll(&mut fds, 1, timeout_ms) };
    if ready <= 0 || fds.revents & libc::POLLIN == 0 {
        return Vec::new();
    }
    let mut buf = [0u8; 64];
    // SAFETY: reads at most buf.len() bytes into our buffer.
    let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf[..n as usize].to_vec()
}

/// A shared library opened with `dlopen`, for the workloads that play a CUDA application. It is never
/// closed: the functions taken from it stay valid for the life of the process.
pub struct Library {
    handle: *mut libc::c_void,
}

impl Library {
    pub fn open(name: &str) -> Result<Library, String> {
        let cname = CString::new(name).map_err(|_| format!("bad library name {name:?}"))?;
        // SAFETY: dlopen with a NUL-terminated name; the result is checked for NULL.
        let handle = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!("cannot load {name}: {}", dlerror_text()));
        }
        Ok(Library { handle })
    }

    /// The address of `name`, as the function-pointer type `F` (an `Option<unsafe extern "C" fn ..>`
    /// from the generated bindings, so the signature is NVIDIA's, not typed by hand here).
    ///
    /// `F` must be such an `Option` of a function pointer; anything else is rejected by size.
    pub fn function<F: Copy>(&self, name: &str) -> Result<F, String> {
        if std::mem::size_of::<F>() != std::mem::size_of::<*mut libc::c_void>() {
            return Err(format!("{name}: not a function pointer type"));
        }
        let cname = CString::new(name).map_err(|_| format!("bad symbol name {name:?}"))?;
        // SAFETY: dlsym on a handle dlopen returned, with a NUL-terminated name.
        let address = unsafe { libc::dlsym(self.handle, cname.as_ptr()) };
        if address.is_null() {
            return Err(format!("the driver has no {name}"));
        }
        // SAFETY: F is an Option<extern "C" fn> of pointer size (checked above); a non-null address
        // becomes Some(fn). The caller names the generated type for this symbol's ABI.
        Ok(unsafe { std::mem::transmute_copy::<*mut libc::c_void, F>(&address) })
    }
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call.
    unsafe {
        let text = libc::dlerror();
        if text.is_null() {
            "unknown error".to_string()
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    }
}
