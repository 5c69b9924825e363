//! In-process HTTP tests of the whole API surface, in one test binary: the `/v2`
//! distribution API (`distribution`), access control and the token service (`access`), and
//! the admin REST API (`admin`).

mod access;
mod admin;
mod distribution;
mod support;
