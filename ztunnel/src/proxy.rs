//! The data path: per-pod listeners (outbound 15001, inbound HBONE 15008, inbound plaintext
//! 15006), the HBONE connection pool and the byte copier.

pub mod copy;
pub mod pool;
