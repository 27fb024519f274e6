//! glibc's allocator, tuned for a process whose configuration is large and built at
//! start and on updates: glibc gives each thread that allocates an arena of its own
//! (up to 8 per core) and keeps what is freed in it. Building a configuration of ten
//! thousand hosts on the parse threads, the xDS client's and the compile step's threads
//! then leaves each arena as large as its own peak, and the process's resident memory at
//! their sum.

/// Limits glibc to `max` arenas unless `MALLOC_ARENA_MAX` is set in the environment.
/// Call before any thread starts.
pub fn limit_arenas(max: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, max);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = max;
}

/// Hands the free pages of every arena back to the OS (glibc keeps them otherwise): after
/// a configuration is built, what building it needed and no longer does.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
