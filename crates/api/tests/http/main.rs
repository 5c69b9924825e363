//! In-process HTTP tests of the whole API surface, in one test binary: the `/v2`
//! distribution API (`distribution`), access control and the token service (`access`), and
//! the admin REST API (`admin`), and revocation that takes effect at once (`revocation`).

mod access;
mod admin;
mod distribution;
mod revocation;
mod support;
