//! Every OS and loader call lives here, behind safe signatures with `// SAFETY:` notes.

pub mod dl;
pub mod env;
pub mod lock;
pub mod mmap;
pub mod proc_info;
