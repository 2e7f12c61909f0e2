//! Everything `unsafe` in the crate: libvirt's event loop, the callback
//! trampolines, the guards that own the registrations, and opening a
//! connection with a credential callback (`open_auth`, at the end).
//!
//! # Callbacks
//!
//! Each registration boxes a Rust closure `F: FnMut(..) + Send + 'static`
//! and hands libvirt the raw box pointer as `opaque`, together with a
//! monomorphised `extern "C"` trampoline for `F` and a matching free
//! callback. libvirt calls the trampoline on the event-loop thread, one
//! callback at a time, and calls the free callback exactly once when the
//! registration is gone (after deregistration, or when the connection is
//! finally freed) — possibly later, from the event-loop thread. If the
//! registration call fails, libvirt has not taken the box and we reclaim
//! it ourselves.
//!
//! Trampolines copy what they need out of the borrowed domain pointer
//! (UUID, name, runtime id) into an owned [`RawEvent`], call the closure,
//! and return; the whole body runs under `catch_unwind`, because unwinding
//! into C aborts the process.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use crate::error::{Error, Result};
use crate::kinds::{Enum, LifecycleDetail};
use crate::machine::{RawEvent, RawKind};
use crate::model::DomainId;

static EVENT_LOOP: OnceLock<Result<()>> = OnceLock::new();

/// Registers libvirt's default event loop and starts the thread that runs it,
/// once per process; later calls return the first call's result.
///
/// Call this before opening *any* libvirt connection in the process (the
/// listener does so itself): a connection opened earlier never delivers
/// events or keepalives. The loop thread, `wd-libvirt-loop`, runs
/// `virEventRunDefaultImpl` forever; all callbacks run on it.
pub fn init_event_loop() -> Result<()> {
    EVENT_LOOP
        .get_or_init(|| {
            virt::event::event_register_default_impl().map_err(Error::EventLoop)?;
            std::thread::Builder::new()
                .name("wd-libvirt-loop".to_owned())
                .spawn(|| {
                    loop {
                        if let Err(e) = virt::event::event_run_default_impl() {
                            // Only fails on a broken poll(); do not spin.
                            tracing::warn!(error = %e, "libvirt event loop iteration failed");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                })
                .map(drop)
                .map_err(|e| Error::Spawn {
                    name: "wd-libvirt-loop",
                    source: std::sync::Arc::new(e),
                })
        })
        .clone()
}

/// Reads a domain's identity from a pointer libvirt lends us.
///
/// # Safety
///
/// `dom` must be a valid `virDomainPtr` for the duration of the call (as the
/// one passed to a domain event callback is).
unsafe fn read_domain(dom: sys::virDomainPtr) -> Option<(DomainId, Option<u32>)> {
    if dom.is_null() {
        return None;
    }
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `dom` is valid (caller's contract) and `buf` has the
    // VIR_UUID_STRING_BUFLEN bytes libvirt writes, NUL included.
    if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } < 0 {
        return None;
    }
    // SAFETY: on success libvirt wrote a NUL-terminated string into `buf`.
    let uuid = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .ok()?
        .parse::<Uuid>()
        .ok()?;
    // SAFETY: `dom` is valid; the returned string is owned by the domain
    // object and valid while it is, so we copy it at once.
    let name = unsafe { sys::virDomainGetName(dom) };
    if name.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated, alive for the duration of the call.
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `dom` is valid. Inactive domains answer `(unsigned)-1`.
    let id = unsafe { sys::virDomainGetID(dom) };
    let run_id = (id != u32::MAX).then_some(id);
    Some((DomainId { uuid, name }, run_id))
}

/// The watchdog event trampoline: `virConnectDomainEventWatchdogCallback`.
///
/// # Safety
///
/// libvirt calls it with a valid domain and the `opaque` registered with
/// it, which is a `Box<F>` from [`register_any`] not yet freed.
unsafe extern "C" fn watchdog_trampoline<F: FnMut(RawEvent) + Send + 'static>(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    action: c_int,
    opaque: *mut c_void,
) {
    let received_at = SystemTime::now();
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libvirt lends `dom` for the duration of the callback.
        let Some((domain, run_id)) = (unsafe { read_domain(dom) }) else {
            return;
        };
        // SAFETY: `opaque` is our live `Box<F>` (see the function's safety
        // section); libvirt runs callbacks one at a time on the loop thread,
        // so this is the only reference.
        let f = unsafe { &mut *opaque.cast::<F>() };
        f(RawEvent {
            domain,
            run_id,
            kind: RawKind::Watchdog {
                action: Enum::from_raw(action),
            },
            received_at,
        });
    }));
}

/// The lifecycle event trampoline: `virConnectDomainEventCallback`.
///
/// # Safety
///
/// As for [`watchdog_trampoline`].
unsafe extern "C" fn lifecycle_trampoline<F: FnMut(RawEvent) + Send + 'static>(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let received_at = SystemTime::now();
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libvirt lends `dom` for the duration of the callback.
        let Some((domain, run_id)) = (unsafe { read_domain(dom) }) else {
            return;
        };
        // SAFETY: as in `watchdog_trampoline`.
        let f = unsafe { &mut *opaque.cast::<F>() };
        f(RawEvent {
            domain,
            run_id,
            kind: RawKind::Lifecycle {
                event: Enum::from_raw(event),
                detail: LifecycleDetail::from_raw(event, detail),
            },
            received_at,
        });
    }));
    0
}

/// The close callback trampoline: `virConnectCloseFunc`.
///
/// # Safety
///
/// libvirt calls it with the `opaque` registered with it, which is a
/// `Box<F>` from [`CloseGuard::register`] not yet freed.
unsafe extern "C" fn close_trampoline<F: FnMut(i32) + Send + 'static>(
    _conn: sys::virConnectPtr,
    reason: c_int,
    opaque: *mut c_void,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see the function's safety section; callbacks run one at a
        // time on the loop thread.
        let f = unsafe { &mut *opaque.cast::<F>() };
        f(reason);
    }));
}

/// The free callback matching a `Box<F>` opaque.
///
/// # Safety
///
/// `opaque` must come from `Box::<F>::into_raw` and not have been freed;
/// libvirt calls this once per successful registration.
unsafe extern "C" fn free_box<F>(opaque: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see the function's safety section.
        drop(unsafe { Box::from_raw(opaque.cast::<F>()) });
    }));
}

/// Owns one `virConnectDomainEventRegisterAny` registration and
/// deregisters it on drop.
#[derive(Debug)]
struct DomainEventGuard {
    conn: Connect,
    callback_id: c_int,
}

impl Drop for DomainEventGuard {
    fn drop(&mut self) {
        // SAFETY: `conn` holds a reference, so the pointer is valid, and
        // `callback_id` came from a successful registration on it that was
        // not deregistered yet. libvirt then frees our box via `free_box`.
        // A failure (e.g. the connection is already dead) leaves nothing for
        // us to do: the box is freed when the connection is.
        let rc = unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.callback_id)
        };
        if rc < 0 {
            tracing::debug!(
                callback_id = self.callback_id,
                "domain event deregistration failed"
            );
        }
    }
}

/// Registers `f` for `event_id` with the trampoline `cb`.
///
/// # Safety
///
/// `cb` must be the trampoline for `event_id`'s callback signature and for
/// this `F`, cast to the generic callback type.
unsafe fn register_any<F: FnMut(RawEvent) + Send + 'static>(
    conn: &Connect,
    event_id: c_int,
    cb: sys::virConnectDomainEventGenericCallback,
    f: F,
) -> Result<DomainEventGuard, virt::error::Error> {
    let opaque = Box::into_raw(Box::new(f)).cast::<c_void>();
    // SAFETY: the connection pointer is valid while `conn` lives; `cb`
    // matches `event_id` and `F` (caller's contract); `opaque` is a fresh
    // `Box<F>` and `free_box::<F>` frees exactly that type.
    let callback_id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            ptr::null_mut(),
            event_id,
            cb,
            opaque,
            Some(free_box::<F>),
        )
    };
    if callback_id < 0 {
        let err = virt::error::Error::last_error();
        // SAFETY: registration failed, so libvirt kept no reference to
        // `opaque` and will never call `free_box` on it: the box is ours
        // again. (This is the box we made, not some other pointer.)
        drop(unsafe { Box::from_raw(opaque.cast::<F>()) });
        return Err(err);
    }
    Ok(DomainEventGuard {
        conn: conn.clone(),
        callback_id,
    })
}

/// Owns the registrations for watchdog and lifecycle events on one
/// connection, and deregisters both when dropped: no callback runs for them
/// after the drop returns (one already running on the loop thread finishes).
#[derive(Debug)]
pub struct Registration {
    _lifecycle: DomainEventGuard,
    _watchdog: DomainEventGuard,
}

/// Registers `on_event` for `VIR_DOMAIN_EVENT_ID_LIFECYCLE` and
/// `VIR_DOMAIN_EVENT_ID_WATCHDOG` on `conn`, for all domains: once per event
/// ID, fanned out in Rust.
///
/// `on_event` runs on the libvirt event-loop thread (see
/// [`init_event_loop`], which must have run before `conn` was opened); it
/// must not block. A clone of it serves each event ID.
///
/// ```
/// use std::sync::mpsc;
/// use virt::connect::Connect;
///
/// wd_events::init_event_loop()?;
/// let conn = Connect::open(Some("test:///default")).expect("test driver");
/// let (tx, rx) = mpsc::channel();
/// let registration = wd_events::register(&conn, move |event| {
///     let _ = tx.send(event);
/// })?;
/// let dom = conn.lookup_domain_by_name("test").expect("test domain");
/// dom.suspend().expect("suspend");
/// let event = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("event");
/// assert_eq!(event.domain.name, "test");
/// drop(registration);
/// # Ok::<(), wd_events::Error>(())
/// ```
pub fn register<F>(conn: &Connect, on_event: F) -> Result<Registration>
where
    F: FnMut(RawEvent) + Clone + Send + 'static,
{
    let uri = || conn.uri().unwrap_or_default();
    // SAFETY: the lifecycle trampoline has exactly the
    // `virConnectDomainEventCallback` signature that libvirt uses for
    // VIR_DOMAIN_EVENT_ID_LIFECYCLE; the cast to the generic callback type
    // is how libvirt's own VIR_DOMAIN_EVENT_CALLBACK macro registers it.
    let lifecycle_cb = unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                sys::virConnectPtr,
                sys::virDomainPtr,
                c_int,
                c_int,
                *mut c_void,
            ) -> c_int,
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
        >(lifecycle_trampoline::<F>)
    };
    // SAFETY: as above, for the watchdog callback signature
    // `(conn, dom, action, opaque)` used for VIR_DOMAIN_EVENT_ID_WATCHDOG.
    let watchdog_cb = unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, *mut c_void),
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
        >(watchdog_trampoline::<F>)
    };
    // SAFETY: each callback matches its event ID and `F`.
    let lifecycle = unsafe {
        register_any(
            conn,
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(lifecycle_cb),
            on_event.clone(),
        )
    }
    .map_err(|source| Error::Register {
        what: "lifecycle events",
        uri: uri(),
        source,
    })?;
    // SAFETY: as above. If this fails, `lifecycle` is dropped and so
    // deregistered.
    let watchdog = unsafe {
        register_any(
            conn,
            sys::VIR_DOMAIN_EVENT_ID_WATCHDOG as c_int,
            Some(watchdog_cb),
            on_event,
        )
    }
    .map_err(|source| Error::Register {
        what: "watchdog events",
        uri: uri(),
        source,
    })?;
    Ok(Registration {
        _lifecycle: lifecycle,
        _watchdog: watchdog,
    })
}

/// Owns a `virConnectRegisterCloseCallback` registration and unregisters it
/// on drop.
#[derive(Debug)]
pub(crate) struct CloseGuard {
    conn: Connect,
    cb: unsafe extern "C" fn(sys::virConnectPtr, c_int, *mut c_void),
}

impl CloseGuard {
    /// Registers `on_close(reason)` to run when `conn` closes.
    ///
    /// Drivers without close callbacks (the local `test` driver) accept the
    /// registration and silently drop it, never calling the free callback:
    /// the closure then leaks (a channel sender, once per connection).
    /// Freeing it ourselves would double-free on drivers that do call it.
    pub(crate) fn register<F: FnMut(i32) + Send + 'static>(
        conn: &Connect,
        on_close: F,
    ) -> Result<CloseGuard, virt::error::Error> {
        let opaque = Box::into_raw(Box::new(on_close)).cast::<c_void>();
        let cb = close_trampoline::<F>;
        // SAFETY: the connection pointer is valid while `conn` lives; `cb`
        // has the `virConnectCloseFunc` signature for this `F`; `opaque` is
        // a fresh `Box<F>` freed only by `free_box::<F>`.
        let rc = unsafe {
            sys::virConnectRegisterCloseCallback(
                conn.as_ptr(),
                Some(cb),
                opaque,
                Some(free_box::<F>),
            )
        };
        if rc < 0 {
            let err = virt::error::Error::last_error();
            // SAFETY: registration failed, so libvirt kept no reference to
            // our box and will not free it.
            drop(unsafe { Box::from_raw(opaque.cast::<F>()) });
            return Err(err);
        }
        Ok(CloseGuard {
            conn: conn.clone(),
            cb,
        })
    }
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        // SAFETY: `conn` holds a reference, so the pointer is valid; `cb` is
        // the function registered on it. libvirt then frees our box.
        let rc =
            unsafe { sys::virConnectUnregisterCloseCallback(self.conn.as_ptr(), Some(self.cb)) };
        if rc < 0 {
            tracing::debug!("close callback unregistration failed");
        }
    }
}

/// A domain's raw `(state, reason)`, with the error `virt`'s
/// `Domain::state` discards.
pub(crate) fn domain_state(dom: &Domain) -> Result<(i32, i32), virt::error::Error> {
    let mut state: c_int = -1;
    let mut reason: c_int = -1;
    // SAFETY: the domain pointer is valid while `dom` lives; both out
    // pointers are to live locals.
    let rc = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok((state, reason))
}

/// Whether libvirt is busy with the domain: a job holds it (as while
/// libvirtd reattaches to its QEMU after a restart), its monitor is
/// occupied, or in error. Its state may be about to change.
pub(crate) fn domain_control_busy(dom: &Domain) -> Result<bool, virt::error::Error> {
    let mut info = sys::virDomainControlInfo {
        state: 0,
        details: 0,
        stateTime: 0,
    };
    // SAFETY: the domain pointer is valid while `dom` lives; `info` is a
    // live local of the type libvirt fills in.
    let rc = unsafe { sys::virDomainGetControlInfo(dom.as_ptr(), &mut info, 0) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(info.state != sys::VIR_DOMAIN_CONTROL_OK)
}

// ---------------------------------------------------------------------------
// `virConnectOpenAuth` with a Rust closure as the credential callback.
//
// The `virt` crate's `Connect::open_auth` takes a plain `fn` (no state, so no
// configured password), does not catch panics, panics itself on a credential
// type it does not know, and always answers success. `open_auth` lends
// libvirt a pointer to a closure on the caller's stack instead: libvirt calls
// the callback only inside `virConnectOpenAuth`, on the calling thread, so
// the closure outlives every call.

/// The credential types the listener can answer: the SASL user name and
/// password. Anything else libvirt wants (a realm, a prompt) is not asked
/// of us, so SASL uses its defaults.
const OFFERED: [c_int; 2] = [
    sys::VIR_CRED_AUTHNAME as c_int,
    sys::VIR_CRED_PASSPHRASE as c_int,
];

/// What the callback saw: each credential type it could not answer.
struct Ask<'a> {
    /// Answers one credential by type; `None` when it has no answer.
    answer: &'a mut dyn FnMut(c_int) -> Option<String>,
    missing: Vec<c_int>,
}

/// The credential callback (`virConnectAuthCallbackPtr`): fills each
/// credential from the closure, or fails (-1) naming the missing ones.
///
/// # Safety
///
/// libvirt calls it with `cred` pointing to `ncred` valid credentials and
/// `cbdata` the `*mut Ask` that [`open_auth`] passed, alive for the call.
unsafe extern "C" fn auth_trampoline(
    cred: sys::virConnectCredentialPtr,
    ncred: c_uint,
    cbdata: *mut c_void,
) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `cbdata` is the `Ask` that `open_auth` lent for the duration
        // of `virConnectOpenAuth`, which is running this callback; nothing
        // else touches it meanwhile.
        let ask = unsafe { &mut *cbdata.cast::<Ask<'_>>() };
        let len = usize::try_from(ncred).unwrap_or(0);
        if cred.is_null() || len == 0 {
            return 0;
        }
        // SAFETY: libvirt passes an array of `ncred` credentials that it
        // owns and does not touch until we return.
        let creds = unsafe { std::slice::from_raw_parts_mut(cred, len) };
        let mut answers = Vec::with_capacity(creds.len());
        for c in creds.iter() {
            match (ask.answer)(c.type_) {
                Some(value) => answers.push(value),
                None => ask.missing.push(c.type_),
            }
        }
        if !ask.missing.is_empty() {
            return -1;
        }
        for (c, value) in creds.iter_mut().zip(answers) {
            let Ok(len) = c_uint::try_from(value.len()) else {
                return -1;
            };
            let Ok(value) = CString::new(value) else {
                return -1;
            };
            let bytes = value.as_bytes_with_nul();
            // SAFETY: libvirt frees `result` with free(3), so it must come
            // from malloc(3); the size includes the NUL.
            let buf = unsafe { libc::malloc(bytes.len()) }.cast::<u8>();
            if buf.is_null() {
                return -1;
            }
            // SAFETY: `buf` has room for `bytes.len()` bytes and does not
            // overlap `bytes`.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
            c.result = buf.cast();
            c.resultlen = len;
        }
        0
    }));
    outcome.unwrap_or(-1)
}

/// Opens `uri` (read-only with `read_only`), asking `answer` for each
/// credential libvirt could not fill from `auth.conf` itself. On failure,
/// the credential types `answer` had no value for (empty when the failure
/// was something else), and libvirt's error.
pub(crate) fn open_auth(
    uri: &str,
    read_only: bool,
    answer: &mut dyn FnMut(c_int) -> Option<String>,
) -> Result<Connect, (Vec<c_int>, virt::error::Error)> {
    let Ok(c_uri) = CString::new(uri) else {
        return Err((Vec::new(), virt::error::Error::last_error()));
    };
    let mut offered = OFFERED;
    let mut ask = Ask {
        answer,
        missing: Vec::new(),
    };
    let mut auth = sys::virConnectAuth {
        credtype: offered.as_mut_ptr(),
        ncredtype: OFFERED.len() as c_uint,
        cb: Some(auth_trampoline),
        cbdata: (&raw mut ask).cast(),
    };
    let flags = if read_only { sys::VIR_CONNECT_RO } else { 0 };
    // SAFETY: `c_uri` is a valid C string; `auth` and what it points to
    // (`offered`, `ask`) live on this stack frame until the call returns,
    // and libvirt uses them only during the call.
    let ptr = unsafe { sys::virConnectOpenAuth(c_uri.as_ptr(), &raw mut auth, flags as c_uint) };
    if ptr.is_null() {
        return Err((ask.missing, virt::error::Error::last_error()));
    }
    // SAFETY: a non-null connection from virConnectOpenAuth, whose one
    // reference `Connect` now owns (and closes when dropped).
    Ok(unsafe { Connect::from_ptr(ptr) })
}
