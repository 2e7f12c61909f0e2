//! `virConnectOpenAuth` with a Rust closure as the credential callback.
//!
//! The `virt` crate's `Connect::open_auth` takes a plain `fn` (no state, so
//! no configured password), does not catch panics, panics itself on a
//! credential type it does not know, and always answers success. This one
//! lends libvirt a pointer to a closure on the caller's stack: libvirt calls
//! the callback only inside `virConnectOpenAuth`, on the calling thread, so
//! the closure outlives every call.

use std::ffi::{CString, c_int, c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use virt::connect::Connect;
use virt::sys;

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
/// `cbdata` the `*mut Ask` that [`open`] passed, alive for the call.
unsafe extern "C" fn auth_trampoline(
    cred: sys::virConnectCredentialPtr,
    ncred: c_uint,
    cbdata: *mut c_void,
) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `cbdata` is the `Ask` that `open` lent for the duration
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
pub(crate) fn open(
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
